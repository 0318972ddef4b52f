//! Host-side network backends for vhost-user-netd.
//!
//! Nothing in this crate knows about virtio, vhost-user or guest memory: the compiler keeps the
//! boundary because none of those crates is a dependency. A backend moves Ethernet frames given
//! as iovec lists and declares what it can do ([`Capabilities`]); the device in the daemon adapts
//! the virtio side to that.
//!
//! Module map:
//! - [`options`]: QEMU-style option text/JSON into typed accessors, with QEMU's error wording.
//! - [`netdev`]: the `Netdev` union (one typed config per `-netdev` type) and the backend factory.
//! - [`tap`]: the Linux tap backend (`-netdev tap`).
//! - [`af_xdp`]: AF_XDP sockets on a host interface's queues (`-netdev af-xdp`, feature `af-xdp`).
//! - [`stream`]: QEMU's length-prefixed stream format over unix/TCP (`-netdev stream`).
//! - [`dgram`]: one frame per UDP/unix datagram, unicast or multicast (`-netdev dgram`).
//! - [`l2tpv3`]: RFC 3931 Ethernet pseudowires over IP or UDP (`-netdev l2tpv3`).
//! - [`datagram`]: the batched datagram datapath the two above share.
//! - [`vde`]: a port of a VDE switch (`-netdev vde`), its plug protocol done here.
//! - [`user`]: the user-mode network stack (`-netdev user`), the daemon's default.
//! - [`pcap`]: pcap capture files, written by a thread of their own (never stalling frames).
//! - [`socket_netdev`]: QEMU's legacy `-netdev socket`, served by the stream and dgram backends.
//! - [`socket_address`]: QEMU's `SocketAddress` for the socket netdevs.
//! - [`socketpair`]: a test-only backend over a `SOCK_SEQPACKET` pair, for unprivileged tests.
//! - [`launcher`]: who starts tap scripts, helpers and `guestfwd` commands (a launcher process
//!   forked before the sandbox).
//! - [`sys`]: thin checked wrappers over the few raw system calls the backends need.

pub mod af_xdp;
pub mod batching;
pub mod datagram;
pub mod dgram;
pub mod fd_source;
pub mod host_env;
pub mod hub;
pub mod l2tpv3;
pub mod launcher;
pub mod netdev;
pub mod options;
pub mod pcap;
pub mod socket_address;
pub mod socket_netdev;
pub mod socketpair;
pub mod stream;
pub mod sys;
pub mod tap;
pub mod user;
pub mod vde;

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::RawFd;

pub use batching::Batching;
pub use fd_source::{FdSource, InheritedFds};
pub use host_env::HostEnv;
pub use netdev::{NetdevConfig, NetdevKind};
pub use options::{OptionError, OptionSource, Opts};

/// Size of the virtio-net header that crosses a backend with `vnet_hdr` (virtio_net_hdr_v1,
/// i.e. with `num_buffers`, as `TUNSETVNETHDRSZ` is set to).
pub const VNET_HDR_LEN: usize = 12;

/// Largest Ethernet frame a backend passes, GSO included (without the vnet header).
pub const MAX_FRAME_LEN: usize = 65_550;

/// Segmentation/checksum offloads, the same set on both directions of a tap
/// (`TUNSETOFFLOAD` flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Partial checksums may cross (`TUN_F_CSUM`); the other offloads need this.
    pub csum: bool,
    /// TCPv4 segmentation offload.
    pub tso4: bool,
    /// TCPv6 segmentation offload.
    pub tso6: bool,
    /// TSO with the ECN bit.
    pub ecn: bool,
    /// UDP fragmentation offload.
    pub ufo: bool,
}

impl Offloads {
    /// Every offload.
    pub const ALL: Offloads = Offloads {
        csum: true,
        tso4: true,
        tso6: true,
        ecn: true,
        ufo: true,
    };

    /// Whether any segmentation offload is on (frames may be up to 64 KiB).
    pub fn any_gso(&self) -> bool {
        self.tso4 || self.tso6 || self.ufo
    }

    /// The offloads present in both sets.
    pub fn intersect(self, other: Offloads) -> Offloads {
        Offloads {
            csum: self.csum && other.csum,
            tso4: self.tso4 && other.tso4,
            tso6: self.tso6 && other.tso6,
            ecn: self.ecn && other.ecn,
            ufo: self.ufo && other.ufo,
        }
    }
}

/// What a backend declares it can do; the device offers virtio features from this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Frames cross with a [`VNET_HDR_LEN`]-byte virtio-net header in front of them.
    pub vnet_hdr: bool,
    /// Offloads the backend can accept and produce (only meaningful with `vnet_hdr`).
    pub offloads: Offloads,
    /// How many queue pairs the backend can serve in parallel.
    pub queue_pairs: u16,
}

impl Capabilities {
    /// One queue pair of plain Ethernet frames, no vnet header, no offloads: the socket netdevs.
    pub const PLAIN_ONE_QUEUE: Capabilities = Capabilities {
        vnet_hdr: false,
        offloads: Offloads {
            csum: false,
            tso4: false,
            tso6: false,
            ecn: false,
            ufo: false,
        },
        queue_pairs: 1,
    };
}

/// Refuses any queue pair but the first (backends with one queue pair).
pub(crate) fn only_queue_zero(index: u16) -> Result<(), Error> {
    if index == 0 {
        Ok(())
    } else {
        Err(Error::NoSuchQueue(index))
    }
}

/// The pieces of `bufs` (taken as one run of bytes) that hold `len` bytes from byte `skip` on,
/// in order; fewer bytes if the buffers end first.
pub(crate) fn byte_spans<B: std::ops::Deref<Target = [u8]>>(
    bufs: &[B],
    skip: usize,
    len: usize,
) -> impl Iterator<Item = &[u8]> {
    let mut skip = skip;
    let mut left = len;
    bufs.iter().filter_map(move |buf| {
        let buf: &[u8] = buf;
        if left == 0 {
            return None;
        }
        if skip >= buf.len() {
            skip -= buf.len();
            return None;
        }
        let take = (buf.len() - skip).min(left);
        let span = &buf[skip..skip + take];
        skip = 0;
        left -= take;
        Some(span)
    })
}

/// Copies one frame into the caller's buffers; returns the bytes copied (all of them unless the
/// buffers are too small).
pub(crate) fn copy_frame(frame: &[u8], bufs: &mut [IoSliceMut<'_>]) -> usize {
    copy_parts(&[frame], bufs)
}

/// Copies the concatenation of `parts` into the caller's buffers; returns the bytes copied.
pub(crate) fn copy_parts(parts: &[&[u8]], bufs: &mut [IoSliceMut<'_>]) -> usize {
    let mut copied = 0;
    let mut bufs = bufs.iter_mut();
    let mut current: Option<&mut [u8]> = None;
    for mut part in parts.iter().copied() {
        while !part.is_empty() {
            let buf = match current.take() {
                Some(b) if !b.is_empty() => b,
                _ => match bufs.next() {
                    Some(b) => &mut b[..],
                    None => return copied,
                },
            };
            let n = buf.len().min(part.len());
            let (dst, rest) = buf.split_at_mut(n);
            dst.copy_from_slice(&part[..n]);
            part = &part[n..];
            copied += n;
            current = Some(rest);
        }
    }
    copied
}

/// How an in-process backend (the hub) gets frames to a queue's guest on the sender's thread
/// instead of waking the queue's worker.
#[derive(Clone)]
pub struct RxWaker {
    /// Delivers what the queue's backend holds right now, if the queue's worker is not busy;
    /// false (the caller then wakes the worker) if it is, or if the queue is gone.
    pub wake: std::sync::Arc<WakeFn>,
    /// Writes the given frames straight into the guest's buffers (one copy, sender's memory to
    /// the guest's), if the worker is not busy and nothing older waits in the backend; returns
    /// how many it took from the front (delivered, or dropped by the guest's filter). The caller
    /// queues the rest.
    pub deliver: std::sync::Arc<DeliverFn>,
}

/// [`RxWaker::wake`].
pub type WakeFn = dyn Fn() -> bool + Send + Sync;
/// [`RxWaker::deliver`]: frames as the sender's segments, each without a virtio-net header.
pub type DeliverFn = dyn Fn(&[&[IoSlice<'_>]]) -> usize + Send + Sync;

impl std::fmt::Debug for RxWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RxWaker")
    }
}

/// Copies the first `out.len()` bytes of a frame given as `bufs` (fewer if it is shorter).
pub(crate) fn copy_prefix(bufs: &[IoSlice<'_>], out: &mut [u8]) -> usize {
    let mut n = 0;
    for b in bufs {
        let take = (out.len() - n).min(b.len());
        out[n..n + take].copy_from_slice(&b[..take]);
        n += take;
        if n == out.len() {
            break;
        }
    }
    n
}

/// `send` for queues whose real work is `send_batch`: a batch of one.
pub(crate) fn send_one(queue: &mut dyn BackendQueue, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    match queue.send_batch(&[bufs])? {
        0 => Err(io::Error::from(io::ErrorKind::WouldBlock)),
        _ => Ok(bufs.iter().map(|s| s.len()).sum()),
    }
}

/// Errors of the backends.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("netdev type '{0}' is not supported by vhost-user-netd yet")]
    Unsupported(String),
    #[error("queue pair {0} is out of range for this netdev")]
    NoSuchQueue(u16),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// A netdev: a host-side endpoint that hands out one [`BackendQueue`] per queue pair.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// What the backend can do.
    fn capabilities(&self) -> Capabilities;

    /// An independent handle on queue pair `index` (`0..capabilities().queue_pairs`). May be
    /// called again after a frontend reconnects.
    fn queue(&self, index: u16) -> Result<Box<dyn BackendQueue>, Error>;

    /// A short human description for logs and `info network`-like output.
    fn describe(&self) -> String;

    /// Releases host-side state that outlives the process otherwise (e.g. runs a tap's
    /// downscript, stops a stream's connection thread). Called once when the netdev goes away.
    fn shutdown(&self) {}

    /// Whether the backend can carry frames now. A stream netdev has no carrier until its peer
    /// connects; [`Backend::queue`] is only asked for queues while this is true.
    fn carrier(&self) -> bool {
        true
    }

    /// Registers who is told when the carrier comes or goes. A backend whose carrier never
    /// changes ignores this. If the carrier is up when the watch is installed, the watch is
    /// called with [`LinkEvent::Up`] at once.
    fn watch_link(&self, _watch: LinkWatch) {}

    /// Backend-specific counters (frames it refused and why), for the stats query.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// A carrier change a backend reports on its own.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkEvent {
    /// A peer is there; `peer` is its address as QEMU's `SocketAddress` JSON.
    Up { peer: serde_json::Value },
    /// The peer went away.
    Down,
}

/// Receives a backend's [`LinkEvent`]s, from the backend's own thread.
pub type LinkWatch = std::sync::Arc<dyn Fn(LinkEvent) + Send + Sync>;

/// One queue pair's path to the host. Non-blocking: calls return `ErrorKind::WouldBlock` when the
/// host side has nothing to read or no room to write; the device then waits on [`Self::fd`].
pub trait BackendQueue: Send + std::fmt::Debug {
    /// The descriptor to poll for readability (`recv`) and writability (`send`).
    fn fd(&self) -> RawFd;

    /// Receives one frame (with the vnet header first if `vnet_hdr`) into `bufs`; returns its
    /// length. The buffers must be large enough for the largest frame the backend may produce.
    fn recv(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize>;

    /// Sends one frame (with the vnet header first if `vnet_hdr`) gathered from `bufs`.
    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Sends several frames, each gathered from its own slice list, with as few system calls as
    /// the backend can manage. Returns how many frames, from the first, were taken; fewer than
    /// `frames.len()` means the next one would block or failed, which the caller learns by
    /// handing that frame to [`Self::send`] alone.
    fn send_batch(&mut self, frames: &[&[IoSlice<'_>]]) -> io::Result<usize> {
        for (taken, frame) in frames.iter().enumerate() {
            if let Err(e) = self.send(frame) {
                return if taken == 0 { Err(e) } else { Ok(taken) };
            }
        }
        Ok(frames.len())
    }

    /// Pushes out bytes the backend accepted but could not write yet (the rest of a frame a
    /// stream socket took only partly). `WouldBlock` means some are still waiting: the caller
    /// polls [`Self::fd`] for writability and calls again.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Whether frames were read from the host already and wait inside the backend, so that
    /// `recv` has something even though [`Self::fd`] may not be readable.
    fn pending_input(&self) -> bool {
        false
    }

    /// Switches the offloads the guest accepted. Backends without offloads ignore this.
    fn set_offloads(&mut self, offloads: Offloads) -> io::Result<()>;

    /// Gives an in-process backend (the hub) a way to deliver to this queue's guest on the
    /// sender's thread instead of waking the queue's worker. Others ignore it.
    fn set_rx_waker(&mut self, _waker: RxWaker) {}

    /// Sets the vnet header length the guest negotiated (10 for legacy guests, else 12).
    /// Only called on backends that declared `vnet_hdr`.
    fn set_vnet_hdr_len(&mut self, _len: usize) -> io::Result<()> {
        Ok(())
    }

    /// Whether `recv` returning `Ok(0)` or a hang-up means the host side is gone for good.
    fn is_closed(&self) -> bool {
        false
    }

    /// Whether the worker should keep looking at this queue's rings for a while after work
    /// (`--poll-us`) instead of waiting for the guest's kicks. False for a backend whose own
    /// work per frame dwarfs what polling saves (measured for the user-mode stack: about one
    /// kick per MB, for 8% of a core).
    fn polling_pays(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_spans_skip_and_stop_across_buffers() {
        let bufs: [&[u8]; 3] = [b"abc", b"", b"defgh"];
        let spans: Vec<&[u8]> = byte_spans(&bufs, 2, 4).collect();
        assert_eq!(spans, [&b"c"[..], &b"def"[..]]);
        assert_eq!(byte_spans(&bufs, 8, 9).count(), 0);
        assert_eq!(byte_spans(&bufs, 0, 100).map(<[u8]>::len).sum::<usize>(), 8);
    }

    #[test]
    fn copy_parts_spans_buffers_and_stops_when_they_are_full() {
        let (mut a, mut b) = ([0u8; 3], [0u8; 4]);
        let n = copy_parts(
            &[b"he", b"llo", b"", b"wor"],
            &mut [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b)],
        );
        assert_eq!(n, 7);
        assert_eq!((&a, &b), (b"hel", b"lowo"));
        let mut c = [0u8; 10];
        assert_eq!(
            copy_parts(&[b"ab", b"cd"], &mut [IoSliceMut::new(&mut c)]),
            4
        );
        assert_eq!(&c[..4], b"abcd");
    }
}
