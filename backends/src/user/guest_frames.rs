//! Frames on their way to the guest: a bounded queue of reused buffers, and the builders for
//! the replies the stack writes itself (ARP, DHCP, DNS and UDP payloads, ICMP).

use std::collections::VecDeque;
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;

use crate::Offloads;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, UdpPacket, UdpRepr,
};

/// Ethernet header length.
pub const ETH_HDR: usize = 14;
/// The guest-facing IP MTU (TCP segments beyond it go out as GSO frames or are cut to it).
pub const MTU: usize = 1500;
/// Room in front of every queued frame for its virtio-net header.
pub const HDR_ROOM: usize = crate::VNET_HDR_LEN;
/// Frames queued for the guest before the stack stops reading host sockets.
pub const QUEUE_HIGH_WATER: usize = 512;
/// Bytes queued for the guest before the stack stops reading host sockets (GSO frames are
/// large: 32 of 64 KiB).
const QUEUE_HIGH_WATER_BYTES: usize = 2 << 20;
/// Frames queued at most; beyond this the oldest is dropped (a guest that never takes its
/// frames cannot make the daemon grow).
const QUEUE_LIMIT: usize = 4 * QUEUE_HIGH_WATER;
/// Spare buffer capacity kept for reuse.
const FREE_BYTES_KEPT: usize = 4 << 20;

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
/// Each buffer is a [`HDR_ROOM`]-byte virtio-net header followed by the Ethernet frame.
#[derive(Debug)]
pub struct GuestFrames {
    queued: VecDeque<Vec<u8>>,
    queued_bytes: usize,
    free: Vec<Vec<u8>>,
    free_bytes: usize,
    overflowed: u64,
    /// The virtio-net header length the guest uses (10 or 12).
    header_len: usize,
    /// What the guest accepts: partial checksums, TSO.
    pub offloads: Offloads,
}

impl Default for GuestFrames {
    fn default() -> Self {
        GuestFrames {
            queued: VecDeque::new(),
            queued_bytes: 0,
            free: Vec::new(),
            free_bytes: 0,
            overflowed: 0,
            header_len: HDR_ROOM,
            offloads: Offloads::default(),
        }
    }
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
        self.queued.len() >= QUEUE_HIGH_WATER || self.queued_bytes >= QUEUE_HIGH_WATER_BYTES
    }

    /// Frames dropped because the queue was at its limit.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// The guest's virtio-net header length (10 without `VERSION_1`/`MRG_RXBUF`, else 12).
    pub fn set_header_len(&mut self, len: usize) {
        self.header_len = len.min(HDR_ROOM);
    }

    /// Appends a frame of `len` bytes written by `fill` (with an all-zero virtio-net header).
    pub fn push_with<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
        self.push_zeroed(len, len, fill)
    }

    /// As [`Self::push_with`], for a `fill` that writes every byte past the first `zeroed`
    /// (a TCP segment's payload): only those are cleared first, not a whole 64 KiB frame (a
    /// reused buffer holds an earlier frame for this same guest).
    pub fn push_zeroed<R>(
        &mut self,
        len: usize,
        zeroed: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        if self.queued.len() >= QUEUE_LIMIT {
            if let Some(oldest) = self.queued.pop_front() {
                self.queued_bytes -= oldest.len();
                self.recycle(oldest);
            }
            self.overflowed += 1;
        }
        let mut buf = match self.free.pop() {
            Some(b) => {
                self.free_bytes -= b.capacity();
                b
            }
            None => Vec::with_capacity(HDR_ROOM + ETH_HDR + MTU),
        };
        let total = HDR_ROOM + len;
        // Growing zero-fills only the new bytes; shrinking writes nothing.
        if buf.len() > total {
            buf.truncate(total);
        } else {
            buf.resize(total, 0);
        }
        buf[..HDR_ROOM + zeroed.min(len)].fill(0);
        // num_buffers: one buffer per frame unless the device merges (it rewrites the field).
        buf[10] = 1;
        let r = fill(&mut buf[HDR_ROOM..]);
        self.queued_bytes += buf.len();
        self.queued.push_back(buf);
        r
    }

    /// Returns a buffer for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.free_bytes + buf.capacity() <= FREE_BYTES_KEPT {
            self.free_bytes += buf.capacity();
            self.free.push(buf);
        }
    }

    /// Moves the oldest frame, behind the guest's virtio-net header, into `bufs`; returns the
    /// bytes written.
    pub fn pop_into(&mut self, bufs: &mut [IoSliceMut<'_>]) -> Option<usize> {
        let buf = self.queued.pop_front()?;
        self.queued_bytes -= buf.len();
        let n = crate::copy_parts(&[&buf[..self.header_len], &buf[HDR_ROOM..]], bufs);
        self.recycle(buf);
        Some(n)
    }

    /// The oldest frame without its header (for tests).
    #[cfg(test)]
    pub fn pop_frame(&mut self) -> Option<Vec<u8>> {
        let buf = self.queued.pop_front()?;
        self.queued_bytes -= buf.len();
        let frame = buf[HDR_ROOM..].to_vec();
        self.recycle(buf);
        Some(frame)
    }

    /// Appends an Ethernet frame around an IP packet of `ip_len` bytes written by `fill`.
    pub fn push_ip<R>(
        &mut self,
        link: &LinkAddrs,
        ip_len: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        self.push_ip_zeroed(link, ip_len, ip_len, fill)
    }

    /// As [`Self::push_ip`], clearing only the first `zeroed` bytes of the IP packet (see
    /// [`Self::push_zeroed`]).
    pub fn push_ip_zeroed<R>(
        &mut self,
        link: &LinkAddrs,
        ip_len: usize,
        zeroed: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        self.push_zeroed(ETH_HDR + ip_len, ETH_HDR + zeroed, |buf| {
            let r = fill(&mut buf[ETH_HDR..]);
            write_eth_for_ip(buf, link);
            r
        })
    }

    /// The guest's virtio-net header length.
    pub fn header_len(&self) -> usize {
        self.header_len
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

/// Writes the Ethernet header, from the stack to the guest, in front of the IP packet that
/// follows it in `buf`.
pub fn write_eth_for_ip(buf: &mut [u8], link: &LinkAddrs) {
    let ethertype = if buf.get(ETH_HDR).is_some_and(|b| b >> 4 == 6) {
        EthernetProtocol::Ipv6
    } else {
        EthernetProtocol::Ipv4
    };
    write_eth(buf, link.ours, link.guest, ethertype);
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
        let mut out = [0u8; 1526];
        let n = q.pop_into(&mut [IoSliceMut::new(&mut out)]).unwrap();
        assert_eq!(n, 12 + 14 + 20 + 8 + 5);
        assert_eq!(
            out[..12],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            "num_buffers 1"
        );
        let eth = EthernetFrame::new_checked(&out[12..n]).unwrap();
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
