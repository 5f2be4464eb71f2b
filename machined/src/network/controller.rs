//! The network controller: links, addresses, routes and the resolver kept as the
//! configuration and the DHCP leases say, and published as resources.
//!
//! A round observes the kernel over netlink ([`Network::observe`]), computes the wanted
//! state from the *current* stored NetworkConfig ([`super::plan`]) plus the DHCP leases
//! machined holds, and [`diff`]s the two — a pure function — into [`NetCorrection`]s:
//! a link down or with another MTU, a wanted address or route missing, an address or route
//! machined set earlier that the configuration no longer has (only those: addresses and
//! routes somebody else added are left alone), `/etc/resolv.conf` with other content.
//! [`Network::correct`] then performs them. So a NetworkConfig change applies without a
//! reboot and drift (someone deleting the address) is put back; each correction is a
//! console line and a Config event (subject `network/…`).
//!
//! The observed state is published every round as `network/Link`, `network/Address`,
//! `network/Route` (main table, IPv4) and `network/Resolver`. In dev mode the controller
//! only observes and publishes the workstation's network; it never changes it.
//!
//! Limits: IPv4 only; DHCP leases are taken as they are (a lease lost is renewed by the
//! DHCP task, not here); links that appear later are not started with DHCP.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};
use serde_json::json;

use super::{Link, Network, NetworkError, RoutePlan, link_from, nl, plan, resolv_conf};

/// The main routing table.
const MAIN_TABLE: u8 = 254;

/// A link as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// The link.
    pub link: Link,
    /// Administratively up.
    pub up: bool,
    /// Its MTU.
    pub mtu: Option<u32>,
}

/// An IPv4 address on a link.
pub type Address = (String, Ipv4Addr, u8);

/// An IPv4 route in the main table, by output link.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// Output link name.
    pub link: String,
    /// Destination.
    pub destination: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Metric (priority).
    pub metric: Option<u32>,
}

/// What the kernel has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Links.
    pub links: Vec<LinkState>,
    /// IPv4 addresses.
    pub addresses: Vec<Address>,
    /// IPv4 routes of the main table.
    pub routes: Vec<Route>,
    /// The resolver file's content, if any.
    pub resolv_conf: Option<String>,
}

/// What machined wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Links to have up, with an MTU to set.
    pub links: Vec<(String, Option<u32>)>,
    /// Addresses.
    pub addresses: BTreeSet<Address>,
    /// Routes.
    pub routes: BTreeSet<Route>,
    /// The resolver file (None: leave it alone).
    pub resolv_conf: Option<String>,
}

/// One difference and its fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetCorrection {
    /// Set a link up.
    LinkUp(String),
    /// Set a link's MTU.
    Mtu {
        /// Link.
        link: String,
        /// Found.
        found: Option<u32>,
        /// Wanted.
        want: u32,
    },
    /// Add a missing address.
    AddAddress(Address),
    /// Remove an address machined set that is no longer wanted.
    RemoveAddress(Address),
    /// Add a missing route.
    AddRoute(Route),
    /// Remove a route machined set that is no longer wanted.
    RemoveRoute(Route),
    /// Rewrite the resolver file.
    Resolver(String),
}

impl std::fmt::Display for NetCorrection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let route = |r: &Route| {
            let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
            format!("{}/{}{via} on {}", r.destination, r.prefix_len, r.link)
        };
        match self {
            NetCorrection::LinkUp(l) => write!(f, "link {l} was down, set it up"),
            NetCorrection::Mtu { link, found, want } => {
                write!(f, "link {link} had MTU {found:?}, set {want}")
            }
            NetCorrection::AddAddress((l, a, p)) => {
                write!(f, "address {a}/{p} on {l} was missing, added it")
            }
            NetCorrection::RemoveAddress((l, a, p)) => {
                write!(
                    f,
                    "address {a}/{p} on {l} is no longer configured, removed it"
                )
            }
            NetCorrection::AddRoute(r) => write!(f, "route {} was missing, added it", route(r)),
            NetCorrection::RemoveRoute(r) => {
                write!(f, "route {} is no longer configured, removed it", route(r))
            }
            NetCorrection::Resolver(_) => write!(f, "resolv.conf differed, wrote it"),
        }
    }
}

impl NetCorrection {
    /// The event subject, e.g. `network/address/eth0`.
    pub fn subject(&self) -> String {
        match self {
            NetCorrection::LinkUp(l) | NetCorrection::Mtu { link: l, .. } => {
                format!("network/link/{l}")
            }
            NetCorrection::AddAddress((l, ..)) | NetCorrection::RemoveAddress((l, ..)) => {
                format!("network/address/{l}")
            }
            NetCorrection::AddRoute(r) | NetCorrection::RemoveRoute(r) => {
                format!("network/route/{}", r.link)
            }
            NetCorrection::Resolver(_) => "network/resolver".into(),
        }
    }
}

/// The corrections that make `observed` what `wanted` says. `owned` are the addresses and
/// routes machined set before: only those are removed when no longer wanted.
pub fn diff(
    wanted: &Wanted,
    observed: &Observed,
    owned_addresses: &BTreeSet<Address>,
    owned_routes: &BTreeSet<Route>,
) -> Vec<NetCorrection> {
    // Removals first: deleting an address also deletes the routes through it, and
    // deleting a primary address can take the secondaries of its subnet with it.
    let mut out = Vec::new();
    let same_route = |a: &Route, b: &Route| {
        a.link == b.link
            && a.destination == b.destination
            && a.prefix_len == b.prefix_len
            && a.gateway == b.gateway
            && (a.metric.is_none() || b.metric.is_none() || a.metric == b.metric)
    };
    let has_route = |r: &Route| observed.routes.iter().any(|o| same_route(o, r));
    let have: BTreeSet<&Address> = observed.addresses.iter().collect();
    for r in owned_routes {
        if !wanted.routes.contains(r) && has_route(r) {
            out.push(NetCorrection::RemoveRoute(r.clone()));
        }
    }
    for a in owned_addresses {
        if !wanted.addresses.contains(a) && have.contains(a) {
            out.push(NetCorrection::RemoveAddress(a.clone()));
        }
    }
    for (name, mtu) in &wanted.links {
        let Some(state) = observed.links.iter().find(|l| &l.link.name == name) else {
            continue;
        };
        if !state.up {
            out.push(NetCorrection::LinkUp(name.clone()));
        }
        if let Some(want) = mtu
            && state.mtu != Some(*want)
        {
            out.push(NetCorrection::Mtu {
                link: name.clone(),
                found: state.mtu,
                want: *want,
            });
        }
    }
    let have_link = |l: &str| observed.links.iter().any(|s| s.link.name == l);
    // An address removed above may be wanted again (same address, other prefix): the
    // removal made it missing.
    let removed = |a: &Address| {
        out.iter()
            .any(|c| matches!(c, NetCorrection::RemoveAddress(r) if r.1 == a.1 && r.0 == a.0))
    };
    let mut adds = Vec::new();
    for a in &wanted.addresses {
        if have_link(&a.0) && (!have.contains(a) || removed(a)) {
            adds.push(NetCorrection::AddAddress(a.clone()));
        }
    }
    for r in &wanted.routes {
        if have_link(&r.link) && !has_route(r) {
            adds.push(NetCorrection::AddRoute(r.clone()));
        }
    }
    out.extend(adds);
    if let Some(want) = &wanted.resolv_conf
        && observed.resolv_conf.as_ref() != Some(want)
    {
        out.push(NetCorrection::Resolver(want.clone()));
    }
    out
}

fn route_of(link: &str, r: &RoutePlan) -> Route {
    Route {
        link: link.to_string(),
        destination: r.destination,
        prefix_len: r.prefix_len,
        gateway: r.gateway,
        metric: r.metric,
    }
}

impl Network {
    /// Reads links, IPv4 addresses, main-table IPv4 routes and `resolv_path`.
    pub async fn observe(&self, resolv_path: &std::path::Path) -> Result<Observed, NetworkError> {
        let mut links = Vec::new();
        let mut stream = self.handle.link().get().execute();
        while let Some(msg) = stream.try_next().await.map_err(nl("list links"))? {
            let mtu = msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            });
            links.push(LinkState {
                up: msg.header.flags.contains(LinkFlags::Up),
                mtu,
                link: link_from(&msg),
            });
        }
        let name_of = |index: u32| {
            links
                .iter()
                .find(|l| l.link.index == index)
                .map(|l| l.link.name.clone())
        };
        let mut addresses = Vec::new();
        for msg in self.address_messages().await? {
            if let (Some(name), Some(IpAddr::V4(a))) = (name_of(msg.header.index), address_of(&msg))
            {
                addresses.push((name, a, msg.header.prefix_len));
            }
        }
        let mut routes = Vec::new();
        let mut stream = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(msg) = stream.try_next().await.map_err(nl("list routes"))? {
            if msg.header.table != MAIN_TABLE {
                continue;
            }
            if let Some(route) = route_from(&msg, &name_of) {
                routes.push(route);
            }
        }
        let resolv_conf = std::fs::read_to_string(resolv_path).ok();
        Ok(Observed {
            links,
            addresses,
            routes,
            resolv_conf,
        })
    }

    async fn address_messages(&self) -> Result<Vec<AddressMessage>, NetworkError> {
        let mut stream = self.handle.address().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(nl("list addresses"))? {
            out.push(msg);
        }
        Ok(out)
    }

    /// Performs one correction.
    pub async fn correct(
        &self,
        observed: &Observed,
        correction: &NetCorrection,
        resolv_path: &std::path::Path,
    ) -> Result<(), NetworkError> {
        let link = |name: &str| {
            observed
                .links
                .iter()
                .find(|l| l.link.name == name)
                .map(|l| l.link.clone())
                .ok_or_else(|| NetworkError::Config(format!("no link {name}")))
        };
        match correction {
            NetCorrection::LinkUp(name) => self.set_up(&link(name)?, None).await,
            NetCorrection::Mtu {
                link: name, want, ..
            } => self.set_up(&link(name)?, Some(*want)).await,
            NetCorrection::AddAddress((name, a, p)) => self.add_address(&link(name)?, *a, *p).await,
            NetCorrection::RemoveAddress((name, a, p)) => {
                let index = link(name)?.index;
                for msg in self.address_messages().await? {
                    if msg.header.index == index
                        && msg.header.prefix_len == *p
                        && address_of(&msg) == Some(IpAddr::V4(*a))
                    {
                        self.handle
                            .address()
                            .del(msg)
                            .execute()
                            .await
                            .map_err(nl(format!("remove {a}/{p} from {name}")))?;
                    }
                }
                Ok(())
            }
            NetCorrection::AddRoute(r) => {
                let plan = RoutePlan {
                    destination: r.destination,
                    prefix_len: r.prefix_len,
                    gateway: r.gateway,
                    metric: r.metric,
                };
                self.add_route(&link(&r.link)?, &plan).await
            }
            NetCorrection::RemoveRoute(r) => {
                let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(r.destination, r.prefix_len)
                    .output_interface(link(&r.link)?.index);
                if let Some(gw) = r.gateway {
                    builder = builder.gateway(gw);
                }
                if let Some(metric) = r.metric {
                    builder = builder.priority(metric);
                }
                match self.handle.route().del(builder.build()).execute().await {
                    // Gone already (the kernel drops routes with their address).
                    Err(rtnetlink::Error::NetlinkError(e))
                        if e.raw_code() == -(rustix::io::Errno::SRCH.raw_os_error()) =>
                    {
                        Ok(())
                    }
                    result => result.map_err(nl(format!(
                        "remove route {}/{}",
                        r.destination, r.prefix_len
                    ))),
                }
            }
            NetCorrection::Resolver(text) => super::write_file_atomic(resolv_path, text.as_bytes())
                .map_err(|source| NetworkError::Resolver {
                    path: resolv_path.display().to_string(),
                    source,
                }),
        }
    }

    /// Sets a link down (tests simulate drift with it).
    pub async fn set_down(&self, index: u32) -> Result<(), NetworkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).down().build())
            .execute()
            .await
            .map_err(nl("set link down"))
    }
}

fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    })
}

fn route_from(msg: &RouteMessage, name_of: &dyn Fn(u32) -> Option<String>) -> Option<Route> {
    let mut destination = Ipv4Addr::UNSPECIFIED;
    let (mut gateway, mut oif, mut metric) = (None, None, None);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => destination = *d,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = Some(*p),
            _ => {}
        }
    }
    Some(Route {
        link: name_of(oif?)?,
        destination,
        prefix_len: msg.header.destination_prefix_length,
        gateway,
        metric,
    })
}

/// Runs network rounds against the applied configuration.
pub struct NetworkController {
    /// The netlink handle.
    pub network: Network,
    /// The applied configuration.
    pub config: crate::config_watch::ConfigWatch,
    /// Resources published.
    pub resources: Arc<crate::resources::ResourceStore>,
    /// Corrections reported.
    pub events: Arc<crate::events::EventBus>,
    /// Console log directory.
    pub state_dir: PathBuf,
    /// The resolver file.
    pub resolv_path: PathBuf,
    /// Whether to correct (a node) or only observe (dev mode).
    pub correct: bool,
    /// Addresses and routes machined set.
    pub owned: Mutex<(BTreeSet<Address>, BTreeSet<Route>)>,
    /// Failures reported already.
    pub reported: Mutex<BTreeSet<String>>,
}

impl NetworkController {
    /// What the current configuration and the DHCP leases want on `links`.
    pub fn wanted(&self, links: &[Link]) -> Result<Wanted, NetworkError> {
        let config = self.config.peek().and_then(|a| a.config.network.clone());
        let plan = plan(links, config.as_ref())?;
        let leases = self.network.leases();
        let mut wanted = Wanted::default();
        let mut dns = Vec::new();
        for lp in &plan.links {
            wanted.links.push((lp.name.clone(), lp.mtu));
            for (a, p) in &lp.addresses {
                wanted.addresses.insert((lp.name.clone(), *a, *p));
            }
            for r in &lp.routes {
                wanted.routes.insert(route_of(&lp.name, r));
            }
            if lp.dhcp
                && let Some(lease) = leases.get(&lp.name)
            {
                wanted
                    .addresses
                    .insert((lp.name.clone(), lease.address, lease.prefix_len));
                if let Some(router) = lease.router {
                    wanted
                        .routes
                        .insert(route_of(&lp.name, &super::default_route(router)));
                }
                dns.extend(lease.dns.iter().map(|d| IpAddr::V4(*d)));
            }
        }
        let nameservers = if plan.nameservers.is_empty() {
            dns
        } else {
            plan.nameservers
        };
        if !nameservers.is_empty() || !plan.search.is_empty() {
            wanted.resolv_conf = Some(resolv_conf(&nameservers, &plan.search));
        }
        Ok(wanted)
    }

    /// One round: observe, publish, correct (node only). Returns the corrections made.
    pub async fn round(&self) -> Result<Vec<NetCorrection>, NetworkError> {
        let observed = self.network.observe(&self.resolv_path).await?;
        self.publish(&observed);
        if !self.correct {
            return Ok(Vec::new());
        }
        let links: Vec<Link> = observed.links.iter().map(|l| l.link.clone()).collect();
        let wanted = self.wanted(&links)?;
        let corrections = {
            let owned = self.owned.lock().unwrap_or_else(|e| e.into_inner());
            diff(&wanted, &observed, &owned.0, &owned.1)
        };
        let mut done = Vec::new();
        for c in corrections {
            match self.network.correct(&observed, &c, &self.resolv_path).await {
                Ok(()) => {
                    let message = format!("drift corrected: {c}");
                    crate::console(&self.state_dir, &message);
                    self.events
                        .publish(crate::events::EventKind::Config, &c.subject(), message);
                    done.push(c);
                }
                Err(e) => self.report_once(format!("drift not corrected: {c}: {e}")),
            }
        }
        let mut owned = self.owned.lock().unwrap_or_else(|e| e.into_inner());
        *owned = (wanted.addresses, wanted.routes);
        Ok(done)
    }

    /// Prints `message` unless it was printed before (a failure that persists).
    fn report_once(&self, message: String) {
        let new = self
            .reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(message.clone());
        if new {
            crate::console(&self.state_dir, &message);
        }
    }

    fn publish(&self, observed: &Observed) {
        const OWNER: &str = "NetworkController";
        let links = observed
            .links
            .iter()
            .map(|l| {
                let mac = l.link.mac.map(|m| {
                    m.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":")
                });
                (
                    l.link.name.clone(),
                    json!({"index": l.link.index, "up": l.up, "mtu": l.mtu,
                    "mac": mac, "loopback": l.link.loopback}),
                )
            })
            .collect();
        self.resources.set_type("network", "Link", OWNER, links);
        let addresses = observed
            .addresses
            .iter()
            .map(|(l, a, p)| {
                (
                    format!("{l}/{a}/{p}"),
                    json!({"link": l, "address": format!("{a}/{p}")}),
                )
            })
            .collect();
        self.resources
            .set_type("network", "Address", OWNER, addresses);
        let routes = observed
            .routes
            .iter()
            .map(|r| {
                (
                    format!("{}/{}/{}", r.link, r.destination, r.prefix_len),
                    json!({"link": r.link, "destination": format!("{}/{}", r.destination, r.prefix_len),
                        "gateway": r.gateway.map(|g| g.to_string()), "metric": r.metric}),
                )
            })
            .collect();
        self.resources.set_type("network", "Route", OWNER, routes);
        let mut resolver = BTreeMap::new();
        if let Some(text) = &observed.resolv_conf {
            let servers: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("nameserver "))
                .map(str::trim)
                .collect();
            let search: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("search "))
                .flat_map(str::split_whitespace)
                .collect();
            resolver.insert(
                "resolvers".to_string(),
                json!({"nameservers": servers, "search": search}),
            );
        }
        self.resources
            .set_type("network", "Resolver", OWNER, resolver);
    }

    /// Runs a round every `interval`, forever (spawn it).
    pub async fn run(self: Arc<Self>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(e) = self.round().await {
                self.report_once(format!("network controller: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, up: bool, mtu: u32) -> LinkState {
        LinkState {
            link: Link {
                index: 2,
                name: name.into(),
                mac: None,
                loopback: false,
                ethernet: true,
            },
            up,
            mtu: Some(mtu),
        }
    }

    fn route(dest: [u8; 4], len: u8, gw: Option<[u8; 4]>, metric: Option<u32>) -> Route {
        Route {
            link: "eth0".into(),
            destination: Ipv4Addr::from(dest),
            prefix_len: len,
            gateway: gw.map(Ipv4Addr::from),
            metric,
        }
    }

    #[test]
    fn diff_finds_missing_extra_and_down() {
        let a1: Address = ("eth0".into(), Ipv4Addr::new(10, 0, 0, 2), 24);
        let old: Address = ("eth0".into(), Ipv4Addr::new(10, 0, 0, 3), 24);
        let foreign: Address = ("eth0".into(), Ipv4Addr::new(10, 0, 0, 9), 24);
        let r1 = route([10, 1, 0, 0], 16, Some([10, 0, 0, 1]), None);
        let old_route = route([10, 2, 0, 0], 16, Some([10, 0, 0, 1]), Some(5));
        let wanted = Wanted {
            links: vec![("eth0".into(), Some(1400)), ("eth9".into(), None)],
            addresses: [a1.clone(), ("eth9".into(), Ipv4Addr::new(1, 1, 1, 1), 8)].into(),
            routes: [r1.clone()].into(),
            resolv_conf: Some("nameserver 10.0.0.1\n".into()),
        };
        let observed = Observed {
            links: vec![link("eth0", false, 1500)],
            addresses: vec![old.clone(), foreign.clone()],
            routes: vec![old_route.clone()],
            resolv_conf: None,
        };
        let owned_a: BTreeSet<Address> = [old.clone()].into();
        let owned_r: BTreeSet<Route> = [old_route.clone()].into();
        let d = diff(&wanted, &observed, &owned_a, &owned_r);
        assert_eq!(
            d,
            vec![
                NetCorrection::RemoveRoute(old_route),
                NetCorrection::RemoveAddress(old),
                NetCorrection::LinkUp("eth0".into()),
                NetCorrection::Mtu {
                    link: "eth0".into(),
                    found: Some(1500),
                    want: 1400
                },
                NetCorrection::AddAddress(a1.clone()),
                NetCorrection::AddRoute(r1.clone()),
                NetCorrection::Resolver("nameserver 10.0.0.1\n".into()),
            ],
            "the missing eth9 is skipped, the foreign address is left alone"
        );
        // When everything is in place nothing is done; a kernel-set metric is accepted.
        let observed = Observed {
            links: vec![link("eth0", true, 1400)],
            addresses: vec![a1, foreign],
            routes: vec![route([10, 1, 0, 0], 16, Some([10, 0, 0, 1]), Some(0))],
            resolv_conf: Some("nameserver 10.0.0.1\n".into()),
        };
        assert_eq!(
            diff(&wanted, &observed, &BTreeSet::new(), &BTreeSet::new()),
            vec![]
        );
    }
}
