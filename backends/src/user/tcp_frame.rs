//! TCP frames toward the guest, written by the stack's own TCP ([`super::tcp_flows`]).
//!
//! A data frame's headers are built on the stack's side and its payload lands in the guest's
//! receive buffers straight from the host socket (the caller's `fill`), so a frame costs one
//! copy of its payload. A guest that negotiated checksum offload gets a partial checksum (the
//! pseudo-header sum, `NEEDS_CSUM`), and with TSO for the IP version a frame of up to 64 KiB
//! cut at the guest's MSS by its driver (`GSO_TCPV4/6`); without checksum offload the checksum
//! is summed over the payload in the guest's buffers. Control segments (SYN, pure ACKs, FIN,
//! RST) are small and go through the guest queue with a full checksum.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};

use super::checksum;
use super::guest_frames::{write_eth_for_ip, GuestFrames, LinkAddrs, ETH_HDR};
use crate::Offloads;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
const GSO_TCPV6: u8 = 4;
/// Where the checksum sits in a TCP header.
const TCP_CSUM_OFFSET: usize = 16;
const TCP_HDR: usize = 20;
/// TCP options at most.
const OPTIONS_MAX: usize = 40;
/// Room for the virtio-net header and every header of a frame.
const HEADERS_ROOM: usize = crate::VNET_HDR_LEN + ETH_HDR + 40 + TCP_HDR + OPTIONS_MAX;
/// Guest buffers a frame's payload may span (a 64 KiB frame over mergeable 4 KiB buffers takes
/// 17, more where guest pages are not contiguous in the daemon's mapping).
const PAYLOAD_IOVECS: usize = 64;
/// The largest payload of one frame: its IP packet stays within 64 KiB.
pub const PAYLOAD_MAX: usize = u16::MAX as usize - 40 - TCP_HDR;

/// One segment's header fields, from the stack's end (`from`) to the guest (`to`).
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The window field as sent (already scaled down).
    pub window: u16,
    pub options: TcpOptions,
}

/// A segment's TCP options, each padded to four bytes with NOPs.
#[derive(Debug, Clone, Copy)]
pub struct TcpOptions {
    bytes: [u8; OPTIONS_MAX],
    len: usize,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            bytes: [0; OPTIONS_MAX],
            len: 0,
        }
    }
}

impl TcpOptions {
    fn push(&mut self, option: &[u8]) {
        let padded = option.len().next_multiple_of(4);
        if self.len + padded > OPTIONS_MAX {
            return;
        }
        let at = self.len + padded - option.len();
        self.bytes[self.len..at].fill(1);
        self.bytes[at..at + option.len()].copy_from_slice(option);
        self.len += padded;
    }

    /// Maximum segment size (SYNs).
    pub fn mss(&mut self, mss: u16) {
        let [a, b] = mss.to_be_bytes();
        self.push(&[2, 4, a, b]);
    }

    /// Window scale (SYNs).
    pub fn window_scale(&mut self, shift: u8) {
        self.push(&[3, 3, shift]);
    }

    /// SACK permitted (SYNs).
    pub fn sack_permitted(&mut self) {
        self.push(&[4, 2]);
    }

    /// Selective acknowledgement of the (start, end) blocks, at most four.
    pub fn sack(&mut self, blocks: &[(u32, u32)]) {
        let mut option = [0u8; 34];
        let count = blocks.len().min(4);
        option[0] = 5;
        option[1] = (2 + 8 * count) as u8;
        for (i, (start, end)) in blocks.iter().take(count).enumerate() {
            option[2 + 8 * i..6 + 8 * i].copy_from_slice(&start.to_be_bytes());
            option[6 + 8 * i..10 + 8 * i].copy_from_slice(&end.to_be_bytes());
        }
        self.push(&option[..2 + 8 * count]);
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

fn ip_header_len(addr: &SocketAddr) -> usize {
    if addr.is_ipv4() {
        20
    } else {
        40
    }
}

/// Writes the Ethernet, IP and TCP headers of `seg` carrying `payload` bytes into `buf`, with
/// the TCP checksum field holding the pseudo-header sum; returns their length.
fn write_headers(buf: &mut [u8], link: &LinkAddrs, seg: &Segment, payload: usize) -> usize {
    let options = seg.options.len;
    let tcp_len = TCP_HDR + options + payload;
    let ip = ETH_HDR;
    let tcp = match (seg.from.ip(), seg.to.ip()) {
        (IpAddr::V4(src), dst) => {
            let dst = match dst {
                IpAddr::V4(d) => d,
                IpAddr::V6(_) => std::net::Ipv4Addr::UNSPECIFIED,
            };
            let h = &mut buf[ip..ip + 20];
            h[0] = 0x45;
            h[1] = 0;
            h[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            h[4..6].fill(0);
            // Don't fragment; the identification is unused then.
            h[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
            h[8] = 64;
            h[9] = 6;
            h[12..16].copy_from_slice(&src.octets());
            h[16..20].copy_from_slice(&dst.octets());
            // Summed from the values, not read back from the bytes just stored.
            let words = [
                0x4500,
                20 + tcp_len as u32,
                0x4000,
                (64 << 8) | 6,
                u32::from(src) >> 16,
                u32::from(src) & 0xffff,
                u32::from(dst) >> 16,
                u32::from(dst) & 0xffff,
            ];
            let mut sum: u32 = words.iter().sum();
            while sum >> 16 != 0 {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
            ip + 20
        }
        (IpAddr::V6(src), dst) => {
            let dst = match dst {
                IpAddr::V6(d) => d,
                IpAddr::V4(d) => d.to_ipv6_mapped(),
            };
            let h = &mut buf[ip..ip + 40];
            h[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes());
            h[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            h[6] = 6;
            h[7] = 64;
            h[8..24].copy_from_slice(&src.octets());
            h[24..40].copy_from_slice(&dst.octets());
            ip + 40
        }
    };
    write_eth_for_ip(buf, link);
    let t = &mut buf[tcp..tcp + TCP_HDR + options];
    t[0..2].copy_from_slice(&seg.from.port().to_be_bytes());
    t[2..4].copy_from_slice(&seg.to.port().to_be_bytes());
    t[4..8].copy_from_slice(&seg.seq.to_be_bytes());
    t[8..12].copy_from_slice(&seg.ack.to_be_bytes());
    t[12] = (((TCP_HDR + options) / 4) as u8) << 4;
    t[13] = seg.flags;
    t[14..16].copy_from_slice(&seg.window.to_be_bytes());
    t[16..20].fill(0);
    t[TCP_HDR..].copy_from_slice(seg.options.as_bytes());
    let pseudo = pseudo_header_sum(&seg.from.ip(), &seg.to.ip(), tcp_len as u32);
    t[16..18].copy_from_slice(&pseudo.to_be_bytes());
    tcp + TCP_HDR + options
}

/// Queues a segment without payload (SYN, ACK, FIN, RST) with a full checksum.
pub fn push_control(out: &mut GuestFrames, link: &LinkAddrs, seg: &Segment) {
    let mut headers = [0u8; HEADERS_ROOM];
    let len = write_headers(&mut headers, link, seg, 0);
    let frame = &mut headers[..len];
    let tcp = ETH_HDR + ip_header_len(&seg.from);
    // The field holds the pseudo-header sum: summing the segment over it completes the sum.
    let sum = !checksum::sum(&frame[tcp..]);
    frame[tcp + TCP_CSUM_OFFSET..tcp + TCP_CSUM_OFFSET + 2].copy_from_slice(&sum.to_be_bytes());
    out.push_with(len, |buf| buf.copy_from_slice(frame));
}

/// How a data frame is laid out for the guest.
#[derive(Debug, Clone, Copy)]
pub struct DataShape {
    /// The guest's virtio-net header length.
    pub hdr_len: usize,
    /// What the guest takes: partial checksums, TSO.
    pub offloads: Offloads,
    /// The guest's MSS: frames with more payload are GSO frames.
    pub mss: u16,
    /// The most payload the frame may carry.
    pub max_payload: usize,
}

/// Writes a data segment into the guest's buffers `bufs`: its virtio-net header, headers, and
/// a payload of up to `shape.max_payload` bytes that `fill` writes into the iovecs it is given
/// (returning how many). Frames over the MSS are GSO frames (the caller only allows that for a
/// guest with TSO for the IP version). Returns the bytes written and the payload length; a
/// `fill` that fails or writes nothing leaves nothing written.
pub fn write_data(
    bufs: &mut [IoSliceMut<'_>],
    link: &LinkAddrs,
    seg: &Segment,
    shape: DataShape,
    fill: impl FnOnce(&mut [IoSliceMut<'_>]) -> io::Result<usize>,
) -> io::Result<(usize, usize)> {
    let DataShape {
        hdr_len,
        offloads,
        mss,
        max_payload,
    } = shape;
    let front = hdr_len + ETH_HDR + ip_header_len(&seg.from) + TCP_HDR + seg.options.len;
    let room: usize = bufs.iter().map(|b| b.len()).sum::<usize>();
    let max_payload = max_payload
        .min(room.saturating_sub(front))
        .min(PAYLOAD_MAX - seg.options.len);
    if max_payload == 0 {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    let n = {
        let mut parts: [IoSliceMut<'_>; PAYLOAD_IOVECS] =
            std::array::from_fn(|_| IoSliceMut::new(&mut []));
        let count = payload_iovecs(bufs, front, max_payload, &mut parts);
        fill(&mut parts[..count])?
    };
    if n == 0 {
        return Ok((0, 0));
    }
    let mut headers = [0u8; HEADERS_ROOM];
    let (vnet, rest) = headers.split_at_mut(hdr_len);
    let len = write_headers(rest, link, seg, n);
    let tcp_at = ETH_HDR + ip_header_len(&seg.from);
    vnet.fill(0);
    if let Some(num_buffers) = vnet.get_mut(10) {
        *num_buffers = 1;
    }
    if offloads.csum {
        vnet[0] = F_NEEDS_CSUM;
        vnet[6..8].copy_from_slice(&(tcp_at as u16).to_le_bytes());
        vnet[8..10].copy_from_slice(&(TCP_CSUM_OFFSET as u16).to_le_bytes());
        if n > usize::from(mss) {
            vnet[1] = if seg.from.is_ipv4() {
                GSO_TCPV4
            } else {
                GSO_TCPV6
            };
            vnet[2..4].copy_from_slice(&(len as u16).to_le_bytes());
            vnet[4..6].copy_from_slice(&mss.to_le_bytes());
        }
    } else {
        let payload_sum = sum_of(bufs, front, n);
        let sum = !checksum::combine(checksum::sum(&rest[tcp_at..len]), payload_sum);
        rest[tcp_at + TCP_CSUM_OFFSET..tcp_at + TCP_CSUM_OFFSET + 2]
            .copy_from_slice(&sum.to_be_bytes());
    }
    crate::copy_parts(&[&headers[..hdr_len + len]], bufs);
    Ok((front + n, n))
}

/// Fills `parts` with the spans of `bufs` from byte `skip` on, `len` bytes in all; returns how
/// many it used.
fn payload_iovecs<'a>(
    bufs: &'a mut [IoSliceMut<'_>],
    mut skip: usize,
    mut len: usize,
    parts: &mut [IoSliceMut<'a>],
) -> usize {
    let mut count = 0;
    for buf in bufs.iter_mut() {
        if len == 0 || count == parts.len() {
            break;
        }
        let buf: &'a mut [u8] = &mut buf[..];
        if skip >= buf.len() {
            skip -= buf.len();
            continue;
        }
        let take = (buf.len() - skip).min(len);
        parts[count] = IoSliceMut::new(&mut buf[skip..skip + take]);
        count += 1;
        skip = 0;
        len -= take;
    }
    count
}

/// The one's-complement sum of `len` bytes of `bufs` from byte `skip` on, as if they were one
/// slice starting at an even offset.
fn sum_of(bufs: &[IoSliceMut<'_>], skip: usize, len: usize) -> u16 {
    let mut total = 0u16;
    let mut odd = false;
    for span in crate::byte_spans(bufs, skip, len) {
        let s = checksum::sum(span);
        // A span starting at an odd offset has its bytes in the other halves of the words.
        total = checksum::combine(total, if odd { s.swap_bytes() } else { s });
        odd ^= span.len() % 2 == 1;
    }
    total
}

/// The RFC 1071 sum (not complemented) of the TCP pseudo-header: what a partial checksum holds.
fn pseudo_header_sum(src: &IpAddr, dst: &IpAddr, tcp_len: u32) -> u16 {
    let mut sum: u32 = 6 + (tcp_len >> 16) + (tcp_len & 0xffff);
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks_exact(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
    };
    for a in [src, dst] {
        match a {
            IpAddr::V4(v4) => add(&v4.octets()),
            IpAddr::V6(v6) => add(&v6.octets()),
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{Ipv4Packet, Ipv6Packet, TcpPacket};

    fn seg(v6: bool) -> Segment {
        let (from, to): (SocketAddr, SocketAddr) = if v6 {
            (
                "[fec0::2]:80".parse().unwrap(),
                "[fec0::15]:40000".parse().unwrap(),
            )
        } else {
            (
                "10.0.2.2:80".parse().unwrap(),
                "10.0.2.15:40000".parse().unwrap(),
            )
        };
        Segment {
            from,
            to,
            seq: 1000,
            ack: 5,
            flags: ACK | PSH,
            window: 1000,
            options: TcpOptions::default(),
        }
    }

    /// What the guest does with a `NEEDS_CSUM` frame: sums from `csum_start` and stores the
    /// complement at `csum_offset`.
    fn complete_partial(hdr: &[u8], frame: &mut [u8]) {
        assert_eq!(hdr[0], F_NEEDS_CSUM);
        let start = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
        let offset = usize::from(u16::from_le_bytes([hdr[8], hdr[9]]));
        let sum = !checksum::sum(&frame[start..]);
        frame[start + offset..start + offset + 2].copy_from_slice(&sum.to_be_bytes());
    }

    fn verify(frame: &[u8]) -> Vec<u8> {
        let (src, dst, tcp) = match frame[14] >> 4 {
            4 => {
                let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
                assert!(ip.verify_checksum());
                assert_eq!(usize::from(ip.total_len()), frame.len() - 14);
                (ip.src_addr().into(), ip.dst_addr().into(), ip.payload())
            }
            _ => {
                let ip = Ipv6Packet::new_checked(&frame[14..]).unwrap();
                assert_eq!(usize::from(ip.payload_len()), frame.len() - 54);
                (ip.src_addr().into(), ip.dst_addr().into(), ip.payload())
            }
        };
        let tcp = TcpPacket::new_checked(tcp).unwrap();
        assert!(tcp.verify_checksum(&src, &dst));
        tcp.payload().to_vec()
    }

    /// Gathers what `write_data` wrote over several buffers into one frame (header first).
    fn joined(bufs: &[Vec<u8>], n: usize) -> Vec<u8> {
        bufs.concat()[..n].to_vec()
    }

    #[test]
    fn data_frames_carry_full_or_partial_checksums_and_gso_fields_over_split_buffers() {
        let payload: Vec<u8> = (0..4001).map(|i| (i * 7 % 251) as u8).collect();
        for v6 in [false, true] {
            for csum in [false, true] {
                // A first buffer that ends inside the headers, an odd-sized one, then room.
                let mut bufs = vec![vec![0u8; 40], vec![0u8; 1001], vec![0u8; 8000]];
                let mut slices: Vec<IoSliceMut<'_>> =
                    bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                let offloads = Offloads {
                    csum,
                    tso4: csum,
                    tso6: csum,
                    ..Offloads::default()
                };
                let mss = if csum { 1440 } else { 5000 };
                let shape = DataShape {
                    hdr_len: 12,
                    offloads,
                    mss,
                    max_payload: usize::MAX,
                };
                let (n, len) = write_data(
                    &mut slices,
                    &LinkAddrs::new(None),
                    &seg(v6),
                    shape,
                    |parts| Ok(crate::copy_parts(&[&payload], parts)),
                )
                .unwrap();
                drop(slices);
                assert_eq!(len, payload.len());
                let mut all = joined(&bufs, n);
                let (hdr, frame) = all.split_at_mut(12);
                if csum {
                    assert_eq!(hdr[1], if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
                    assert_eq!(u16::from_le_bytes([hdr[4], hdr[5]]), 1440);
                    complete_partial(hdr, frame);
                } else {
                    assert_eq!(hdr[..2], [0, 0]);
                }
                assert_eq!(verify(frame), payload, "v6={v6} csum={csum}");
            }
        }
    }

    #[test]
    fn control_segments_have_options_and_a_full_checksum() {
        for v6 in [false, true] {
            let mut out = GuestFrames::default();
            let mut s = seg(v6);
            s.flags = SYN | ACK;
            s.options.mss(1460);
            s.options.window_scale(7);
            push_control(&mut out, &LinkAddrs::new(None), &s);
            let frame = out.pop_frame().unwrap();
            verify(&frame);
            let tcp_at = 14 + if v6 { 40 } else { 20 };
            assert_eq!(frame[tcp_at + 12] >> 4, 7, "28-byte header");
            assert_eq!(
                &frame[tcp_at + 20..tcp_at + 28],
                &[2, 4, 5, 180, 1, 3, 3, 7]
            );
        }
    }
}
