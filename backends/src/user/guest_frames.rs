//! Frames on their way to the guest: a bounded queue of reused buffers, and the builders for
//! the replies the stack writes itself (ARP, DHCP, DNS and UDP payloads, ICMP).

use std::collections::VecDeque;
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, UdpPacket, UdpRepr,
};

/// Ethernet header length.
pub const ETH_HDR: usize = 14;
/// The guest-facing IP MTU.
pub const MTU: usize = 1500;
/// Frames queued for the guest before the stack stops reading host sockets.
pub const QUEUE_HIGH_WATER: usize = 512;
/// Frames queued at most; beyond this the oldest is dropped (a guest that never takes its
/// frames cannot make the daemon grow).
const QUEUE_LIMIT: usize = 4 * QUEUE_HIGH_WATER;

/// Link-layer addresses of the virtual link.
#[derive(Debug, Clone, Copy)]
pub struct LinkAddrs {
    /// The stack's own MAC (gateway, DNS, every translated peer).
    pub ours: EthernetAddress,
    /// The guest's MAC, learned from its frames (broadcast until then).
    pub guest: EthernetAddress,
}

impl LinkAddrs {
    /// QEMU's slirp MAC: `52:55` followed by the gateway's IPv4 address.
    pub fn new(host: Option<Ipv4Addr>) -> LinkAddrs {
        let h = host.unwrap_or(Ipv4Addr::new(10, 0, 2, 2)).octets();
        LinkAddrs {
            ours: EthernetAddress([0x52, 0x55, h[0], h[1], h[2], h[3]]),
            guest: EthernetAddress::BROADCAST,
        }
    }
}

/// The queue of frames for the guest. Buffers are reused, so a steady flow allocates nothing.
#[derive(Debug, Default)]
pub struct GuestFrames {
    queued: VecDeque<Vec<u8>>,
    free: Vec<Vec<u8>>,
    overflowed: u64,
}

impl GuestFrames {
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Whether the guest is behind and the stack should stop producing.
    pub fn is_full(&self) -> bool {
        self.queued.len() >= QUEUE_HIGH_WATER
    }

    /// Frames dropped because the queue was at its limit.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// Appends a frame of `len` bytes written by `fill`.
    pub fn push_with<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
        if self.queued.len() >= QUEUE_LIMIT {
            if let Some(oldest) = self.queued.pop_front() {
                self.free.push(oldest);
            }
            self.overflowed += 1;
        }
        let mut buf = self
            .free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(ETH_HDR + MTU));
        buf.clear();
        buf.resize(len, 0);
        let r = fill(&mut buf);
        self.queued.push_back(buf);
        r
    }

    /// Moves the oldest frame into `bufs`; returns its length.
    pub fn pop_into(&mut self, bufs: &mut [IoSliceMut<'_>]) -> Option<usize> {
        let frame = self.queued.pop_front()?;
        let n = crate::copy_frame(&frame, bufs);
        if self.free.len() < QUEUE_HIGH_WATER {
            self.free.push(frame);
        }
        Some(n)
    }

    /// Appends an Ethernet frame around an IP packet of `ip_len` bytes written by `fill`.
    pub fn push_ip<R>(
        &mut self,
        link: &LinkAddrs,
        ip_len: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        self.push_with(ETH_HDR + ip_len, |buf| {
            let r = fill(&mut buf[ETH_HDR..]);
            let ethertype = if buf[ETH_HDR] >> 4 == 6 {
                EthernetProtocol::Ipv6
            } else {
                EthernetProtocol::Ipv4
            };
            write_eth(buf, link.ours, link.guest, ethertype);
            r
        })
    }

    /// Appends a UDP datagram from `src` to `dst` (same family). Returns false, queuing nothing,
    /// if the payload does not fit the MTU.
    pub fn push_udp(
        &mut self,
        link: &LinkAddrs,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
    ) -> bool {
        let udp = UdpRepr {
            src_port: src.port(),
            dst_port: dst.port(),
        };
        let udp_len = udp.header_len() + payload.len();
        let ip_header = match (src.ip(), dst.ip()) {
            (IpAddr::V4(_), IpAddr::V4(_)) => 20,
            (IpAddr::V6(_), IpAddr::V6(_)) => 40,
            _ => return false,
        };
        if ip_header + udp_len > MTU {
            return false;
        }
        let (s, d) = (IpAddress::from(src.ip()), IpAddress::from(dst.ip()));
        self.push_ip(link, ip_header + udp_len, |ip| {
            let caps = ChecksumCapabilities::default();
            let body = match (src.ip(), dst.ip()) {
                (IpAddr::V4(s4), IpAddr::V4(d4)) => {
                    let mut packet = Ipv4Packet::new_unchecked(&mut *ip);
                    ipv4_repr(s4, d4, IpProtocol::Udp, udp_len).emit(&mut packet, &caps);
                    &mut ip[20..]
                }
                (IpAddr::V6(s6), IpAddr::V6(d6)) => {
                    let mut packet = Ipv6Packet::new_unchecked(&mut *ip);
                    ipv6_repr(s6, d6, IpProtocol::Udp, udp_len).emit(&mut packet);
                    &mut ip[40..]
                }
                _ => return,
            };
            udp.emit(
                &mut UdpPacket::new_unchecked(body),
                &s,
                &d,
                payload.len(),
                |b| b.copy_from_slice(payload),
                &caps,
            );
        });
        true
    }
}

/// Writes an Ethernet header at the front of `buf`.
pub fn write_eth(
    buf: &mut [u8],
    src: EthernetAddress,
    dst: EthernetAddress,
    ethertype: EthernetProtocol,
) {
    let mut frame = EthernetFrame::new_unchecked(buf);
    EthernetRepr {
        src_addr: src,
        dst_addr: dst,
        ethertype,
    }
    .emit(&mut frame);
}

pub fn ipv4_repr(src: Ipv4Addr, dst: Ipv4Addr, protocol: IpProtocol, len: usize) -> Ipv4Repr {
    Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: protocol,
        payload_len: len,
        hop_limit: 64,
    }
}

pub fn ipv6_repr(src: Ipv6Addr, dst: Ipv6Addr, protocol: IpProtocol, len: usize) -> Ipv6Repr {
    Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: protocol,
        payload_len: len,
        hop_limit: 64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_frames_are_well_formed_and_buffers_reused() {
        let mut q = GuestFrames::default();
        let mut link = LinkAddrs::new(None);
        link.guest = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(link.ours, EthernetAddress([0x52, 0x55, 10, 0, 2, 2]));
        let src: SocketAddr = "10.0.2.3:53".parse().unwrap();
        let dst: SocketAddr = "10.0.2.15:40000".parse().unwrap();
        assert!(q.push_udp(&link, src, dst, b"hello"));
        assert!(!q.push_udp(&link, src, dst, &[0; 1473]));
        let mut out = [0u8; 1514];
        let n = q.pop_into(&mut [IoSliceMut::new(&mut out)]).unwrap();
        assert_eq!(n, 14 + 20 + 8 + 5);
        let eth = EthernetFrame::new_checked(&out[..n]).unwrap();
        assert_eq!(eth.dst_addr(), link.guest);
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        assert_eq!(udp.payload(), b"hello");
        assert_eq!(q.free.len(), 1);
        assert!(q.pop_into(&mut [IoSliceMut::new(&mut out)]).is_none());
    }
}
