//! The datapath shared by the datagram netdevs (`dgram`, `l2tpv3`): one frame per datagram,
//! many datagrams per system call (`recvmmsg` into a ring of buffers, `sendmmsg` of a whole tx
//! batch), with an optional encapsulation header in front of each frame.
//!
//! On UDP sockets a run of equal-sized datagrams in a batch goes out as one message with
//! `UDP_SEGMENT` (UDP GSO): the kernel takes it through the stack once and cuts it into the
//! datagrams at the end, so the per-datagram cost of the UDP/IP send path is paid once per run.
//! The wire sees exactly the datagrams it would without it. Where the kernel refuses (a path MTU
//! smaller than the datagrams, no checksum offload on the route) the queue stops using it.

use crate::batching::Batching;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::{sys, BackendQueue, Offloads};

/// Datagrams read per `recvmmsg`, and frames sent per `sendmmsg`.
pub const BATCH: usize = 32;
/// Largest datagram taken in (a UDP payload's maximum).
const MAX_DATAGRAM: usize = 65_535 + 512;
/// Largest encapsulation header.
pub const MAX_HEADER: usize = 512;
/// Most iovecs per sent frame (header included).
const MAX_IOV_PER_FRAME: usize = 64;
/// Most datagrams in one `UDP_SEGMENT` message (the kernel's `UDP_MAX_SEGMENTS` is 64 or more).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one `UDP_SEGMENT` message (a UDP payload's maximum).
const GSO_MAX_BYTES: usize = 65_507 - 40;
/// `SOL_UDP` / `UDP_SEGMENT`.
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;

/// What wraps each frame on the wire.
pub trait Encap: Send + std::fmt::Debug {
    /// Writes the header for the next frame sent into `out` and returns its length.
    fn tx_header(&mut self, out: &mut [u8; MAX_HEADER]) -> usize;

    /// Checks a received datagram's header; returns where the frame starts, or `None` to drop
    /// it (counted and logged by the implementation).
    fn rx_frame_start(&mut self, datagram: &[u8]) -> Option<usize>;
}

/// No encapsulation: the datagram is the frame.
#[derive(Debug, Default)]
pub struct Bare;

impl Encap for Bare {
    fn tx_header(&mut self, _out: &mut [u8; MAX_HEADER]) -> usize {
        0
    }

    fn rx_frame_start(&mut self, _datagram: &[u8]) -> Option<usize> {
        Some(0)
    }
}

/// Counters of a datagram netdev, shared by its queue handles.
#[derive(Debug, Default)]
pub struct DatagramCounters {
    /// Datagrams longer than a frame may be.
    pub truncated: AtomicU64,
    /// Messages sent with `UDP_SEGMENT` (each a run of equal-sized datagrams).
    pub gso_messages: AtomicU64,
}

impl DatagramCounters {
    /// The counters, named for the stats query.
    pub fn list(&self) -> Vec<(&'static str, u64)> {
        vec![
            (
                "rx-dropped-oversized",
                self.truncated.load(Ordering::Relaxed),
            ),
            (
                "tx-udp-gso-messages",
                self.gso_messages.load(Ordering::Relaxed),
            ),
        ]
    }
}

/// A socket address for `sendmmsg`'s `msg_name`.
#[derive(Clone, Copy)]
pub struct Destination {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Destination({} bytes)", self.len)
    }
}

impl Destination {
    /// An IPv4/IPv6 destination.
    pub fn inet(addr: std::net::SocketAddr) -> Self {
        let (storage, len) = sys::sockaddr_from(addr);
        Destination { storage, len }
    }

    /// A unix socket path.
    pub fn unix(path: &str) -> io::Result<Self> {
        let (storage, len) = sys::sockaddr_unix(path)?;
        Ok(Destination { storage, len })
    }
}

/// One queue's view of a datagram socket.
pub struct DatagramQueue<E: Encap> {
    fd: Arc<OwnedFd>,
    /// Where frames go; `None` for a connected socket.
    dest: Option<Destination>,
    encap: E,
    counters: Arc<DatagramCounters>,
    rx: RxRing,
    tx: TxScratch,
    /// Runs of equal-sized datagrams go out with `UDP_SEGMENT` (UDP sockets, until refused).
    udp_gso: bool,
    /// Frames per system call: up to a batch, or one (the benchmarks' reference).
    batching: Batching,
}

impl<E: Encap> std::fmt::Debug for DatagramQueue<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatagramQueue")
            .field("fd", &self.fd.as_raw_fd())
            .field("encap", &self.encap)
            .finish()
    }
}

/// Received datagrams not handed out yet.
struct RxRing {
    buffers: Vec<Box<[u8]>>,
    lengths: [usize; BATCH],
    truncated: [bool; BATCH],
    count: usize,
    next: usize,
}

/// Reused per `sendmmsg`.
struct TxScratch {
    headers: Vec<[u8; MAX_HEADER]>,
    iovecs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    /// One `UDP_SEGMENT` control message per `mmsghdr` (8-byte aligned).
    controls: Vec<[u64; 4]>,
}

// SAFETY: the raw pointers in the scratch vectors are filled and used within one call while the
// memory they point at is borrowed; between calls they are never dereferenced.
unsafe impl Send for TxScratch {}

impl<E: Encap> DatagramQueue<E> {
    /// A queue over `fd` (non-blocking), sending to `dest`.
    pub fn new(
        fd: Arc<OwnedFd>,
        dest: Option<Destination>,
        encap: E,
        counters: Arc<DatagramCounters>,
        batching: Batching,
    ) -> Self {
        let udp_gso = sys::socket_protocol(fd.as_raw_fd()).ok() == Some(libc::IPPROTO_UDP);
        DatagramQueue {
            udp_gso,
            batching,
            fd,
            dest,
            encap,
            counters,
            rx: RxRing {
                buffers: Vec::new(),
                lengths: [0; BATCH],
                truncated: [false; BATCH],
                count: 0,
                next: 0,
            },
            tx: TxScratch {
                headers: vec![[0u8; MAX_HEADER]; BATCH],
                iovecs: Vec::with_capacity(BATCH * 4),
                // SAFETY: mmsghdr is plain data; zero is a valid value for every field.
                msgs: vec![unsafe { std::mem::zeroed() }; BATCH],
                controls: vec![[0u64; 4]; BATCH],
            },
        }
    }

    /// Reads up to [`BATCH`] datagrams with one `recvmmsg`.
    fn refill(&mut self) -> io::Result<()> {
        if self.rx.buffers.is_empty() {
            self.rx.buffers = (0..BATCH)
                .map(|_| vec![0u8; MAX_DATAGRAM].into_boxed_slice())
                .collect();
        }
        let mut iovecs: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: mmsghdr is plain data; zero is a valid value for every field.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            iovecs[i] = libc::iovec {
                iov_base: self.rx.buffers[i].as_mut_ptr().cast(),
                iov_len: self.rx.buffers[i].len(),
            };
            msgs[i].msg_hdr.msg_iov = &mut iovecs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        let n = loop {
            // SAFETY: every message points at one iovec over a live buffer of ours; the arrays
            // outlive the call and the count matches them.
            let ret = unsafe {
                libc::recvmmsg(
                    self.fd.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    self.batching.limit(BATCH) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            match sys::check(ret) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other? as usize,
            }
        };
        for (i, msg) in msgs.iter().enumerate().take(n) {
            self.rx.lengths[i] = msg.msg_len as usize;
            self.rx.truncated[i] = msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        self.rx.count = n;
        self.rx.next = 0;
        Ok(())
    }
}

impl<E: Encap + 'static> BackendQueue for DatagramQueue<E> {
    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn recv(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        loop {
            if self.rx.next == self.rx.count {
                self.refill()?;
                if self.rx.count == 0 {
                    return Err(io::Error::from(io::ErrorKind::WouldBlock));
                }
            }
            let i = self.rx.next;
            self.rx.next += 1;
            if self.rx.truncated[i] {
                self.counters.truncated.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let datagram = &self.rx.buffers[i][..self.rx.lengths[i]];
            // A refused datagram is counted by kind in the encapsulation.
            let Some(start) = self.encap.rx_frame_start(datagram) else {
                continue;
            };
            let frame = &datagram[start..];
            if frame.is_empty() {
                continue;
            }
            return Ok(crate::copy_frame(frame, bufs));
        }
    }

    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        crate::send_one(self, bufs)
    }

    fn send_batch(&mut self, frames: &[&[IoSlice<'_>]]) -> io::Result<usize> {
        let frames = &frames[..frames.len().min(self.batching.limit(BATCH))];
        let batch = gather(&mut self.tx, &mut self.encap, frames)?;
        let messages = plan_messages(&batch.lens[..batch.count], self.udp_gso);
        let messages = &messages.list[..messages.count];
        address_messages(&mut self.tx, &batch, messages, self.dest.as_mut());
        match send_messages(self.fd.as_raw_fd(), &mut self.tx.msgs[..messages.len()]) {
            // The route cannot take UDP GSO (path MTU below the datagram size, no checksum
            // offload): send datagram by datagram from now on.
            Err(e)
                if messages.iter().any(|&(_, n)| n > 1)
                    && matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EIO)) =>
            {
                log::info!("UDP segmentation offload refused ({e}); sending datagrams one by one");
                self.udp_gso = false;
                self.send_batch(frames)
            }
            Err(e) => Err(e),
            Ok(m) => {
                let sent = &messages[..m];
                let runs = sent.iter().filter(|&&(_, n)| n > 1).count() as u64;
                if runs > 0 {
                    self.counters
                        .gso_messages
                        .fetch_add(runs, Ordering::Relaxed);
                }
                Ok(sent.iter().map(|&(_, n)| n).sum())
            }
        }
    }

    fn set_offloads(&mut self, _offloads: Offloads) -> io::Result<()> {
        Ok(())
    }

    fn pending_input(&self) -> bool {
        self.rx.next < self.rx.count
    }
}

/// Where each frame of a batch lies in the scratch iovecs, and its datagram length.
struct GatheredBatch {
    starts: [usize; BATCH],
    ends: [usize; BATCH],
    lens: [usize; BATCH],
    count: usize,
}

/// Puts each frame's header (from `encap`) and segments into `tx.iovecs`, up to the first frame
/// with too many segments.
fn gather<E: Encap>(
    tx: &mut TxScratch,
    encap: &mut E,
    frames: &[&[IoSlice<'_>]],
) -> io::Result<GatheredBatch> {
    tx.iovecs.clear();
    // Headers first: one per frame offered (a frame the kernel does not take now comes back in
    // a later batch with a new header; L2TPv3 receivers do not require consecutive counters).
    let mut header_lens = [0usize; BATCH];
    for (i, len) in header_lens.iter_mut().enumerate().take(frames.len()) {
        *len = encap.tx_header(&mut tx.headers[i]);
    }
    let mut batch = GatheredBatch {
        starts: [0; BATCH],
        ends: [0; BATCH],
        lens: [0; BATCH],
        count: 0,
    };
    for (i, frame) in frames.iter().enumerate() {
        if frame.len() + 1 > MAX_IOV_PER_FRAME {
            break;
        }
        batch.starts[i] = tx.iovecs.len();
        if header_lens[i] > 0 {
            tx.iovecs.push(libc::iovec {
                iov_base: tx.headers[i].as_mut_ptr().cast(),
                iov_len: header_lens[i],
            });
        }
        for s in frame.iter() {
            tx.iovecs.push(libc::iovec {
                iov_base: s.as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            });
        }
        batch.ends[i] = tx.iovecs.len();
        batch.lens[i] = tx.iovecs[batch.starts[i]..].iter().map(|v| v.iov_len).sum();
        batch.count += 1;
    }
    if batch.count == 0 {
        return Err(io::Error::other("frame has too many segments"));
    }
    Ok(batch)
}

/// The messages of a batch: (first frame, frames) each.
struct MessagePlan {
    list: [(usize, usize); BATCH],
    count: usize,
}

/// Groups datagrams of lengths `lens` into messages: with `udp_gso`, a run of equal lengths
/// within the kernel's limits is one `UDP_SEGMENT` message; else one datagram each.
fn plan_messages(lens: &[usize], udp_gso: bool) -> MessagePlan {
    let mut plan = MessagePlan {
        list: [(0, 0); BATCH],
        count: 0,
    };
    let mut i = 0;
    while i < lens.len() {
        let mut n = 1;
        if udp_gso {
            while i + n < lens.len()
                && lens[i + n] == lens[i]
                && n < GSO_MAX_SEGMENTS
                && (n + 1) * lens[i] <= GSO_MAX_BYTES
            {
                n += 1;
            }
        }
        plan.list[plan.count] = (i, n);
        plan.count += 1;
        i += n;
    }
    plan
}

/// Points each message header at its iovecs, the destination and, for a run, a `UDP_SEGMENT`
/// control message. The iovec vector is complete: only now are pointers into it taken.
fn address_messages(
    tx: &mut TxScratch,
    batch: &GatheredBatch,
    messages: &[(usize, usize)],
    mut dest: Option<&mut Destination>,
) {
    for (m, &(first, n)) in messages.iter().enumerate() {
        let (from, to) = (batch.starts[first], batch.ends[first + n - 1]);
        let hdr = &mut tx.msgs[m].msg_hdr;
        hdr.msg_iov = tx.iovecs[from..to].as_mut_ptr();
        hdr.msg_iovlen = to - from;
        match dest.as_deref_mut() {
            Some(d) => {
                hdr.msg_name = (&mut d.storage as *mut libc::sockaddr_storage).cast();
                hdr.msg_namelen = d.len;
            }
            None => {
                hdr.msg_name = std::ptr::null_mut();
                hdr.msg_namelen = 0;
            }
        }
        if n > 1 {
            let control = &mut tx.controls[m];
            // SAFETY: the buffer is 32 bytes, 8-byte aligned, and holds one cmsghdr with a u16
            // payload (CMSG_SPACE(2) = 24 on 64-bit Linux); the pointers stay inside it.
            unsafe {
                let cmsg = control.as_mut_ptr().cast::<libc::cmsghdr>();
                (*cmsg).cmsg_level = SOL_UDP;
                (*cmsg).cmsg_type = UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(2) as usize;
                libc::CMSG_DATA(cmsg)
                    .cast::<u16>()
                    .write_unaligned(batch.lens[first] as u16);
                hdr.msg_control = cmsg.cast();
                hdr.msg_controllen = libc::CMSG_SPACE(2) as usize;
            }
        } else {
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
        }
    }
}

/// `sendmmsg(2)` without waiting; returns how many messages went. No buffer space counts as
/// full, as QEMU treats it.
fn send_messages(fd: RawFd, msgs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    loop {
        // SAFETY: each message points at iovecs over our header buffers or the caller's
        // borrowed slices, at our destination address and at our control buffer; all live for
        // the call.
        let ret = unsafe {
            libc::sendmmsg(
                fd,
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        match sys::check(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                return Err(io::Error::from(io::ErrorKind::WouldBlock))
            }
            other => return other.map(|n| n as usize),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::OwnedFd;

    use super::*;

    #[test]
    fn runs_of_equal_lengths_become_one_message_within_the_kernels_limits() {
        let plan = |lens: &[usize], gso| {
            let p = plan_messages(lens, gso);
            p.list[..p.count].to_vec()
        };
        assert_eq!(
            plan(&[100, 100, 100, 60, 100], true),
            vec![(0, 3), (3, 1), (4, 1)]
        );
        assert_eq!(plan(&[100, 100], false), vec![(0, 1), (1, 1)]);
        assert_eq!(plan(&[], true), vec![]);
        let many = vec![10; GSO_MAX_SEGMENTS + 1];
        assert_eq!(plan(&many, true)[0], (0, GSO_MAX_SEGMENTS.min(many.len())));
        let big = GSO_MAX_BYTES / 2 + 1;
        assert_eq!(
            plan(&[big, big], true),
            vec![(0, 1), (1, 1)],
            "two would pass 64 KiB"
        );
    }

    /// A 3-byte header with a running number, to see headers land on the right datagrams.
    #[derive(Debug, Default)]
    struct Numbered(u8);

    impl Encap for Numbered {
        fn tx_header(&mut self, out: &mut [u8; MAX_HEADER]) -> usize {
            self.0 += 1;
            out[..3].copy_from_slice(&[0xee, 0xee, self.0]);
            3
        }

        fn rx_frame_start(&mut self, _datagram: &[u8]) -> Option<usize> {
            Some(3)
        }
    }

    #[test]
    fn runs_of_equal_datagrams_keep_their_boundaries_and_order() {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let ours = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let dest = Destination::inet(peer.local_addr().unwrap());
        let fd = Arc::new(OwnedFd::from(ours));
        let counters = Arc::new(DatagramCounters::default());
        let mut q = DatagramQueue::new(
            fd,
            Some(dest),
            Numbered::default(),
            counters.clone(),
            Batching::ON,
        );
        // Two runs of equal sizes with a different one between; frames in two pieces each.
        let sizes = [100usize, 100, 100, 100, 60, 100, 100];
        let frames: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![i as u8; n])
            .collect();
        let slices: Vec<[IoSlice<'_>; 2]> = frames
            .iter()
            .map(|f| [IoSlice::new(&f[..10]), IoSlice::new(&f[10..])])
            .collect();
        let batch: Vec<&[IoSlice<'_>]> = slices.iter().map(|s| &s[..]).collect();
        assert_eq!(q.send_batch(&batch).unwrap(), sizes.len());
        // Two runs (4 × 100 and 2 × 100) went as UDP_SEGMENT messages; the 60 went alone.
        assert_eq!(counters.gso_messages.load(Ordering::Relaxed), 2);
        let mut buf = [0u8; 2048];
        for (i, f) in frames.iter().enumerate() {
            let n = peer.recv(&mut buf).unwrap();
            assert_eq!(n, 3 + f.len(), "datagram {i}");
            assert_eq!(
                buf[..3],
                [0xee, 0xee, i as u8 + 1],
                "header of datagram {i}"
            );
            assert_eq!(&buf[3..n], &f[..], "body of datagram {i}");
        }
    }
}
