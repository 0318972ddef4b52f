//! The DHCPv4 server: up to 16 leases from `dhcpstart` (as QEMU's slirp), with the router, DNS,
//! `hostname`, `domainname`, `dnssearch`, `bootfile` and `tftp-server-name` options.

use std::net::Ipv4Addr;

use smoltcp::wire::{DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress};

use super::options::{Ipv4Net, UserOptions};

/// Leases the server hands out (QEMU: `NB_BOOTP_CLIENTS`).
pub const POOL_SIZE: u32 = 16;
/// Lease time in seconds (QEMU: 24 hours).
pub const LEASE_SECONDS: u32 = 24 * 3600;

const OPT_HOSTNAME: u8 = 12;
const OPT_DOMAIN_NAME: u8 = 15;
const OPT_TFTP_SERVER_NAME: u8 = 66;
const OPT_BOOTFILE_NAME: u8 = 67;
const OPT_DOMAIN_SEARCH: u8 = 119;
/// Offset and size of the BOOTP `file` field.
const FILE_FIELD: std::ops::Range<usize> = 108..236;

/// Lease table and the options every reply carries.
#[derive(Debug)]
pub struct DhcpServer {
    net: Ipv4Net,
    restrict: bool,
    leases: Vec<Option<EthernetAddress>>,
    hostname: Option<Vec<u8>>,
    domainname: Option<Vec<u8>>,
    bootfile: Option<Vec<u8>>,
    tftp_server_name: Option<Vec<u8>>,
    domain_search: Option<Vec<u8>>,
}

/// A reply to send: to whom and the DHCP payload.
#[derive(Debug)]
pub struct DhcpReply {
    /// Address the reply goes to (broadcast unless the client has an address already).
    pub dst: Ipv4Addr,
    pub payload: Vec<u8>,
}

impl DhcpServer {
    pub fn new(net: Ipv4Net, options: &UserOptions) -> DhcpServer {
        let bytes = |s: &Option<String>| s.as_ref().map(|s| s.as_bytes().to_vec());
        DhcpServer {
            net,
            restrict: options.restrict,
            leases: vec![None; POOL_SIZE as usize],
            hostname: bytes(&options.hostname),
            domainname: bytes(&options.domainname),
            bootfile: bytes(&options.bootfile),
            tftp_server_name: bytes(&options.tftp_server_name),
            domain_search: (!options.dnssearch.is_empty())
                .then(|| encode_domain_search(&options.dnssearch))
                .flatten(),
        }
    }

    fn pool_addr(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net.dhcp_start) + index as u32)
    }

    fn pool_index(&self, addr: Ipv4Addr) -> Option<usize> {
        let offset = u32::from(addr).checked_sub(u32::from(self.net.dhcp_start))?;
        (offset < POOL_SIZE).then_some(offset as usize)
    }

    /// The address leased to `mac`, leasing a free one if `allocate`.
    fn lease_for(&mut self, mac: EthernetAddress, allocate: bool) -> Option<Ipv4Addr> {
        if let Some(i) = self.leases.iter().position(|l| *l == Some(mac)) {
            return Some(self.pool_addr(i));
        }
        if !allocate {
            return None;
        }
        let i = self.leases.iter().position(Option::is_none)?;
        self.leases[i] = Some(mac);
        Some(self.pool_addr(i))
    }

    /// Handles one DHCP message from the guest; `None` when there is nothing to answer.
    pub fn handle(&mut self, payload: &[u8]) -> Option<DhcpReply> {
        let packet = DhcpPacket::new_checked(payload).ok()?;
        let request = DhcpRepr::parse(&packet).ok()?;
        let mac = request.client_hardware_address;
        let (reply_type, addr) = match request.message_type {
            DhcpMessageType::Discover => (DhcpMessageType::Offer, self.lease_for(mac, true)?),
            DhcpMessageType::Request => {
                let wanted = request
                    .requested_ip
                    .or((!request.client_ip.is_unspecified()).then_some(request.client_ip));
                let leased = self.lease_for(mac, true);
                match (wanted, leased) {
                    // A client asking for an address it does not hold: NAK so it starts over.
                    (Some(w), Some(l)) if w != l => (DhcpMessageType::Nak, Ipv4Addr::UNSPECIFIED),
                    (_, Some(l)) => (DhcpMessageType::Ack, l),
                    (_, None) => (DhcpMessageType::Nak, Ipv4Addr::UNSPECIFIED),
                }
            }
            DhcpMessageType::Release | DhcpMessageType::Decline => {
                if let Some(i) = self.lease_for(mac, false).and_then(|a| self.pool_index(a)) {
                    self.leases[i] = None;
                }
                return None;
            }
            _ => return None,
        };
        Some(self.reply(&request, reply_type, addr))
    }

    fn reply(
        &self,
        request: &DhcpRepr,
        message_type: DhcpMessageType,
        addr: Ipv4Addr,
    ) -> DhcpReply {
        let nak = message_type == DhcpMessageType::Nak;
        let mut extra = Vec::new();
        if !nak {
            for (kind, value) in [
                (OPT_HOSTNAME, &self.hostname),
                (OPT_DOMAIN_NAME, &self.domainname),
                (OPT_TFTP_SERVER_NAME, &self.tftp_server_name),
                (OPT_BOOTFILE_NAME, &self.bootfile),
                (OPT_DOMAIN_SEARCH, &self.domain_search),
            ] {
                if let Some(data) = value {
                    extra.push(DhcpOption { kind, data });
                }
            }
        }
        let mut dns = heapless::Vec::new();
        let _ = dns.push(self.net.dns);
        let repr = DhcpRepr {
            message_type,
            transaction_id: request.transaction_id,
            secs: 0,
            client_hardware_address: request.client_hardware_address,
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: addr,
            server_ip: self.net.host,
            router: (!nak && !self.restrict).then_some(self.net.host),
            subnet_mask: (!nak).then_some(self.net.mask),
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: request.broadcast,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(self.net.host),
            parameter_request_list: None,
            dns_servers: (!nak).then_some(dns),
            max_size: None,
            lease_duration: (!nak).then_some(LEASE_SECONDS),
            renew_duration: None,
            rebind_duration: None,
            additional_options: &extra,
        };
        let mut payload = vec![0u8; repr.buffer_len()];
        let mut packet = DhcpPacket::new_unchecked(&mut payload[..]);
        // The buffer is sized by the representation itself, so emitting cannot run short.
        let _ = repr.emit(&mut packet);
        if let (Some(file), false) = (&self.bootfile, nak) {
            let n = file.len().min(FILE_FIELD.len() - 1);
            payload[FILE_FIELD.start..FILE_FIELD.start + n].copy_from_slice(&file[..n]);
        }
        let dst = if request.client_ip.is_unspecified() || nak {
            Ipv4Addr::BROADCAST
        } else {
            request.client_ip
        };
        DhcpReply { dst, payload }
    }
}

/// RFC 1035 names for RFC 3397's domain search option (no compression); `None` if a label is
/// empty or too long, or the whole does not fit one option.
pub fn encode_domain_search(domains: &[String]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for domain in domains {
        for label in domain.trim_end_matches('.').split('.') {
            if label.is_empty() || label.len() > 63 {
                log::warn!("dnssearch: '{domain}' is not a valid domain name; not sent");
                return None;
            }
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
    }
    if out.len() > 255 {
        log::warn!("dnssearch: the list is longer than one DHCP option; not sent");
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Opts;

    fn server(extra: &str) -> DhcpServer {
        let mut opts = Opts::parse_keyval(&format!("user{extra}")).unwrap();
        opts.take_str("type").unwrap();
        let o = UserOptions::from_opts(&mut opts).unwrap();
        DhcpServer::new(o.ipv4.unwrap(), &o)
    }

    fn request(
        message_type: DhcpMessageType,
        mac: [u8; 6],
        requested: Option<Ipv4Addr>,
    ) -> Vec<u8> {
        let repr = DhcpRepr {
            message_type,
            transaction_id: 0x1234,
            secs: 0,
            client_hardware_address: EthernetAddress(mac),
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: Ipv4Addr::UNSPECIFIED,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: false,
            requested_ip: requested,
            client_identifier: None,
            server_identifier: None,
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        let mut buf = vec![0; repr.buffer_len()];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut buf[..]))
            .unwrap();
        buf
    }

    fn options(payload: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let p = DhcpPacket::new_checked(payload).unwrap();
        p.options().map(|o| (o.kind, o.data.to_vec())).collect()
    }

    #[test]
    fn discover_request_ack_with_configured_options() {
        let mut s = server(
            ",hostname=vm1,domainname=example.test,dnssearch=a.example,dnssearch=b.example,bootfile=pxelinux.0,tftp-server-name=tftp.example",
        );
        let mac = [0x52, 0x54, 0, 1, 2, 3];
        let offer = s
            .handle(&request(DhcpMessageType::Discover, mac, None))
            .unwrap();
        assert_eq!(offer.dst, Ipv4Addr::BROADCAST);
        let repr_buf = offer.payload.clone();
        let p = DhcpPacket::new_checked(&repr_buf[..]).unwrap();
        let offered = DhcpRepr::parse(&p).unwrap();
        assert_eq!(offered.message_type, DhcpMessageType::Offer);
        assert_eq!(offered.your_ip, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(offered.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(offered.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(
            offered.dns_servers.unwrap().as_slice(),
            &[Ipv4Addr::new(10, 0, 2, 3)]
        );
        assert_eq!(offered.lease_duration, Some(LEASE_SECONDS));
        let opts = options(&offer.payload);
        let find = |k| {
            opts.iter()
                .find(|(kind, _)| *kind == k)
                .map(|(_, d)| d.clone())
        };
        assert_eq!(find(OPT_HOSTNAME).unwrap(), b"vm1");
        assert_eq!(find(OPT_DOMAIN_NAME).unwrap(), b"example.test");
        assert_eq!(find(OPT_BOOTFILE_NAME).unwrap(), b"pxelinux.0");
        assert_eq!(find(OPT_TFTP_SERVER_NAME).unwrap(), b"tftp.example");
        assert_eq!(
            find(OPT_DOMAIN_SEARCH).unwrap(),
            b"\x01a\x07example\x00\x01b\x07example\x00"
        );
        assert_eq!(&offer.payload[108..118], b"pxelinux.0");

        let ack = s
            .handle(&request(
                DhcpMessageType::Request,
                mac,
                Some(Ipv4Addr::new(10, 0, 2, 15)),
            ))
            .unwrap();
        let p = DhcpPacket::new_checked(&ack.payload[..]).unwrap();
        let acked = DhcpRepr::parse(&p).unwrap();
        assert_eq!(acked.message_type, DhcpMessageType::Ack);
        assert_eq!(acked.your_ip, Ipv4Addr::new(10, 0, 2, 15));
    }

    #[test]
    fn pool_is_per_mac_bounded_and_naks_foreign_requests() {
        let mut s = server(",restrict=on");
        let first = s
            .handle(&request(
                DhcpMessageType::Discover,
                [2, 0, 0, 0, 0, 1],
                None,
            ))
            .unwrap();
        let p = DhcpPacket::new_checked(&first.payload[..]).unwrap();
        let r = DhcpRepr::parse(&p).unwrap();
        assert_eq!(r.router, None, "restrict=on gives no default route");
        for i in 2..=POOL_SIZE as u8 {
            let o = s
                .handle(&request(
                    DhcpMessageType::Discover,
                    [2, 0, 0, 0, 0, i],
                    None,
                ))
                .unwrap();
            let p = DhcpPacket::new_checked(&o.payload[..]).unwrap();
            let r = DhcpRepr::parse(&p).unwrap();
            assert_eq!(r.your_ip, Ipv4Addr::new(10, 0, 2, 14 + i));
        }
        assert!(
            s.handle(&request(
                DhcpMessageType::Discover,
                [2, 0, 0, 0, 0, 99],
                None
            ))
            .is_none(),
            "pool exhausted"
        );
        let nak = s
            .handle(&request(
                DhcpMessageType::Request,
                [2, 0, 0, 0, 0, 1],
                Some(Ipv4Addr::new(10, 0, 2, 99)),
            ))
            .unwrap();
        let p = DhcpPacket::new_checked(&nak.payload[..]).unwrap();
        assert_eq!(
            DhcpRepr::parse(&p).unwrap().message_type,
            DhcpMessageType::Nak
        );
        s.handle(&request(DhcpMessageType::Release, [2, 0, 0, 0, 0, 1], None));
        assert!(
            s.handle(&request(
                DhcpMessageType::Discover,
                [2, 0, 0, 0, 0, 99],
                None
            ))
            .is_some(),
            "released address is free again"
        );
    }

    #[test]
    fn garbage_is_ignored() {
        let mut s = server("");
        assert!(s.handle(&[]).is_none());
        assert!(s.handle(&[1u8; 300]).is_none());
        assert!(encode_domain_search(&["bad..name".into()]).is_none());
    }
}
