//! Node networking: links up, addresses and routes over netlink ([`rtnetlink`]), DHCPv4 by
//! our own small client ([`dhcp_client`], [`dhcp_packet`]), `/etc/resolv.conf`.
//!
//! [`plan`] turns the `NetworkConfig` document (or its absence) into one [`LinkPlan`] per
//! Ethernet link — a pure function, unit tested. [`Network::apply`] then does it: loopback
//! up, every planned link up with its MTU, static addresses and routes, DHCP where asked
//! (on a node without network configuration: DHCP on every Ethernet link, which is what
//! QEMU's user network and most edge LANs expect), and spawns a renewal task per lease
//! (REQUEST at half the lease time; the address stays while renewals fail, as DHCP allows
//! until the lease ends).
//!
//! After the start, [`controller`] keeps links, addresses, routes and the resolver as the
//! current configuration and the leases say (config changes without a reboot, drift
//! correction) and publishes them as resources.
//!
//! Limits: IPv4 only (IPv6 router advertisements are left to the kernel), VLAN
//! sub-interfaces in the configuration are reported as not applied yet.

pub mod controller;
pub mod dhcp_client;
pub mod dhcp_packet;

use basalt_config::schema::NetworkConfig;
use dhcp_client::Lease;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkLayerType, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// How long DHCP may take on one link at boot before the node goes on without it.
pub const DHCP_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed network operation.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The netlink socket could not be opened.
    #[error("netlink: {0}")]
    Connection(#[source] std::io::Error),
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// What was asked, e.g. "add 10.0.2.15/24 to eth0".
        what: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// DHCP failed.
    #[error(transparent)]
    Dhcp(#[from] dhcp_client::DhcpError),
    /// The configuration has an address or route that does not parse.
    #[error("network configuration: {0}")]
    Config(String),
    /// resolv.conf could not be written.
    #[error("writing {path}: {source}")]
    Resolver {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name, e.g. `eth0`.
    pub name: String,
    /// Hardware address (Ethernet links).
    pub mac: Option<[u8; 6]>,
    /// Whether it is the loopback device.
    pub loopback: bool,
    /// Whether it is an Ethernet link.
    pub ethernet: bool,
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    /// Destination network.
    pub destination: Ipv4Addr,
    /// Its prefix length (0 for the default route).
    pub prefix_len: u8,
    /// Gateway, or none for an on-link route.
    pub gateway: Option<Ipv4Addr>,
    /// Metric.
    pub metric: Option<u32>,
}

/// What to do with one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    /// The link name.
    pub name: String,
    /// Run DHCP.
    pub dhcp: bool,
    /// Static addresses with prefix lengths.
    pub addresses: Vec<(Ipv4Addr, u8)>,
    /// Static routes.
    pub routes: Vec<RoutePlan>,
    /// MTU.
    pub mtu: Option<u32>,
}

/// The whole network plan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Per link.
    pub links: Vec<LinkPlan>,
    /// Resolvers from the configuration (DHCP ones are added when none are configured).
    pub nameservers: Vec<IpAddr>,
    /// Search domains.
    pub search: Vec<String>,
    /// Things in the configuration not applied (VLANs, links that do not exist).
    pub warnings: Vec<String>,
}

fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), NetworkError> {
    let bad = || NetworkError::Config(format!("{text:?} is not an IPv4 address/prefix"));
    let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.trim().parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.trim().parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    Ok((addr, prefix))
}

/// The plan for `links` under `config` (None: DHCP on every Ethernet link).
pub fn plan(links: &[Link], config: Option<&NetworkConfig>) -> Result<Plan, NetworkError> {
    let ethernet: Vec<&Link> = links.iter().filter(|l| l.ethernet).collect();
    let mut out = Plan::default();
    let Some(config) = config.filter(|c| !c.interfaces.is_empty()) else {
        out.links = ethernet
            .iter()
            .map(|l| LinkPlan {
                name: l.name.clone(),
                dhcp: true,
                addresses: Vec::new(),
                routes: Vec::new(),
                mtu: None,
            })
            .collect();
        if let Some(c) = config {
            out.nameservers = parse_nameservers(&c.nameservers)?;
            out.search = c.search_domains.clone();
        }
        return Ok(out);
    };
    for iface in &config.interfaces {
        if !links.iter().any(|l| l.name == iface.name) {
            out.warnings.push(format!(
                "interface {} is configured but the machine has no such link",
                iface.name
            ));
            continue;
        }
        if !iface.vlans.is_empty() {
            out.warnings.push(format!(
                "interface {}: VLANs are not applied by this version",
                iface.name
            ));
        }
        let addresses = iface
            .addresses
            .iter()
            .map(|a| parse_cidr(a))
            .collect::<Result<Vec<_>, _>>()?;
        let mut routes = Vec::new();
        for r in &iface.routes {
            let (destination, prefix_len) = if r.network == "default" {
                (Ipv4Addr::UNSPECIFIED, 0)
            } else {
                parse_cidr(&r.network)?
            };
            let gateway = r
                .gateway
                .as_deref()
                .map(|g| {
                    g.parse::<Ipv4Addr>()
                        .map_err(|_| NetworkError::Config(format!("gateway {g:?} is not IPv4")))
                })
                .transpose()?;
            routes.push(RoutePlan {
                destination,
                prefix_len,
                gateway,
                metric: r.metric,
            });
        }
        out.links.push(LinkPlan {
            name: iface.name.clone(),
            dhcp: iface.dhcp,
            addresses,
            routes,
            mtu: iface.mtu,
        });
    }
    out.nameservers = parse_nameservers(&config.nameservers)?;
    out.search = config.search_domains.clone();
    Ok(out)
}

fn parse_nameservers(list: &[String]) -> Result<Vec<IpAddr>, NetworkError> {
    list.iter()
        .map(|n| {
            n.parse::<IpAddr>()
                .map_err(|_| NetworkError::Config(format!("nameserver {n:?} is not an address")))
        })
        .collect()
}

/// `/etc/resolv.conf` for `nameservers` and `search`.
pub fn resolv_conf(nameservers: &[IpAddr], search: &[String]) -> String {
    let mut out = String::from("# written by machined\n");
    for n in nameservers.iter().take(3) {
        out.push_str(&format!("nameserver {n}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    out
}

fn link_from(msg: &LinkMessage) -> Link {
    let mut name = String::new();
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(a);
                mac = Some(m);
            }
            _ => {}
        }
    }
    Link {
        index: msg.header.index,
        name,
        mac,
        loopback: msg.header.link_layer_type == LinkLayerType::Loopback,
        ethernet: msg.header.link_layer_type == LinkLayerType::Ether,
    }
}

/// One configured link, for the console and the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    /// The link.
    pub link: String,
    /// Its addresses with prefix lengths.
    pub addresses: Vec<(Ipv4Addr, u8)>,
    /// Whether the address came from DHCP.
    pub dhcp: bool,
}

/// A netlink connection to the kernel.
#[derive(Debug, Clone)]
pub struct Network {
    handle: Handle,
    /// The DHCP lease held per link (updated on renewal).
    leases: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, Lease>>>,
}

/// The default route through a DHCP router (metric 1024, below static defaults).
pub fn default_route(router: Ipv4Addr) -> RoutePlan {
    RoutePlan {
        destination: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0,
        gateway: Some(router),
        metric: Some(1024),
    }
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}

impl Network {
    /// Opens the netlink socket; the connection task runs on the current tokio runtime.
    pub fn connect() -> Result<Self, NetworkError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(NetworkError::Connection)?;
        tokio::spawn(connection);
        Ok(Self {
            handle,
            leases: Default::default(),
        })
    }

    /// The DHCP leases held, by link name.
    pub fn leases(&self) -> std::collections::BTreeMap<String, Lease> {
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The machine's links.
    pub async fn links(&self) -> Result<Vec<Link>, NetworkError> {
        let mut stream = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(nl("list links"))? {
            out.push(link_from(&msg));
        }
        Ok(out)
    }

    async fn set_up(&self, link: &Link, mtu: Option<u32>) -> Result<(), NetworkError> {
        let mut builder = LinkUnspec::new_with_index(link.index).up();
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        self.handle
            .link()
            .set(builder.build())
            .execute()
            .await
            .map_err(nl(format!("set {} up", link.name)))
    }

    async fn add_address(
        &self,
        link: &Link,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetworkError> {
        self.handle
            .address()
            .add(link.index, IpAddr::V4(addr), prefix)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("add {addr}/{prefix} to {}", link.name)))
    }

    async fn add_route(&self, link: &Link, route: &RoutePlan) -> Result<(), NetworkError> {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.destination, route.prefix_len)
            .output_interface(link.index);
        if let Some(gw) = route.gateway {
            builder = builder.gateway(gw);
        }
        if let Some(metric) = route.metric {
            builder = builder.priority(metric);
        }
        self.handle
            .route()
            .add(builder.build())
            .replace()
            .execute()
            .await
            .map_err(nl(format!(
                "add route {}/{} via {:?} on {}",
                route.destination, route.prefix_len, route.gateway, link.name
            )))
    }

    async fn apply_lease(&self, link: &Link, lease: &Lease) -> Result<(), NetworkError> {
        if let Some(mtu) = lease.mtu {
            self.set_up(link, Some(u32::from(mtu))).await?;
        }
        self.add_address(link, lease.address, lease.prefix_len)
            .await?;
        if let Some(router) = lease.router {
            self.add_route(link, &default_route(router)).await?;
        }
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(link.name.clone(), lease.clone());
        Ok(())
    }

    /// Applies `config` (see the module docs). Links whose DHCP fails are reported through
    /// `log` and left without an address; the node stays reachable on the others. Returns
    /// what was configured.
    pub async fn apply(
        &self,
        config: Option<&NetworkConfig>,
        hostname: Option<String>,
        resolv_path: &std::path::Path,
        log: impl Fn(&str) + Send + Sync + Clone + 'static,
    ) -> Result<Vec<Configured>, NetworkError> {
        let links = self.links().await?;
        for lo in links.iter().filter(|l| l.loopback) {
            self.set_up(lo, None).await?;
        }
        let plan = plan(&links, config)?;
        for w in &plan.warnings {
            log(&format!("network: {w}"));
        }
        let mut configured = Vec::new();
        let mut dhcp_dns = Vec::new();
        for lp in &plan.links {
            let Some(link) = links.iter().find(|l| l.name == lp.name) else {
                continue;
            };
            self.set_up(link, lp.mtu).await?;
            for (addr, prefix) in &lp.addresses {
                self.add_address(link, *addr, *prefix).await?;
            }
            for route in &lp.routes {
                self.add_route(link, route).await?;
            }
            let mut addresses = lp.addresses.clone();
            if lp.dhcp {
                let Some(mac) = link.mac else {
                    log(&format!(
                        "network: {} has no hardware address, no DHCP",
                        link.name
                    ));
                    continue;
                };
                match dhcp_client::acquire(&link.name, mac, hostname.clone(), DHCP_TIMEOUT).await {
                    Ok(lease) => {
                        self.apply_lease(link, &lease).await?;
                        log(&format!(
                            "network: {} {}/{} by DHCP from {}, gateway {}, lease {} s",
                            link.name,
                            lease.address,
                            lease.prefix_len,
                            lease.server,
                            lease
                                .router
                                .map(|r| r.to_string())
                                .unwrap_or_else(|| "none".into()),
                            lease.lease_time.as_secs()
                        ));
                        addresses.push((lease.address, lease.prefix_len));
                        dhcp_dns.extend(lease.dns.iter().map(|d| IpAddr::V4(*d)));
                        self.spawn_renewal(link.clone(), mac, lease, hostname.clone(), log.clone());
                    }
                    Err(e) => log(&format!("network: {e}")),
                }
            }
            for (addr, prefix) in &lp.addresses {
                log(&format!("network: {} {addr}/{prefix} (static)", link.name));
            }
            configured.push(Configured {
                link: link.name.clone(),
                addresses,
                dhcp: lp.dhcp,
            });
        }
        let nameservers = if plan.nameservers.is_empty() {
            dhcp_dns
        } else {
            plan.nameservers.clone()
        };
        if !nameservers.is_empty() || !plan.search.is_empty() {
            write_file_atomic(
                resolv_path,
                resolv_conf(&nameservers, &plan.search).as_bytes(),
            )
            .map_err(|source| NetworkError::Resolver {
                path: resolv_path.display().to_string(),
                source,
            })?;
        }
        Ok(configured)
    }

    fn spawn_renewal(
        &self,
        link: Link,
        mac: [u8; 6],
        mut lease: Lease,
        hostname: Option<String>,
        log: impl Fn(&str) + Send + Sync + 'static,
    ) {
        let network = self.clone();
        tokio::spawn(async move {
            loop {
                let half = (lease.lease_time / 2).max(Duration::from_secs(30));
                tokio::time::sleep(half).await;
                match dhcp_client::renew(&link.name, mac, &lease, hostname.clone(), DHCP_TIMEOUT)
                    .await
                {
                    Ok(new) => {
                        if new.address != lease.address {
                            log(&format!(
                                "network: {} lease moved from {} to {}",
                                link.name, lease.address, new.address
                            ));
                        }
                        if let Err(e) = network.apply_lease(&link, &new).await {
                            log(&format!("network: renewing {}: {e}", link.name));
                        }
                        lease = new;
                    }
                    Err(e) => log(&format!("network: renewing {}: {e}", link.name)),
                }
            }
        });
    }
}

fn write_file_atomic(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_config::schema::{Interface, Route};

    fn links() -> Vec<Link> {
        vec![
            Link {
                index: 1,
                name: "lo".into(),
                mac: None,
                loopback: true,
                ethernet: false,
            },
            Link {
                index: 2,
                name: "eth0".into(),
                mac: Some([2, 0, 0, 0, 0, 1]),
                loopback: false,
                ethernet: true,
            },
            Link {
                index: 3,
                name: "eth1".into(),
                mac: Some([2, 0, 0, 0, 0, 2]),
                loopback: false,
                ethernet: true,
            },
        ]
    }

    #[test]
    fn no_config_means_dhcp_on_every_ethernet_link() {
        let p = plan(&links(), None).unwrap();
        let names: Vec<_> = p.links.iter().map(|l| (l.name.as_str(), l.dhcp)).collect();
        assert_eq!(names, [("eth0", true), ("eth1", true)]);
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn static_addresses_routes_and_warnings() {
        let config = NetworkConfig {
            interfaces: vec![
                Interface {
                    name: "eth1".into(),
                    dhcp: false,
                    addresses: vec!["192.168.1.10/24".into()],
                    routes: vec![Route {
                        network: "default".into(),
                        gateway: Some("192.168.1.1".into()),
                        metric: Some(10),
                    }],
                    mtu: Some(1400),
                    vlans: Vec::new(),
                },
                Interface {
                    name: "wlan9".into(),
                    dhcp: true,
                    addresses: Vec::new(),
                    routes: Vec::new(),
                    mtu: None,
                    vlans: Vec::new(),
                },
            ],
            nameservers: vec!["9.9.9.9".into()],
            search_domains: vec!["lab".into()],
        };
        let p = plan(&links(), Some(&config)).unwrap();
        assert_eq!(p.links.len(), 1);
        let l = &p.links[0];
        assert_eq!(l.name, "eth1");
        assert!(!l.dhcp);
        assert_eq!(l.addresses, [(Ipv4Addr::new(192, 168, 1, 10), 24)]);
        assert_eq!(
            l.routes,
            [RoutePlan {
                destination: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                gateway: Some(Ipv4Addr::new(192, 168, 1, 1)),
                metric: Some(10),
            }]
        );
        assert_eq!(l.mtu, Some(1400));
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert!(p.warnings[0].contains("wlan9"));
        assert_eq!(
            resolv_conf(&p.nameservers, &p.search),
            "# written by machined\nnameserver 9.9.9.9\nsearch lab\n"
        );
    }

    #[test]
    fn bad_addresses_are_named() {
        let config = NetworkConfig {
            interfaces: vec![Interface {
                name: "eth0".into(),
                dhcp: false,
                addresses: vec!["10.0.0.1/40".into()],
                routes: Vec::new(),
                mtu: None,
                vlans: Vec::new(),
            }],
            nameservers: Vec::new(),
            search_domains: Vec::new(),
        };
        let e = plan(&links(), Some(&config)).unwrap_err().to_string();
        assert!(e.contains("10.0.0.1/40"), "{e}");
    }
}
