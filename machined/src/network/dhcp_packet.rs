//! DHCPv4 messages (RFC 2131, options of RFC 2132): building DISCOVER and REQUEST,
//! reading OFFER, ACK and NAK.
//!
//! Only what a client on a node needs: one address, its netmask, routers, DNS servers, the
//! lease time, the server identifier and the MTU. The BROADCAST flag is always set, so the
//! server answers to 255.255.255.255 and the reply reaches a UDP socket on an interface
//! that has no address yet (no raw packet socket needed).

use std::net::Ipv4Addr;
use std::time::Duration;

/// UDP port of DHCP servers.
pub const SERVER_PORT: u16 = 67;
/// UDP port of DHCP clients.
pub const CLIENT_PORT: u16 = 68;

const OP_REQUEST: u8 = 1;
const OP_REPLY: u8 = 2;
const HTYPE_ETHERNET: u8 = 1;
const FLAG_BROADCAST: u16 = 0x8000;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Fixed BOOTP header length (before the magic cookie).
const HEADER_LEN: usize = 236;

const OPT_PAD: u8 = 0;
const OPT_SUBNET_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_HOSTNAME: u8 = 12;
const OPT_MTU: u8 = 26;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_LEASE_TIME: u8 = 51;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PARAMETER_LIST: u8 = 55;
const OPT_MAX_MESSAGE_SIZE: u8 = 57;
const OPT_CLIENT_ID: u8 = 61;
const OPT_END: u8 = 255;

/// A DHCP message type (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// Client looks for servers.
    Discover,
    /// Server offers an address.
    Offer,
    /// Client asks for the offered address.
    Request,
    /// Server confirms.
    Ack,
    /// Server refuses.
    Nak,
    /// Any other type (decline, release, inform).
    Other(u8),
}

impl MessageType {
    fn code(self) -> u8 {
        match self {
            MessageType::Discover => 1,
            MessageType::Offer => 2,
            MessageType::Request => 3,
            MessageType::Ack => 5,
            MessageType::Nak => 6,
            MessageType::Other(c) => c,
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            c => MessageType::Other(c),
        }
    }
}

/// Why a received packet is not a usable DHCP reply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// Shorter than the header and cookie.
    #[error("DHCP packet too short ({0} bytes)")]
    TooShort(usize),
    /// Not a BOOTREPLY.
    #[error("not a DHCP reply (op {0})")]
    NotReply(u8),
    /// The magic cookie is wrong.
    #[error("DHCP packet without the magic cookie")]
    NoCookie,
    /// An option runs past the end of the packet.
    #[error("DHCP option {0} is truncated")]
    TruncatedOption(u8),
    /// No message type option.
    #[error("DHCP packet without a message type")]
    NoMessageType,
}

/// A client message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMessage {
    /// DISCOVER or REQUEST.
    pub kind: MessageType,
    /// Transaction id.
    pub xid: u32,
    /// The interface's hardware address.
    pub mac: [u8; 6],
    /// Seconds since the client started (the `secs` field).
    pub secs: u16,
    /// The address asked for (REQUEST after an OFFER, option 50).
    pub requested_ip: Option<Ipv4Addr>,
    /// The server chosen (REQUEST after an OFFER, option 54).
    pub server_id: Option<Ipv4Addr>,
    /// The current address when renewing (the `ciaddr` field; no options 50/54 then).
    pub client_ip: Option<Ipv4Addr>,
    /// Hostname to announce (option 12).
    pub hostname: Option<String>,
}

impl ClientMessage {
    /// The message as bytes, ready for a UDP datagram to port 67.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = vec![0u8; HEADER_LEN];
        p[0] = OP_REQUEST;
        p[1] = HTYPE_ETHERNET;
        p[2] = 6;
        p[4..8].copy_from_slice(&self.xid.to_be_bytes());
        p[8..10].copy_from_slice(&self.secs.to_be_bytes());
        p[10..12].copy_from_slice(&FLAG_BROADCAST.to_be_bytes());
        if let Some(ip) = self.client_ip {
            p[12..16].copy_from_slice(&ip.octets());
        }
        p[28..34].copy_from_slice(&self.mac);
        p.extend_from_slice(&MAGIC_COOKIE);
        p.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, self.kind.code()]);
        let mut client_id = vec![HTYPE_ETHERNET];
        client_id.extend_from_slice(&self.mac);
        push_option(&mut p, OPT_CLIENT_ID, &client_id);
        if let Some(ip) = self.requested_ip {
            push_option(&mut p, OPT_REQUESTED_IP, &ip.octets());
        }
        if let Some(ip) = self.server_id {
            push_option(&mut p, OPT_SERVER_ID, &ip.octets());
        }
        if let Some(name) = &self.hostname {
            let bytes = name.as_bytes();
            push_option(&mut p, OPT_HOSTNAME, &bytes[..bytes.len().min(255)]);
        }
        push_option(&mut p, OPT_MAX_MESSAGE_SIZE, &1500u16.to_be_bytes());
        push_option(
            &mut p,
            OPT_PARAMETER_LIST,
            &[
                OPT_SUBNET_MASK,
                OPT_ROUTER,
                OPT_DNS,
                OPT_MTU,
                OPT_LEASE_TIME,
            ],
        );
        p.push(OPT_END);
        // Some old servers drop requests shorter than a BOOTP packet (300 bytes).
        if p.len() < 300 {
            p.resize(300, OPT_PAD);
        }
        p
    }
}

fn push_option(p: &mut Vec<u8>, code: u8, value: &[u8]) {
    p.push(code);
    p.push(value.len() as u8);
    p.extend_from_slice(value);
}

/// A server reply, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    /// OFFER, ACK or NAK (or another type, which a client ignores).
    pub kind: MessageType,
    /// Transaction id, to match with the request.
    pub xid: u32,
    /// The client hardware address the reply is for.
    pub chaddr: [u8; 6],
    /// The address offered or confirmed (`yiaddr`).
    pub your_ip: Ipv4Addr,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 1.
    pub subnet_mask: Option<Ipv4Addr>,
    /// Option 3, in preference order.
    pub routers: Vec<Ipv4Addr>,
    /// Option 6, in preference order.
    pub dns: Vec<Ipv4Addr>,
    /// Option 51.
    pub lease_time: Option<Duration>,
    /// Option 26.
    pub mtu: Option<u16>,
}

impl ServerReply {
    /// Decodes a datagram received on port 68.
    pub fn decode(p: &[u8]) -> Result<Self, PacketError> {
        if p.len() < HEADER_LEN + 4 {
            return Err(PacketError::TooShort(p.len()));
        }
        if p[0] != OP_REPLY {
            return Err(PacketError::NotReply(p[0]));
        }
        if p[HEADER_LEN..HEADER_LEN + 4] != MAGIC_COOKIE {
            return Err(PacketError::NoCookie);
        }
        let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        let mut chaddr = [0u8; 6];
        chaddr.copy_from_slice(&p[28..34]);
        let mut reply = ServerReply {
            kind: MessageType::Other(0),
            xid: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            chaddr,
            your_ip: ip(&p[16..20]),
            server_id: None,
            subnet_mask: None,
            routers: Vec::new(),
            dns: Vec::new(),
            lease_time: None,
            mtu: None,
        };
        let mut kind = None;
        let mut i = HEADER_LEN + 4;
        while i < p.len() {
            let code = p[i];
            if code == OPT_PAD {
                i += 1;
                continue;
            }
            if code == OPT_END {
                break;
            }
            let len = *p.get(i + 1).ok_or(PacketError::TruncatedOption(code))? as usize;
            let value = p
                .get(i + 2..i + 2 + len)
                .ok_or(PacketError::TruncatedOption(code))?;
            let addrs = || value.chunks_exact(4).map(ip).collect::<Vec<_>>();
            match code {
                OPT_MESSAGE_TYPE if len == 1 => kind = Some(MessageType::from_code(value[0])),
                OPT_SERVER_ID if len == 4 => reply.server_id = Some(ip(value)),
                OPT_SUBNET_MASK if len == 4 => reply.subnet_mask = Some(ip(value)),
                OPT_ROUTER => reply.routers = addrs(),
                OPT_DNS => reply.dns = addrs(),
                OPT_LEASE_TIME if len == 4 => {
                    let secs = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
                    reply.lease_time = Some(Duration::from_secs(u64::from(secs)));
                }
                OPT_MTU if len == 2 => reply.mtu = Some(u16::from_be_bytes([value[0], value[1]])),
                _ => {}
            }
            i += 2 + len;
        }
        reply.kind = kind.ok_or(PacketError::NoMessageType)?;
        Ok(reply)
    }

    /// The prefix length of the subnet mask (24 for 255.255.255.0); a missing or
    /// non-contiguous mask gives the classful default of a private address, /24.
    pub fn prefix_len(&self) -> u8 {
        match self.subnet_mask {
            Some(mask) => {
                let bits = u32::from(mask);
                if bits.leading_ones() + bits.trailing_zeros() == 32 {
                    bits.leading_ones() as u8
                } else {
                    24
                }
            }
            None => 24,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    /// A reply as QEMU's user network (slirp) sends it.
    fn slirp_offer(kind: u8) -> Vec<u8> {
        let mut p = vec![0u8; HEADER_LEN];
        p[0] = OP_REPLY;
        p[1] = 1;
        p[2] = 6;
        p[4..8].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
        p[16..20].copy_from_slice(&[10, 0, 2, 15]);
        p[28..34].copy_from_slice(&MAC);
        p.extend_from_slice(&MAGIC_COOKIE);
        p.extend_from_slice(&[53, 1, kind]);
        p.extend_from_slice(&[54, 4, 10, 0, 2, 2]);
        p.extend_from_slice(&[51, 4, 0, 1, 0x51, 0x80]);
        p.extend_from_slice(&[1, 4, 255, 255, 255, 0]);
        p.extend_from_slice(&[3, 4, 10, 0, 2, 2]);
        p.extend_from_slice(&[6, 8, 10, 0, 2, 3, 1, 1, 1, 1]);
        p.extend_from_slice(&[0, 0, 255]);
        p
    }

    #[test]
    fn discover_has_the_bootp_layout_and_options() {
        let msg = ClientMessage {
            kind: MessageType::Discover,
            xid: 0x0102_0304,
            mac: MAC,
            secs: 3,
            requested_ip: None,
            server_id: None,
            client_ip: None,
            hostname: Some("node-1".into()),
        };
        let p = msg.encode();
        assert_eq!(p.len(), 300);
        assert_eq!(&p[0..4], &[1, 1, 6, 0]);
        assert_eq!(&p[4..8], &[1, 2, 3, 4]);
        assert_eq!(&p[8..10], &[0, 3]);
        assert_eq!(&p[10..12], &[0x80, 0], "broadcast flag");
        assert_eq!(&p[28..34], &MAC);
        assert_eq!(&p[236..240], &MAGIC_COOKIE);
        assert_eq!(&p[240..243], &[53, 1, 1]);
        assert_eq!(
            &p[243..251],
            &[61, 7, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56][..8]
        );
        let hostname = p
            .windows(8)
            .position(|w| w == [12, 6, b'n', b'o', b'd', b'e', b'-', b'1']);
        assert!(hostname.is_some(), "hostname option present");
    }

    #[test]
    fn request_carries_requested_ip_and_server() {
        let msg = ClientMessage {
            kind: MessageType::Request,
            xid: 7,
            mac: MAC,
            secs: 0,
            requested_ip: Some(Ipv4Addr::new(10, 0, 2, 15)),
            server_id: Some(Ipv4Addr::new(10, 0, 2, 2)),
            client_ip: None,
            hostname: None,
        };
        let p = msg.encode();
        assert_eq!(&p[240..243], &[53, 1, 3]);
        assert!(p.windows(6).any(|w| w == [50, 4, 10, 0, 2, 15]));
        assert!(p.windows(6).any(|w| w == [54, 4, 10, 0, 2, 2]));
    }

    #[test]
    fn decodes_an_offer() {
        let r = ServerReply::decode(&slirp_offer(2)).unwrap();
        assert_eq!(r.kind, MessageType::Offer);
        assert_eq!(r.xid, 0xdead_beef);
        assert_eq!(r.chaddr, MAC);
        assert_eq!(r.your_ip, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(r.server_id, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(r.prefix_len(), 24);
        assert_eq!(r.routers, [Ipv4Addr::new(10, 0, 2, 2)]);
        assert_eq!(
            r.dns,
            [Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)]
        );
        assert_eq!(r.lease_time, Some(Duration::from_secs(86400)));
        assert_eq!(r.mtu, None);
    }

    #[test]
    fn decodes_ack_and_nak() {
        assert_eq!(
            ServerReply::decode(&slirp_offer(5)).unwrap().kind,
            MessageType::Ack
        );
        assert_eq!(
            ServerReply::decode(&slirp_offer(6)).unwrap().kind,
            MessageType::Nak
        );
    }

    #[test]
    fn rejects_bad_packets() {
        assert_eq!(
            ServerReply::decode(&[0; 10]),
            Err(PacketError::TooShort(10))
        );
        let mut p = slirp_offer(2);
        p[0] = 1;
        assert_eq!(ServerReply::decode(&p), Err(PacketError::NotReply(1)));
        let mut p = slirp_offer(2);
        p[236] = 0;
        assert_eq!(ServerReply::decode(&p), Err(PacketError::NoCookie));
        let mut p = slirp_offer(2);
        p.truncate(p.len() - 3);
        p.extend_from_slice(&[6, 8, 1]);
        assert_eq!(
            ServerReply::decode(&p),
            Err(PacketError::TruncatedOption(6))
        );
        let mut p = slirp_offer(2);
        p.truncate(240);
        p.push(255);
        assert_eq!(ServerReply::decode(&p), Err(PacketError::NoMessageType));
    }

    #[test]
    fn prefix_lengths() {
        let mut r = ServerReply::decode(&slirp_offer(2)).unwrap();
        r.subnet_mask = Some(Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(r.prefix_len(), 16);
        r.subnet_mask = Some(Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(r.prefix_len(), 32);
        r.subnet_mask = Some(Ipv4Addr::new(255, 0, 255, 0));
        assert_eq!(r.prefix_len(), 24);
    }
}
