//! A DHCPv4 client for one interface: DISCOVER → OFFER → REQUEST → ACK over a UDP socket
//! bound to the interface (`SO_BINDTODEVICE`) on port 68 with `SO_BROADCAST`.
//!
//! Retransmission follows RFC 2131 §4.1 loosely: 1 s, 2 s, 4 s, … capped at 8 s, until the
//! overall deadline. Renewal (unicast REQUEST with `ciaddr` at half the lease) is done by
//! [`super::Network`]'s lease task through [`renew`].

use super::dhcp_packet::{CLIENT_PORT, ClientMessage, MessageType, SERVER_PORT, ServerReply};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// A lease obtained from a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Default gateway, if the server gave one.
    pub router: Option<Ipv4Addr>,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
    /// The server that granted the lease.
    pub server: Ipv4Addr,
    /// Lease duration.
    pub lease_time: Duration,
    /// MTU, if the server gave one.
    pub mtu: Option<u16>,
}

/// Why no lease was obtained.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// The socket could not be set up.
    #[error("DHCP on {interface}: socket: {source}")]
    Socket {
        /// The interface.
        interface: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// No usable answer before the deadline.
    #[error("DHCP on {interface}: no {waiting_for} within {} s", .after.as_secs())]
    Timeout {
        /// The interface.
        interface: String,
        /// OFFER or ACK.
        waiting_for: &'static str,
        /// The time waited.
        after: Duration,
    },
    /// The server refused the request.
    #[error("DHCP on {interface}: server {server} refused the request (NAK)")]
    Nak {
        /// The interface.
        interface: String,
        /// The server.
        server: Ipv4Addr,
    },
}

fn socket(interface: &str) -> Result<UdpSocket, DhcpError> {
    let err = |source| DhcpError::Socket {
        interface: interface.to_string(),
        source,
    };
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_broadcast(true).map_err(err)?;
    s.bind_device(Some(interface.as_bytes())).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&SocketAddr::from(([0, 0, 0, 0], CLIENT_PORT)).into())
        .map_err(err)?;
    UdpSocket::from_std(s.into()).map_err(err)
}

/// Sends `msg` (re-sent with backoff) until `accept` returns a reply or `deadline` passes.
async fn exchange(
    sock: &UdpSocket,
    interface: &str,
    msg: &ClientMessage,
    to: SocketAddrV4,
    waiting_for: &'static str,
    deadline: Instant,
    started: Instant,
) -> Result<ServerReply, DhcpError> {
    let mut wait = Duration::from_secs(1);
    let mut buf = vec![0u8; 1500];
    loop {
        let mut m = msg.clone();
        m.secs = started.elapsed().as_secs().min(u64::from(u16::MAX)) as u16;
        sock.send_to(&m.encode(), to)
            .await
            .map_err(|source| DhcpError::Socket {
                interface: interface.to_string(),
                source,
            })?;
        let round_end = (Instant::now() + wait).min(deadline);
        loop {
            let now = Instant::now();
            if now >= round_end {
                break;
            }
            let recv = tokio::time::timeout(round_end - now, sock.recv_from(&mut buf)).await;
            let Ok(Ok((n, _from))) = recv else { break };
            let Ok(reply) = ServerReply::decode(&buf[..n]) else {
                continue;
            };
            if reply.xid != msg.xid || reply.chaddr != msg.mac {
                continue;
            }
            match (waiting_for, reply.kind) {
                ("OFFER", MessageType::Offer) | ("ACK", MessageType::Ack) => return Ok(reply),
                ("ACK", MessageType::Nak) => {
                    return Err(DhcpError::Nak {
                        interface: interface.to_string(),
                        server: reply.server_id.unwrap_or(Ipv4Addr::UNSPECIFIED),
                    });
                }
                _ => continue,
            }
        }
        if Instant::now() >= deadline {
            return Err(DhcpError::Timeout {
                interface: interface.to_string(),
                waiting_for,
                after: started.elapsed(),
            });
        }
        wait = (wait * 2).min(Duration::from_secs(8));
    }
}

fn lease_from(reply: &ServerReply) -> Lease {
    Lease {
        address: reply.your_ip,
        prefix_len: reply.prefix_len(),
        router: reply.routers.first().copied(),
        dns: reply.dns.clone(),
        server: reply.server_id.unwrap_or(Ipv4Addr::BROADCAST),
        lease_time: reply.lease_time.unwrap_or(Duration::from_secs(3600)),
        mtu: reply.mtu,
    }
}

fn new_xid(mac: &[u8; 6]) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ std::process::id()
}

/// Obtains a lease on `interface` (which must be up) within `timeout`.
pub async fn acquire(
    interface: &str,
    mac: [u8; 6],
    hostname: Option<String>,
    timeout: Duration,
) -> Result<Lease, DhcpError> {
    let sock = socket(interface)?;
    let started = Instant::now();
    let deadline = started + timeout;
    let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT);
    let mut msg = ClientMessage {
        kind: MessageType::Discover,
        xid: new_xid(&mac),
        mac,
        secs: 0,
        requested_ip: None,
        server_id: None,
        client_ip: None,
        hostname,
    };
    let offer = exchange(
        &sock, interface, &msg, broadcast, "OFFER", deadline, started,
    )
    .await?;
    msg.kind = MessageType::Request;
    msg.requested_ip = Some(offer.your_ip);
    msg.server_id = offer.server_id;
    let ack = exchange(&sock, interface, &msg, broadcast, "ACK", deadline, started).await?;
    Ok(lease_from(&ack))
}

/// Renews `lease` on `interface` (a REQUEST with `ciaddr`, broadcast so it also works when
/// the server moved).
pub async fn renew(
    interface: &str,
    mac: [u8; 6],
    lease: &Lease,
    hostname: Option<String>,
    timeout: Duration,
) -> Result<Lease, DhcpError> {
    let sock = socket(interface)?;
    let started = Instant::now();
    let msg = ClientMessage {
        kind: MessageType::Request,
        xid: new_xid(&mac),
        mac,
        secs: 0,
        requested_ip: None,
        server_id: None,
        client_ip: Some(lease.address),
        hostname,
    };
    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT);
    let ack = exchange(
        &sock,
        interface,
        &msg,
        to,
        "ACK",
        started + timeout,
        started,
    )
    .await?;
    Ok(lease_from(&ack))
}
