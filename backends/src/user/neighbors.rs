//! Link-layer neighbours: ARP replies, and IPv6 neighbour and router advertisements (SLAAC with
//! the configured prefix, RDNSS with the virtual name server).

use std::net::{Ipv4Addr, Ipv6Addr};

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetProtocol, Icmpv6Packet, IpProtocol,
};

use super::guest_frames::{ipv6_repr, write_eth, GuestFrames, LinkAddrs, ETH_HDR, MTU};
use super::options::Ipv6Net;

/// The router's link-local address, the source of its advertisements.
pub const ROUTER_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
/// Lifetimes in advertisements (seconds).
const ROUTER_LIFETIME: u16 = 1800;
const PREFIX_VALID: u32 = 86400;
const PREFIX_PREFERRED: u32 = 14400;
const DNS_LIFETIME: u32 = 1800;

const ICMPV6_ROUTER_SOLICIT: u8 = 133;
const ICMPV6_ROUTER_ADVERT: u8 = 134;
const ICMPV6_NEIGHBOR_SOLICIT: u8 = 135;
const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;

/// Answers an ARP request for one of the stack's addresses; returns whether it did.
pub fn answer_arp(
    payload: &[u8],
    is_ours: impl Fn(Ipv4Addr) -> bool,
    link: &LinkAddrs,
    out: &mut GuestFrames,
) -> bool {
    let Ok(packet) = ArpPacket::new_checked(payload) else {
        return false;
    };
    let Ok(ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    }) = ArpRepr::parse(&packet)
    else {
        return false;
    };
    // A probe (sender 0.0.0.0) or gratuitous announcement is never answered: the guest is
    // checking that nobody else has its address.
    if source_protocol_addr.is_unspecified()
        || source_protocol_addr == target_protocol_addr
        || !is_ours(target_protocol_addr)
    {
        return false;
    }
    let reply = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: link.ours,
        source_protocol_addr: target_protocol_addr,
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: source_protocol_addr,
    };
    out.push_with(ETH_HDR + reply.buffer_len(), |buf| {
        write_eth(buf, link.ours, source_hardware_addr, EthernetProtocol::Arp);
        reply.emit(&mut ArpPacket::new_unchecked(&mut buf[ETH_HDR..]));
    });
    true
}

/// Handles an ICMPv6 neighbour-discovery message from the guest; returns whether it was one.
pub fn answer_ndp(
    src: Ipv6Addr,
    icmp: &[u8],
    net: &Ipv6Net,
    restrict: bool,
    link: &LinkAddrs,
    out: &mut GuestFrames,
) -> bool {
    match icmp.first() {
        Some(&ICMPV6_ROUTER_SOLICIT) => {
            let dst = if src.is_unspecified() {
                Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)
            } else {
                src
            };
            push_router_advert(dst, net, restrict, link, out);
            true
        }
        Some(&ICMPV6_NEIGHBOR_SOLICIT) if icmp.len() >= 24 => {
            let mut target = [0u8; 16];
            target.copy_from_slice(&icmp[8..24]);
            let target = Ipv6Addr::from(target);
            let ours = target == net.host || target == net.dns || target == ROUTER_LINK_LOCAL;
            // Duplicate address detection (unspecified source) for our own addresses is
            // answered to all nodes, as RFC 4861 says; anything else is not ours to answer.
            if ours {
                let dst = if src.is_unspecified() {
                    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)
                } else {
                    src
                };
                push_neighbor_advert(target, dst, !src.is_unspecified(), link, out);
            }
            true
        }
        Some(&(ICMPV6_ROUTER_ADVERT | ICMPV6_NEIGHBOR_ADVERT)) => true,
        _ => false,
    }
}

fn push_icmpv6(src: Ipv6Addr, dst: Ipv6Addr, body: &[u8], link: &LinkAddrs, out: &mut GuestFrames) {
    let len = body.len();
    if 40 + len > MTU {
        return;
    }
    out.push_ip(link, 40 + len, |ip| {
        let mut packet = smoltcp::wire::Ipv6Packet::new_unchecked(&mut *ip);
        let mut repr = ipv6_repr(src, dst, IpProtocol::Icmpv6, len);
        // Neighbour discovery requires hop limit 255 (RFC 4861 6.1).
        repr.hop_limit = 255;
        repr.emit(&mut packet);
        let payload = packet.payload_mut();
        payload.copy_from_slice(body);
        Icmpv6Packet::new_unchecked(payload).fill_checksum(&src, &dst);
    });
}

fn lladdr_option(kind: u8, mac: EthernetAddress) -> [u8; 8] {
    let mut opt = [kind, 1, 0, 0, 0, 0, 0, 0];
    opt[2..].copy_from_slice(mac.as_bytes());
    opt
}

/// Queues a router advertisement: the prefix for SLAAC, the MTU, and the name server.
pub fn push_router_advert(
    dst: Ipv6Addr,
    net: &Ipv6Net,
    restrict: bool,
    link: &LinkAddrs,
    out: &mut GuestFrames,
) {
    let mut body = Vec::with_capacity(88);
    body.extend_from_slice(&[ICMPV6_ROUTER_ADVERT, 0, 0, 0, 64, 0]);
    // restrict=on: on-link prefix only, no default route.
    let lifetime = if restrict { 0 } else { ROUTER_LIFETIME };
    body.extend_from_slice(&lifetime.to_be_bytes());
    body.extend_from_slice(&[0; 8]);
    body.extend_from_slice(&lladdr_option(1, link.ours));
    body.extend_from_slice(&[5, 1, 0, 0]);
    body.extend_from_slice(&(MTU as u32).to_be_bytes());
    body.extend_from_slice(&[3, 4, net.prefix_len, 0xc0]);
    body.extend_from_slice(&PREFIX_VALID.to_be_bytes());
    body.extend_from_slice(&PREFIX_PREFERRED.to_be_bytes());
    body.extend_from_slice(&[0; 4]);
    body.extend_from_slice(&net.prefix.octets());
    body.extend_from_slice(&[25, 3, 0, 0]);
    body.extend_from_slice(&DNS_LIFETIME.to_be_bytes());
    body.extend_from_slice(&net.dns.octets());
    push_icmpv6(ROUTER_LINK_LOCAL, dst, &body, link, out);
}

fn push_neighbor_advert(
    target: Ipv6Addr,
    dst: Ipv6Addr,
    solicited: bool,
    link: &LinkAddrs,
    out: &mut GuestFrames,
) {
    // Router, override, and solicited when answering a unicast-sourced solicitation.
    let flags = 0xa0 | if solicited { 0x40 } else { 0 };
    let mut body = Vec::with_capacity(32);
    body.extend_from_slice(&[ICMPV6_NEIGHBOR_ADVERT, 0, 0, 0, flags, 0, 0, 0]);
    body.extend_from_slice(&target.octets());
    body.extend_from_slice(&lladdr_option(2, link.ours));
    push_icmpv6(target, dst, &body, link, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{EthernetFrame, Icmpv6Repr, Ipv6Packet, NdiscRepr};

    fn net() -> Ipv6Net {
        Ipv6Net {
            prefix: "fec0::".parse().unwrap(),
            prefix_len: 64,
            host: "fec0::2".parse().unwrap(),
            dns: "fec0::3".parse().unwrap(),
        }
    }

    fn pop(out: &mut GuestFrames) -> Vec<u8> {
        out.pop_frame().unwrap()
    }

    #[test]
    fn arp_answers_only_our_addresses_and_never_probes() {
        let link = LinkAddrs::new(None);
        let mut out = GuestFrames::default();
        let guest_mac = EthernetAddress([0x52, 0x54, 0, 0, 0, 1]);
        let request = |sender: Ipv4Addr, target: Ipv4Addr| {
            let repr = ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                source_hardware_addr: guest_mac,
                source_protocol_addr: sender,
                target_hardware_addr: EthernetAddress([0; 6]),
                target_protocol_addr: target,
            };
            let mut buf = vec![0; repr.buffer_len()];
            repr.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
            buf
        };
        let ours = |a: Ipv4Addr| a == Ipv4Addr::new(10, 0, 2, 2);
        let guest = Ipv4Addr::new(10, 0, 2, 15);
        assert!(answer_arp(
            &request(guest, Ipv4Addr::new(10, 0, 2, 2)),
            ours,
            &link,
            &mut out
        ));
        let frame = pop(&mut out);
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(eth.dst_addr(), guest_mac);
        let reply = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        let ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            ..
        } = reply
        else {
            panic!()
        };
        assert_eq!(operation, ArpOperation::Reply);
        assert_eq!(source_hardware_addr, link.ours);
        assert!(!answer_arp(
            &request(guest, Ipv4Addr::new(10, 0, 2, 9)),
            ours,
            &link,
            &mut out
        ));
        assert!(!answer_arp(
            &request(Ipv4Addr::UNSPECIFIED, Ipv4Addr::new(10, 0, 2, 2)),
            ours,
            &link,
            &mut out
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn router_advert_parses_with_prefix_and_checksum() {
        let link = LinkAddrs::new(None);
        let mut out = GuestFrames::default();
        let guest: Ipv6Addr = "fe80::5054:ff:fe00:1".parse().unwrap();
        assert!(answer_ndp(
            guest,
            &[ICMPV6_ROUTER_SOLICIT, 0, 0, 0, 0, 0, 0, 0],
            &net(),
            false,
            &link,
            &mut out
        ));
        let frame = pop(&mut out);
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
        assert_eq!(ip.hop_limit(), 255);
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        let repr = Icmpv6Repr::parse(
            &ip.src_addr(),
            &ip.dst_addr(),
            &icmp,
            &smoltcp::phy::ChecksumCapabilities::default(),
        )
        .expect("valid checksum and layout");
        let Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
            router_lifetime,
            prefix_info,
            mtu,
            ..
        }) = repr
        else {
            panic!("not a router advertisement: {repr:?}")
        };
        assert_eq!(router_lifetime.secs(), 1800);
        assert_eq!(mtu, Some(1500));
        let prefix = prefix_info.unwrap();
        assert_eq!(prefix.prefix, "fec0::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(prefix.prefix_len, 64);
        // The RDNSS option carries the name server.
        assert_eq!(
            &icmp.payload()[icmp.payload().len() - 16..],
            &"fec0::3".parse::<Ipv6Addr>().unwrap().octets()
        );
    }

    #[test]
    fn neighbor_solicitations_for_our_addresses_only() {
        let link = LinkAddrs::new(None);
        let mut out = GuestFrames::default();
        let guest: Ipv6Addr = "fec0::5054:ff:fe00:1".parse().unwrap();
        let solicit = |target: Ipv6Addr| {
            let mut m = vec![ICMPV6_NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
            m.extend_from_slice(&target.octets());
            m
        };
        assert!(answer_ndp(
            guest,
            &solicit("fec0::2".parse().unwrap()),
            &net(),
            false,
            &link,
            &mut out
        ));
        assert_eq!(out.len(), 1);
        assert!(answer_ndp(
            guest,
            &solicit(guest),
            &net(),
            false,
            &link,
            &mut out
        ));
        assert_eq!(out.len(), 1, "the guest's own address is not ours");
    }
}
