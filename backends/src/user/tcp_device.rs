//! The `smoltcp` device the TCP engine runs on: IP packets in (one at a time, straight from the
//! guest's frame), IP packets out (wrapped in Ethernet into the guest queue).

use std::num::{NonZeroU16, NonZeroUsize};

use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::guest_frames::{GuestFrames, LinkAddrs};
use super::tcp_offload;
use crate::Offloads;

/// A device over one ingress packet (or none) and the guest queue.
pub struct TcpDevice<'a> {
    pub ingress: Option<&'a [u8]>,
    pub out: &'a mut GuestFrames,
    pub link: &'a LinkAddrs,
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
}

impl smoltcp::phy::TxToken for Egress<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // smoltcp writes every header byte it means and the whole payload: only the headers
        // (IP's up to 60 bytes and TCP's up to 60) are cleared first.
        let r = self.out.push_ip_zeroed(self.link, len, 60 + 60, f);
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
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        // A full queue holds smoltcp back; it retries on the next poll.
        (!self.out.is_full()).then_some(Egress {
            out: self.out,
            link: self.link,
            mss: None,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        capabilities(self.out.offloads)
    }
}
