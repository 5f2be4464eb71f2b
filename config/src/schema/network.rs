//! The `NetworkConfig` document: interfaces, addresses, routes and DNS.
//!
//! When a config has no `NetworkConfig`, machined runs DHCP on every wired interface. When it
//! has one, only the interfaces listed are configured; others are left down.

use serde::{Deserialize, Serialize};

/// The `NetworkConfig` document.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkConfig {
    /// Interfaces to configure, by kernel name; names are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// DNS servers (IP addresses), in order; added to those learnt by DHCP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// DNS search domains, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search_domains: Vec<String>,
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Interface {
    /// Kernel interface name (`eth0`, `end0`, `enp1s0`): 1 to 15 characters.
    pub name: String,
    /// Whether to run a DHCP client (IPv4) on the interface.
    #[serde(default)]
    pub dhcp: bool,
    /// Static addresses in CIDR notation (`192.168.1.10/24`, `2001:db8::10/64`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Static routes through this interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// MTU in bytes (68 to 65535); the driver's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// 802.1Q VLANs on top of this interface, by VLAN id (unique per interface).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vlans: Vec<Vlan>,
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Route {
    /// Destination network in CIDR notation with no host bits set (`0.0.0.0/0` is the default
    /// route).
    pub network: String,
    /// Next hop (same address family as `network`); absent means an on-link route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Route metric (priority, lower wins); the kernel's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

/// An 802.1Q VLAN interface, named `<parent>.<id>` on the node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Vlan {
    /// VLAN id, 1 to 4094.
    pub id: u32,
    /// Whether to run a DHCP client (IPv4) on the VLAN interface.
    #[serde(default)]
    pub dhcp: bool,
    /// Static addresses in CIDR notation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Static routes through this VLAN interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// MTU in bytes (68 to 65535, at most the parent's MTU when both are set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_nested_interfaces() {
        let yaml = "interfaces:\n  - name: eth0\n    dhcp: true\n    vlans:\n      - id: 10\n        addresses: [10.0.10.2/24]\n";
        let network: NetworkConfig = yaml_serde::from_str(yaml).expect("decodes");
        assert_eq!(network.interfaces[0].name, "eth0");
        assert!(network.interfaces[0].dhcp);
        assert_eq!(network.interfaces[0].vlans[0].id, 10);
        assert_eq!(network.interfaces[0].vlans[0].addresses, ["10.0.10.2/24"]);
    }

    #[test]
    fn rejects_unknown_route_field() {
        let yaml = "interfaces:\n  - name: eth0\n    routes:\n      - network: 0.0.0.0/0\n        via: 10.0.0.1\n";
        let err = yaml_serde::from_str::<NetworkConfig>(yaml).expect_err("unknown field");
        assert!(err.to_string().contains("unknown field `via`"), "{err}");
    }
}
