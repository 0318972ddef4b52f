//! The `smoltcp` device the TCP engine runs on: IP packets in (one at a time, straight from the
//! guest's frame), IP packets out (wrapped in Ethernet into the guest queue).

use std::num::{NonZeroU16, NonZeroUsize};

use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::guest_frames::{GuestFrames, LinkAddrs, MTU};
use super::tcp_offload;

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

/// The capabilities every [`TcpDevice`] reports.
pub fn capabilities() -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ip;
    caps.max_transmission_unit = MTU;
    // IPv4 segments of up to 64 KiB: `tcp_offload` hands them to the guest whole (TSO) or cuts
    // them. Not IPv6: smoltcp 0.14 drops an IPv6 packet over the MTU even when the device
    // segments (`dispatch_ip` checks the MTU before looking at the segmentation request), so
    // IPv6 segments stay at the MSS.
    caps.segmentation.tcpv4 = NonZeroUsize::new(usize::from(u16::MAX));
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
        let r = self.out.push_ip(self.link, len, f);
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
        capabilities()
    }
}
