//! Rules for the `NetworkConfig` document.

use std::collections::{HashMap, HashSet};

use super::Checker;
use super::rules;
use crate::schema::{NetworkConfig, Route};

const ROOT: &str = "NetworkConfig";
const MTU_MIN: u32 = 68;
const MTU_MAX: u32 = 65535;
const IPV6_MTU_MIN: u32 = 1280;

pub(super) fn check(c: &mut Checker, n: &NetworkConfig) {
    if n.interfaces.is_empty() {
        c.warn(
            &format!("{ROOT}.interfaces"),
            "no interfaces: with a NetworkConfig only listed interfaces are configured, so the node has no network",
        );
    }
    let mut names = HashMap::new();
    for (i, iface) in n.interfaces.iter().enumerate() {
        let root = format!("{ROOT}.interfaces[{i}]");
        let name_path = format!("{root}.name");
        c.check(&name_path, rules::interface_name(&iface.name));
        if let Some(first) = names.insert(iface.name.as_str(), i) {
            c.error(
                &name_path,
                format!(
                    "interface `{}` is listed twice (also interfaces[{first}])",
                    iface.name
                ),
            );
        }
        let link = Link {
            root: &root,
            dhcp: iface.dhcp,
            addresses: &iface.addresses,
            routes: &iface.routes,
            mtu: iface.mtu,
        };
        check_link(c, &link);
        if !iface.dhcp && iface.addresses.is_empty() && iface.vlans.is_empty() {
            c.warn(
                &root,
                format!("`{}` has neither DHCP nor addresses", iface.name),
            );
        }
        let mut ids = HashMap::new();
        for (j, vlan) in iface.vlans.iter().enumerate() {
            let vroot = format!("{root}.vlans[{j}]");
            let id_path = format!("{vroot}.id");
            if !(1..=4094).contains(&vlan.id) {
                c.error(&id_path, format!("VLAN id {} is outside 1..=4094", vlan.id));
            } else if iface.name.len() + 1 + vlan.id.to_string().len() > 15 {
                c.error(
                    &id_path,
                    format!(
                        "the VLAN interface name `{}.{}` is longer than 15 characters",
                        iface.name, vlan.id
                    ),
                );
            }
            if let Some(first) = ids.insert(vlan.id, j) {
                c.error(
                    &id_path,
                    format!("VLAN {} is listed twice (also vlans[{first}])", vlan.id),
                );
            }
            check_link(
                c,
                &Link {
                    root: &vroot,
                    dhcp: vlan.dhcp,
                    addresses: &vlan.addresses,
                    routes: &vlan.routes,
                    mtu: vlan.mtu,
                },
            );
            if let (Some(parent), Some(mtu)) = (iface.mtu, vlan.mtu)
                && mtu > parent
            {
                c.error(
                    &format!("{vroot}.mtu"),
                    format!("MTU {mtu} is above the parent interface's MTU {parent}"),
                );
            }
            if !vlan.dhcp && vlan.addresses.is_empty() {
                c.warn(
                    &vroot,
                    format!("VLAN {} has neither DHCP nor addresses", vlan.id),
                );
            }
        }
    }
    for (i, server) in n.nameservers.iter().enumerate() {
        c.check(&format!("{ROOT}.nameservers[{i}]"), rules::host_ip(server));
    }
    for (i, domain) in n.search_domains.iter().enumerate() {
        c.check(
            &format!("{ROOT}.searchDomains[{i}]"),
            rules::hostname(domain),
        );
    }
}

/// What an interface and a VLAN have in common.
struct Link<'a> {
    root: &'a str,
    dhcp: bool,
    addresses: &'a [String],
    routes: &'a [Route],
    mtu: Option<u32>,
}

fn check_link(c: &mut Checker, link: &Link<'_>) {
    let root = link.root;
    let mut seen = HashSet::new();
    let mut has_ipv6 = false;
    for (i, address) in link.addresses.iter().enumerate() {
        let path = format!("{root}.addresses[{i}]");
        let Some(cidr) = c.check(&path, rules::cidr(address)) else {
            continue;
        };
        has_ipv6 |= cidr.addr.is_ipv6();
        if cidr.addr.is_unspecified() || cidr.addr.is_multicast() {
            c.error(&path, format!("`{address}` is not a unicast host address"));
        }
        if !seen.insert(cidr.addr) {
            c.error(&path, format!("address {} is listed twice", cidr.addr));
        }
    }
    if link.dhcp && !link.addresses.is_empty() {
        c.warn(
            root,
            "both DHCP and static addresses: the static addresses are added next to the leased one",
        );
    }
    if let Some(mtu) = link.mtu {
        let path = format!("{root}.mtu");
        if !(MTU_MIN..=MTU_MAX).contains(&mtu) {
            c.error(&path, format!("MTU {mtu} is outside {MTU_MIN}..={MTU_MAX}"));
        } else if has_ipv6 && mtu < IPV6_MTU_MIN {
            c.error(
                &path,
                format!("MTU {mtu} is below {IPV6_MTU_MIN}, the IPv6 minimum"),
            );
        }
    }
    for (i, route) in link.routes.iter().enumerate() {
        check_route(c, &format!("{root}.routes[{i}]"), route);
    }
}

fn check_route(c: &mut Checker, root: &str, route: &Route) {
    let network_path = format!("{root}.network");
    let network = c.check(&network_path, rules::cidr(&route.network));
    if let Some(net) = network
        && net.has_host_bits()
    {
        c.error(
            &network_path,
            format!(
                "`{}` has host bits set; did you mean {}/{}?",
                route.network,
                net.network(),
                net.prefix
            ),
        );
    }
    if let Some(gateway) = &route.gateway {
        let path = format!("{root}.gateway");
        if let Some(gw) = c.check(&path, rules::host_ip(gateway))
            && let Some(net) = network
            && gw.is_ipv4() != net.addr.is_ipv4()
        {
            c.error(
                &path,
                format!(
                    "gateway {gateway} is not of the same address family as {}",
                    route.network
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::schema::{Config, Interface, MachineConfig, NetworkConfig, Vlan};
    use crate::validate::Validation;

    fn validate(network: NetworkConfig) -> Validation {
        let machine = MachineConfig {
            hostname: "edge-1".into(),
            time_servers: vec!["10.0.0.1".into()],
            ..MachineConfig::default()
        };
        Config {
            network: Some(network),
            ..Config::new(machine)
        }
        .validate()
    }

    /// The issues of the NetworkConfig document, as text.
    fn issues(list: &[crate::validate::Issue]) -> Vec<String> {
        list.iter()
            .filter(|i| i.path.starts_with("NetworkConfig"))
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn vlans_and_mtus() {
        let network = NetworkConfig {
            interfaces: vec![Interface {
                name: "enp1s0f0np0".into(),
                dhcp: true,
                addresses: vec!["2001:db8::5/64".into()],
                mtu: Some(1200),
                vlans: vec![
                    Vlan {
                        id: 10,
                        dhcp: true,
                        mtu: Some(1500),
                        ..Vlan::default()
                    },
                    Vlan {
                        id: 1000,
                        dhcp: true,
                        ..Vlan::default()
                    },
                    Vlan {
                        id: 10,
                        ..Vlan::default()
                    },
                ],
                ..Interface::default()
            }],
            ..NetworkConfig::default()
        };
        let v = validate(network);
        assert_eq!(
            issues(&v.errors),
            [
                "NetworkConfig.interfaces[0].mtu: MTU 1200 is below 1280, the IPv6 minimum",
                "NetworkConfig.interfaces[0].vlans[0].mtu: MTU 1500 is above the parent interface's MTU 1200",
                "NetworkConfig.interfaces[0].vlans[1].id: the VLAN interface name `enp1s0f0np0.1000` is longer than 15 characters",
                "NetworkConfig.interfaces[0].vlans[2].id: VLAN 10 is listed twice (also vlans[0])",
            ]
        );
        assert_eq!(
            issues(&v.warnings),
            [
                "NetworkConfig.interfaces[0]: both DHCP and static addresses: the static addresses are added next to the leased one",
                "NetworkConfig.interfaces[0].vlans[2]: VLAN 10 has neither DHCP nor addresses",
            ]
        );
    }

    #[test]
    fn nameservers_and_domains() {
        let network = NetworkConfig {
            interfaces: vec![Interface {
                name: "eth0".into(),
                dhcp: true,
                ..Interface::default()
            }],
            nameservers: vec!["1.1.1.1".into(), "dns.example".into()],
            search_domains: vec!["lan".into(), "bad domain".into()],
        };
        let v = validate(network);
        let paths: Vec<&str> = v.errors.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "NetworkConfig.nameservers[1]",
                "NetworkConfig.searchDomains[1]"
            ]
        );
        assert!(issues(&v.warnings).is_empty(), "{v}");
    }
}
