//! The `smoltcp` device the TCP engine runs on: IP packets in (one at a time, straight from the
//! guest's frame), IP packets out: wrapped in Ethernet straight into the guest's receive buffer
//! when the device lends one that holds the frame, else into the guest queue.

use std::num::{NonZeroU16, NonZeroUsize};

use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::guest_frames::{write_eth_for_ip, GuestFrames, LinkAddrs, ETH_HDR};
use super::tcp_offload;
use crate::Offloads;

/// Bytes cleared in front of a TCP segment before smoltcp writes it: IP's header (up to 60)
/// and TCP's (up to 60). smoltcp writes every header byte it means and the whole payload.
const HEADERS_MAX: usize = 60 + 60;

/// A device over one ingress packet (or none) and the guest queue.
pub struct TcpDevice<'a> {
    pub ingress: Option<&'a [u8]>,
    pub out: &'a mut GuestFrames,
    pub link: &'a LinkAddrs,
    /// The guest's next receive buffer, for the first frame smoltcp sends (its virtio-net
    /// header, then the frame), if the frame fits in it.
    pub direct: Option<&'a mut [u8]>,
    /// The bytes written there (header included), once a frame went there.
    pub written: Option<usize>,
}

impl<'a> TcpDevice<'a> {
    /// A device writing into the guest queue only.
    pub fn new(ingress: Option<&'a [u8]>, out: &'a mut GuestFrames, link: &'a LinkAddrs) -> Self {
        TcpDevice {
            ingress,
            out,
            link,
            direct: None,
            written: None,
        }
    }
}

impl std::fmt::Debug for TcpDevice<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpDevice")
            .field("ingress", &self.ingress.map(<[u8]>::len))
            .field("queued", &self.out.len())
            .finish()
    }
}

/// The largest IP packet smoltcp is told the device takes: one TCP segment of up to 64 KiB,
/// which `tcp_offload` hands to the guest whole (TSO) or cuts at the MSS. smoltcp 0.14 drops an
/// IPv6 packet over the MTU even when the device segments it (`dispatch_ip` checks the MTU
/// before the segmentation request), so the MTU it sees is this size, not the link's; the MSS
/// it announces in its SYNs is clamped back to the link's by `tcp_offload`.
pub const SEGMENT_MAX: usize = u16::MAX as usize;

/// The capabilities of a [`TcpDevice`] toward a guest that accepts `offloads`. smoltcp hands
/// over segments of up to 64 KiB (with the MSS to cut them at) only for an IP version the guest
/// takes as TSO frames; for the others it writes MSS-sized segments itself, straight into their
/// frames, instead of `tcp_offload` cutting a large one with a second copy.
pub fn capabilities(offloads: Offloads) -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ip;
    caps.max_transmission_unit = SEGMENT_MAX;
    let gso = |tso: bool| {
        (tso && offloads.csum)
            .then(|| NonZeroUsize::new(SEGMENT_MAX))
            .flatten()
    };
    caps.segmentation.tcpv4 = gso(offloads.tso4);
    caps.segmentation.tcpv6 = gso(offloads.tso6);
    // Guest memory does not corrupt frames: checksums are written, not verified. TCP's are
    // written by `tcp_offload` (partial when the guest offloads them).
    let mut checksum = ChecksumCapabilities::default();
    checksum.ipv4 = Checksum::Tx;
    checksum.tcp = Checksum::None;
    checksum.udp = Checksum::Tx;
    checksum.icmpv4 = Checksum::Tx;
    checksum.icmpv6 = Checksum::Tx;
    caps.checksum = checksum;
    caps
}

#[derive(Debug)]
pub struct Ingress<'a>(&'a [u8]);

impl smoltcp::phy::RxToken for Ingress<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

#[derive(Debug)]
pub struct Egress<'a> {
    out: &'a mut GuestFrames,
    link: &'a LinkAddrs,
    /// The segment size `smoltcp` asked for, when the payload exceeds it.
    mss: Option<u16>,
    /// The guest's buffer, and where to say how much went there.
    direct: Option<(&'a mut [u8], &'a mut Option<usize>)>,
}

impl Egress<'_> {
    /// Writes the frame straight into the guest's buffer `buf` if it fits (`None` if not):
    /// the one copy of its payload, from smoltcp's buffer into guest memory.
    fn write_to_guest<R, F: FnOnce(&mut [u8]) -> R>(
        &mut self,
        buf: &mut [u8],
        len: usize,
        f: F,
    ) -> Result<(R, usize), F> {
        let hdr_len = self.out.header_len();
        let total = hdr_len + ETH_HDR + len;
        let Some(target) = buf.get_mut(..total) else {
            return Err(f);
        };
        let (hdr, frame) = target.split_at_mut(hdr_len);
        hdr.fill(0);
        if let Some(num_buffers) = hdr.get_mut(10) {
            // One buffer unless the device merges (it rewrites the field then).
            *num_buffers = 1;
        }
        let clear = (ETH_HDR + HEADERS_MAX).min(frame.len());
        frame[..clear].fill(0);
        let r = f(&mut frame[ETH_HDR..]);
        write_eth_for_ip(frame, self.link);
        match tcp_offload::finish(hdr, frame, self.mss, self.out.offloads) {
            None => Ok((r, total)),
            Some(cut) => {
                // A guest without TSO got a segment smoltcp meant to be cut: the pieces go
                // through the queue (the buffer is written over when one is taken).
                tcp_offload::queue_cut(self.out, frame, cut);
                Ok((r, 0))
            }
        }
    }
}

impl smoltcp::phy::TxToken for Egress<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(mut self, len: usize, f: F) -> R {
        let f = match self.direct.take() {
            Some((buf, written)) => match self.write_to_guest(buf, len, f) {
                Ok((r, n)) => {
                    *written = (n > 0).then_some(n);
                    return r;
                }
                Err(f) => f,
            },
            None => f,
        };
        let r = self.out.push_ip_zeroed(self.link, len, HEADERS_MAX, f);
        tcp_offload::finish_last(self.out, self.mss);
        r
    }

    fn set_meta(&mut self, meta: smoltcp::phy::PacketMeta) {
        self.mss = meta.segmentation_offload_size.map(NonZeroU16::get);
    }
}

impl Device for TcpDevice<'_> {
    type RxToken<'b>
        = Ingress<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = Egress<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.ingress.take()?;
        Some((
            Ingress(packet),
            Egress {
                out: self.out,
                link: self.link,
                mss: None,
                direct: None,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        let direct = self.direct.take();
        // A full queue holds smoltcp back; it retries on the next poll.
        if direct.is_none() && self.out.is_full() {
            return None;
        }
        Some(Egress {
            out: self.out,
            link: self.link,
            mss: None,
            direct: direct.map(|buf| (buf, &mut self.written)),
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        capabilities(self.out.offloads)
    }
}
