//! TCP segments from `smoltcp` on their way to the guest. `smoltcp` is told the device segments,
//! so it hands over segments of up to 64 KiB with the MSS to cut them at. A guest that negotiated
//! checksum offload and TSO for the IP version takes them whole, as GSO frames with a partial
//! checksum (the pseudo-header sum); otherwise they are cut here into MSS-sized frames, each with
//! a partial checksum if the guest takes those, else a full one. Small segments only get their
//! checksum.

use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket};

use super::checksum;
use super::guest_frames::{GuestFrames, ETH_HDR, HDR_ROOM, MTU};
use crate::Offloads;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
const GSO_TCPV6: u8 = 4;
/// Where the checksum sits in a TCP header.
const TCP_CSUM_OFFSET: u16 = 16;

/// Where the parts of a TCP/IP frame are.
#[derive(Debug, Clone, Copy)]
struct Layout {
    v6: bool,
    src: IpAddress,
    dst: IpAddress,
    /// IP header length.
    ip_hdr: usize,
    /// TCP header plus payload.
    tcp_len: usize,
    /// TCP header length.
    tcp_hdr: usize,
}

impl Layout {
    fn of(frame: &[u8]) -> Option<Layout> {
        let ip = frame.get(ETH_HDR..)?;
        let (v6, src, dst, ip_hdr, tcp_len) = match ip.first()? >> 4 {
            4 => {
                let p = Ipv4Packet::new_checked(ip).ok()?;
                if p.next_header() != IpProtocol::Tcp {
                    return None;
                }
                let hl = usize::from(p.header_len());
                let total = usize::from(p.total_len());
                (
                    false,
                    p.src_addr().into(),
                    p.dst_addr().into(),
                    hl,
                    total.checked_sub(hl)?,
                )
            }
            6 => {
                let p = Ipv6Packet::new_checked(ip).ok()?;
                if p.next_header() != IpProtocol::Tcp {
                    return None;
                }
                (
                    true,
                    p.src_addr().into(),
                    p.dst_addr().into(),
                    40,
                    usize::from(p.payload_len()),
                )
            }
            _ => return None,
        };
        let tcp = TcpPacket::new_checked(ip.get(ip_hdr..ip_hdr + tcp_len)?).ok()?;
        Some(Layout {
            v6,
            src,
            dst,
            ip_hdr,
            tcp_len,
            tcp_hdr: usize::from(tcp.header_len()),
        })
    }

    fn tcp_range(&self) -> std::ops::Range<usize> {
        ETH_HDR + self.ip_hdr..ETH_HDR + self.ip_hdr + self.tcp_len
    }

    fn headers_len(&self) -> usize {
        ETH_HDR + self.ip_hdr + self.tcp_hdr
    }
}

/// A segment the guest cannot take whole: where to cut it.
#[derive(Debug, Clone, Copy)]
pub struct Cut {
    layout: Layout,
    mss: u16,
}

/// Finishes the TCP segment just queued. `mss` is what `smoltcp` asked the device to cut the
/// payload at (only given when the payload exceeds it).
pub fn finish_last(out: &mut GuestFrames, mss: Option<u16>) {
    let offloads = out.offloads;
    let cut = out
        .last_mut()
        .and_then(|(hdr, frame)| finish(hdr, frame, mss, offloads));
    if let Some(cut) = cut {
        segment(out, &cut.layout, usize::from(cut.mss));
    }
}

/// Finishes a TCP segment smoltcp wrote into `frame` (its virtio-net header `hdr` in front):
/// the MSS option of a SYN, the checksum (partial, or full for a guest without checksum
/// offload) and the GSO fields. Returns where to cut it if the guest cannot take it whole.
/// Anything but TCP is left alone (smoltcp wrote its checksum).
pub fn finish(
    hdr: &mut [u8],
    frame: &mut [u8],
    mss: Option<u16>,
    offloads: Offloads,
) -> Option<Cut> {
    let l = Layout::of(frame)?;
    clamp_mss(frame, &l);
    let payload = l.tcp_len - l.tcp_hdr;
    // smoltcp 0.14 passes no segmentation request with an IPv6 packet (its `dispatch_ip`
    // sets the metadata on the IPv4 path only): a segment over the link's MTU is cut at
    // the link's MSS, which is what smoltcp would have asked for from a guest on it.
    let mss = mss.or_else(|| {
        (l.v6 && l.ip_hdr + l.tcp_len > MTU).then(|| (MTU - l.ip_hdr - l.tcp_hdr) as u16)
    });
    let oversize = mss.filter(|&m| m > 0 && payload > usize::from(m));
    let tso = if l.v6 { offloads.tso6 } else { offloads.tso4 };
    match oversize {
        Some(mss) if !(tso && offloads.csum) => Some(Cut { layout: l, mss }),
        _ => {
            if offloads.csum {
                partial_checksum(hdr, frame, &l, oversize);
            } else {
                full_checksum(frame, &l);
            }
            None
        }
    }
}

/// Queues `frame`, a segment [`finish`] says must be cut, as its MSS-sized pieces.
pub fn queue_cut(out: &mut GuestFrames, frame: &[u8], cut: Cut) {
    out.push_zeroed(frame.len(), 0, |f| f.copy_from_slice(frame));
    segment(out, &cut.layout, usize::from(cut.mss));
}

/// Announces the link's MSS in a SYN: smoltcp computes it from the MTU it is told, which is a
/// whole segment (`tcp_device::SEGMENT_MAX`). Runs before the checksum is written.
fn clamp_mss(frame: &mut [u8], l: &Layout) {
    const KIND_END: u8 = 0;
    const KIND_NOP: u8 = 1;
    const KIND_MSS: u8 = 2;
    let link_mss = (MTU - l.ip_hdr - 20) as u16;
    let start = ETH_HDR + l.ip_hdr;
    let Some(tcp) = frame.get_mut(start..start + l.tcp_hdr) else {
        return;
    };
    if !TcpPacket::new_unchecked(&*tcp).syn() {
        return;
    }
    let mut i = 20;
    while i < tcp.len() {
        match tcp[i] {
            KIND_END => return,
            KIND_NOP => i += 1,
            kind => {
                let Some(&len) = tcp.get(i + 1) else { return };
                let len = usize::from(len);
                if len < 2 || i + len > tcp.len() {
                    return;
                }
                if kind == KIND_MSS && len == 4 {
                    let mss = u16::from_be_bytes([tcp[i + 2], tcp[i + 3]]);
                    tcp[i + 2..i + 4].copy_from_slice(&mss.min(link_mss).to_be_bytes());
                    return;
                }
                i += len;
            }
        }
    }
}

/// Cuts the last queued frame into frames of at most `mss` payload bytes.
fn segment(out: &mut GuestFrames, l: &Layout, mss: usize) {
    let Some(big) = out.take_last() else {
        return;
    };
    let frame = &big[HDR_ROOM..];
    let headers = &frame[..l.headers_len()];
    let payload = &frame[l.headers_len()..ETH_HDR + l.ip_hdr + l.tcp_len];
    let tcp = TcpPacket::new_unchecked(&frame[l.tcp_range()]);
    let seq = tcp.seq_number();
    let csum = out.offloads.csum;
    let chunks = payload.len().div_ceil(mss);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let last = i + 1 == chunks;
        let seg = Layout {
            tcp_len: l.tcp_hdr + chunk.len(),
            ..*l
        };
        // Every byte is written: headers, then the chunk.
        out.push_zeroed(headers.len() + chunk.len(), 0, |f| {
            f[..headers.len()].copy_from_slice(headers);
            f[headers.len()..].copy_from_slice(chunk);
            let ip = &mut f[ETH_HDR..];
            if seg.v6 {
                Ipv6Packet::new_unchecked(&mut *ip).set_payload_len(seg.tcp_len as u16);
            } else {
                let mut p = Ipv4Packet::new_unchecked(&mut *ip);
                p.set_total_len((seg.ip_hdr + seg.tcp_len) as u16);
                p.fill_checksum();
            }
            let mut t = TcpPacket::new_unchecked(&mut f[seg.tcp_range()]);
            t.set_seq_number(seq + i * mss);
            // FIN and PSH belong to the last piece only.
            if !last {
                t.set_fin(false);
                t.set_psh(false);
            }
        });
        if let Some((hdr, f)) = out.last_mut() {
            if csum {
                partial_checksum(hdr, f, &seg, None);
            } else {
                full_checksum(f, &seg);
            }
        }
    }
    out.recycle(big);
}

/// Leaves the checksum to the guest (the pseudo-header sum in the field, `NEEDS_CSUM` in the
/// header), as a GSO frame cut at `gso` if given.
fn partial_checksum(hdr: &mut [u8], frame: &mut [u8], l: &Layout, gso: Option<u16>) {
    let sum = pseudo_header_sum(&l.src, &l.dst, l.tcp_len as u32);
    TcpPacket::new_unchecked(&mut frame[l.tcp_range()]).set_checksum(sum);
    hdr[0] = F_NEEDS_CSUM;
    hdr[6..8].copy_from_slice(&((ETH_HDR + l.ip_hdr) as u16).to_le_bytes());
    hdr[8..10].copy_from_slice(&TCP_CSUM_OFFSET.to_le_bytes());
    if let Some(mss) = gso {
        hdr[1] = if l.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
        hdr[2..4].copy_from_slice(&(l.headers_len() as u16).to_le_bytes());
        hdr[4..6].copy_from_slice(&mss.to_le_bytes());
    }
}

fn full_checksum(frame: &mut [u8], l: &Layout) {
    let mut tcp = TcpPacket::new_unchecked(&mut frame[l.tcp_range()]);
    tcp.set_checksum(0);
    let sum = checksum::combine(
        pseudo_header_sum(&l.src, &l.dst, l.tcp_len as u32),
        checksum::sum(tcp.into_inner()),
    );
    TcpPacket::new_unchecked(&mut frame[l.tcp_range()]).set_checksum(!sum);
}

/// The RFC 1071 sum (not complemented) of the TCP pseudo-header: what a partial checksum holds.
fn pseudo_header_sum(src: &IpAddress, dst: &IpAddress, tcp_len: u32) -> u16 {
    let mut sum: u32 = u32::from(u8::from(IpProtocol::Tcp)) + (tcp_len >> 16) + (tcp_len & 0xffff);
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks_exact(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
    };
    for a in [src, dst] {
        match a {
            IpAddress::Ipv4(v4) => add(&v4.octets()),
            IpAddress::Ipv6(v6) => add(&v6.octets()),
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{TcpControl, TcpRepr, TcpSeqNumber};

    use super::*;
    use crate::user::guest_frames::{ipv4_repr, ipv6_repr, LinkAddrs};
    use crate::Offloads;

    const SEQ: i32 = 1000;

    /// Queues one TCP segment with `payload` bytes (FIN+PSH set) as smoltcp would.
    fn queue_segment(out: &mut GuestFrames, v6: bool, payload: &[u8]) {
        let tcp = TcpRepr {
            src_port: 80,
            dst_port: 40000,
            control: TcpControl::Fin,
            seq_number: TcpSeqNumber(SEQ),
            ack_number: Some(TcpSeqNumber(5)),
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let tcp_len = tcp.buffer_len();
        let caps = ChecksumCapabilities::ignored();
        let link = LinkAddrs::new(None);
        let ip_hdr = if v6 { 40 } else { 20 };
        out.push_ip(&link, ip_hdr + tcp_len, |ip| {
            let (src, dst): (IpAddress, IpAddress) = if v6 {
                let (s, d) = (Ipv6Addr::LOCALHOST, "fec0::15".parse().unwrap());
                ipv6_repr(s, d, IpProtocol::Tcp, tcp_len)
                    .emit(&mut Ipv6Packet::new_unchecked(&mut *ip));
                (s.into(), d.into())
            } else {
                let (s, d) = (Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 15));
                ipv4_repr(s, d, IpProtocol::Tcp, tcp_len).emit(
                    &mut Ipv4Packet::new_unchecked(&mut *ip),
                    &ChecksumCapabilities::default(),
                );
                (s.into(), d.into())
            };
            let mut packet = TcpPacket::new_unchecked(&mut ip[ip_hdr..]);
            tcp.emit(&mut packet, &src, &dst, &caps);
            packet.set_psh(true);
        });
    }

    /// Every queued frame with its header.
    fn drain(out: &mut GuestFrames) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut frames = Vec::new();
        while let Some(mut buf) = out.take_last() {
            let frame = buf.split_off(HDR_ROOM);
            frames.push((buf, frame));
        }
        frames.reverse();
        frames
    }

    /// What the guest does with a `NEEDS_CSUM` frame: sums from `csum_start` and stores the
    /// complement at `csum_offset`.
    fn complete_partial(hdr: &[u8], frame: &mut [u8]) {
        assert_eq!(hdr[0], F_NEEDS_CSUM);
        let start = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
        let offset = usize::from(u16::from_le_bytes([hdr[8], hdr[9]]));
        let mut sum: u32 = 0;
        for pair in frame[start..].chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        frame[start + offset..start + offset + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    }

    fn tcp_of(frame: &[u8]) -> (Layout, TcpPacket<&[u8]>) {
        let l = Layout::of(frame).expect("a TCP frame");
        (l, TcpPacket::new_checked(&frame[l.tcp_range()]).unwrap())
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn a_tso_guest_gets_one_gso_frame_with_a_partial_checksum() {
        for v6 in [false, true] {
            let mut out = GuestFrames::default();
            out.offloads = Offloads::ALL;
            let data = payload(4000);
            queue_segment(&mut out, v6, &data);
            finish_last(&mut out, Some(1460));
            let mut frames = drain(&mut out);
            assert_eq!(frames.len(), 1);
            let (hdr, frame) = &mut frames[0];
            let ip_hdr = if v6 { 40 } else { 20 };
            assert_eq!(hdr[1], if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
            assert_eq!(
                u16::from_le_bytes([hdr[2], hdr[3]]),
                (14 + ip_hdr + 20) as u16
            );
            assert_eq!(u16::from_le_bytes([hdr[4], hdr[5]]), 1460);
            complete_partial(hdr, frame);
            let (l, tcp) = tcp_of(frame);
            assert!(tcp.verify_checksum(&l.src, &l.dst), "v6={v6}");
            assert_eq!(tcp.payload(), &data[..]);
        }
    }

    #[test]
    fn without_tso_segments_are_cut_at_the_mss() {
        for csum in [true, false] {
            let mut out = GuestFrames::default();
            out.offloads = Offloads {
                csum,
                ..Offloads::default()
            };
            let data = payload(4000);
            queue_segment(&mut out, false, &data);
            finish_last(&mut out, Some(1460));
            let frames = drain(&mut out);
            assert_eq!(frames.len(), 3);
            let mut joined = Vec::new();
            for (i, (hdr, mut frame)) in frames.into_iter().enumerate() {
                assert_eq!(hdr[1], 0, "no GSO");
                if csum {
                    complete_partial(&hdr, &mut frame);
                } else {
                    assert_eq!(hdr[0], 0);
                }
                let ip = Ipv4Packet::new_checked(&frame[ETH_HDR..]).unwrap();
                assert!(ip.verify_checksum());
                assert_eq!(usize::from(ip.total_len()), frame.len() - ETH_HDR);
                let (l, tcp) = tcp_of(&frame);
                assert!(tcp.verify_checksum(&l.src, &l.dst));
                assert_eq!(tcp.seq_number(), TcpSeqNumber(SEQ) + i * 1460);
                let last = i == 2;
                assert_eq!((tcp.fin(), tcp.psh()), (last, last));
                assert!(tcp.payload().len() <= 1460);
                joined.extend_from_slice(tcp.payload());
            }
            assert_eq!(joined, data);
        }
    }

    #[test]
    fn small_segments_only_get_their_checksum() {
        let mut out = GuestFrames::default();
        queue_segment(&mut out, true, b"hello");
        finish_last(&mut out, None);
        let frames = drain(&mut out);
        assert_eq!(frames.len(), 1);
        let (hdr, frame) = &frames[0];
        assert_eq!(hdr[..10], [0; 10]);
        let (l, tcp) = tcp_of(frame);
        assert!(tcp.verify_checksum(&l.src, &l.dst));
    }
}
