//! A TCP flow's host socket seen as the two byte streams of the guest's connection.
//!
//! Toward the guest, bytes sent but not yet acknowledged must stay available for
//! retransmission. Where the kernel allows it (TCP with `SO_PEEK_OFF`, Linux 6.9 on) they stay
//! in the host socket itself: each send peeks the next bytes straight into the guest's buffer
//! (the one copy), an acknowledgement drops them (`MSG_TRUNC`, no copy), and a retransmission
//! moves the peek offset back. Elsewhere (older kernels, the Unix sockets of `guestfwd` commands)
//! the bytes are read into a ring of the flow's and sent from there, as a user-space stack does.
//!
//! From the guest, data is written straight from the guest's frame; what the host socket does not
//! take at once is kept in order in `staged` (the guest has been told it arrived) and written
//! when the socket has room.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::sys;

/// A peer this near (round trip) is served with a bounded receive buffer.
const NEAR_RTT: std::time::Duration = std::time::Duration::from_millis(1);
/// The receive buffer (as the kernel counts it, twice the payload it holds at most) of a flow
/// to a near peer.
pub const NEAR_RECEIVE_BUFFER: libc::c_int = 2 << 20;

/// Whether this kernel lets a socket's receive buffer be set to [`NEAR_RECEIVE_BUFFER`]
/// (`net.core.rmem_max` is at least half of it): tried on a socket of its own.
pub fn near_buffer_allowed() -> bool {
    let Ok(probe) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let fd = probe.as_raw_fd();
    sys::setsockopt_int(
        fd,
        libc::SOL_SOCKET,
        libc::SO_RCVBUF,
        NEAR_RECEIVE_BUFFER / 2,
    )
    .is_ok()
        && sys::receive_buffer(fd).is_ok_and(|b| b >= NEAR_RECEIVE_BUFFER as usize)
}

/// Pieces of guest data written in one call (a 64 KiB frame over 4 KiB pages is 17).
const WRITE_IOVECS: usize = 64;

/// Bytes peeked ahead for small frames at once.
const PREFETCH: usize = 64 << 10;

/// Where bytes sent toward the guest wait for its acknowledgement.
#[derive(Debug)]
enum Unacked {
    /// In the host socket, behind its peek offset. Small frames (a guest without TSO) are cut
    /// from `ahead`, bytes peeked past the ones in flight in one call (one system call per
    /// 64 KiB rather than per frame, for one copy more).
    InSocket { ahead: Prefetch },
    /// In a ring of ours.
    Ring(Ring),
}

/// The host end of one flow.
#[derive(Debug)]
pub struct HostStream {
    fd: OwnedFd,
    unacked: Unacked,
    /// Bytes sent toward the guest and not acknowledged (the peek offset, or the ring's sent part).
    in_flight: usize,
    /// The host sent end of stream and everything before it has been sent toward the guest.
    pub eof: bool,
    /// Guest data the host socket has not taken yet (`staged_from..` of it).
    staged: Vec<u8>,
    staged_from: usize,
    /// The guest's FIN is to be passed on once `staged` is written.
    shut_pending: bool,
    pub write_shut: bool,
}

impl HostStream {
    /// Wraps a connected (or connecting) nonblocking stream socket. Unacknowledged bytes stay
    /// in the kernel if it is TCP and takes `SO_PEEK_OFF`, unless `force_ring` asks for a ring
    /// whatever the kernel offers (for tests of both ways). `ring_size` is the flow's window:
    /// the ring's size, and the most bytes peeked ahead at once.
    pub fn new(fd: OwnedFd, ring_size: usize, force_ring: bool) -> HostStream {
        let tcp = sys::socket_protocol(fd.as_raw_fd()).is_ok_and(|p| p == libc::IPPROTO_TCP);
        let in_socket = !force_ring && tcp && sys::set_peek_offset(fd.as_raw_fd(), 0).is_ok();
        HostStream {
            fd,
            unacked: if in_socket {
                Unacked::InSocket {
                    ahead: Prefetch {
                        size: ring_size.min(PREFETCH),
                        ..Prefetch::default()
                    },
                }
            } else {
                Unacked::Ring(Ring::new(ring_size))
            },
            in_flight: 0,
            eof: false,
            staged: Vec::new(),
            staged_from: 0,
            shut_pending: false,
            write_shut: false,
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Bounds the host socket's receive buffer to [`NEAR_RECEIVE_BUFFER`] if its peer turned out
    /// to be near (a round trip of at most [`NEAR_RTT`]) and `may_bound` says the kernel lets
    /// it be that large.
    ///
    /// Bytes in flight toward the guest stay in the socket, so its queue is full whenever the
    /// host sends faster than the guest takes. The kernel's receive-buffer tuning then grows the
    /// buffer to its maximum (the guest's acknowledgements drop megabytes at a time), and a full
    /// queue is pruned: its packets are copied into fewer (`TCPRcvCollapsed`) or dropped and
    /// sent again (`TCPRcvQDrop`); measured on the loopback, 7–24 Gbit/s toward the guest from
    /// run to run. A near peer needs little buffer: 2 MiB holds what is in flight toward the
    /// guest and a round trip of data at 16 Gbit/s. A far one keeps the kernel's tuning, which
    /// its round trip needs, and rarely outruns the guest.
    pub fn bound_if_near(&mut self, may_bound: bool) {
        if !may_bound || !self.zero_copy() {
            return;
        }
        if sys::tcp_rtt(self.fd()).is_ok_and(|rtt| rtt <= NEAR_RTT) {
            let _ = sys::setsockopt_int(
                self.fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                NEAR_RECEIVE_BUFFER / 2,
            );
        }
    }

    /// Whether unacknowledged bytes stay in the kernel (no copy of ours).
    pub fn zero_copy(&self) -> bool {
        matches!(self.unacked, Unacked::InSocket { .. })
    }

    /// Copies the next bytes not yet sent toward the guest into `bufs` and counts them as in
    /// flight. `Ok(0)` with `eof` set is the host's end of stream; `WouldBlock` means nothing
    /// more for now.
    /// `small` frames are served from bytes peeked ahead.
    pub fn next_to_send(&mut self, bufs: &mut [IoSliceMut<'_>], small: bool) -> io::Result<usize> {
        let n = match &mut self.unacked {
            Unacked::InSocket { ahead } if small || !ahead.is_empty() => {
                if ahead.is_empty() {
                    ahead.fill(self.fd.as_raw_fd())?;
                }
                ahead.copy_out(bufs)
            }
            Unacked::InSocket { .. } => sys::peek(self.fd.as_raw_fd(), bufs)?,
            Unacked::Ring(ring) => {
                if ring.len == self.in_flight && !ring.eof {
                    ring.fill_from(self.fd.as_raw_fd())?;
                }
                let n = ring.copy_out(self.in_flight, bufs);
                if n == 0 && !ring.eof {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                n
            }
        };
        if n == 0 {
            self.eof = true;
        }
        self.in_flight += n;
        Ok(n)
    }

    /// The guest acknowledged the next `n` bytes: they are dropped. After a rewind the guest may
    /// acknowledge more than was sent again (what it had kept of the first sending); sending
    /// goes on after them. Returns true if this made room in a ring that was full: the host
    /// socket is to be read again, though no new readiness comes for bytes already in it.
    pub fn acknowledged(&mut self, n: usize) -> io::Result<bool> {
        let beyond = n > self.in_flight;
        let mut room_made = false;
        match &mut self.unacked {
            Unacked::InSocket { ahead } => {
                let mut left = n;
                while left > 0 {
                    match sys::discard(self.fd.as_raw_fd(), left)? {
                        0 => break,
                        k => left -= k,
                    }
                }
                if beyond {
                    ahead.clear();
                    sys::set_peek_offset(self.fd.as_raw_fd(), 0)?;
                }
            }
            Unacked::Ring(ring) => {
                room_made = ring.len == ring.buf.len() && n > 0;
                ring.consume(n);
            }
        }
        self.in_flight = self.in_flight.saturating_sub(n);
        Ok(room_made)
    }

    /// Sends everything in flight again from its start (the guest lost some of it).
    pub fn rewind(&mut self) -> io::Result<()> {
        if let Unacked::InSocket { ahead } = &mut self.unacked {
            ahead.clear();
            sys::set_peek_offset(self.fd.as_raw_fd(), 0)?;
        }
        self.in_flight = 0;
        // Found again once everything before it is sent again.
        self.eof = false;
        Ok(())
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Guest data bytes not yet taken by the host socket.
    pub fn staged(&self) -> usize {
        self.staged.len() - self.staged_from
    }

    /// Writes guest data (the bytes of `parts` past the first `skip`, straight from the guest's
    /// frame) to the host socket, keeping up to `limit` bytes of what it does not take; returns
    /// how many bytes were taken (written or kept). Fails only if the socket failed.
    pub fn write(&mut self, parts: &[&[u8]], skip: usize, limit: usize) -> io::Result<usize> {
        let mut iovecs: [IoSlice<'_>; WRITE_IOVECS] = [IoSlice::new(&[]); WRITE_IOVECS];
        let mut count = 0;
        // More pieces than one call takes: the rest is kept below.
        for (slot, span) in iovecs
            .iter_mut()
            .zip(crate::byte_spans(parts, skip, usize::MAX))
        {
            *slot = IoSlice::new(span);
            count += 1;
        }
        let total = parts
            .iter()
            .map(|p| p.len())
            .sum::<usize>()
            .saturating_sub(skip);
        let written = if self.staged() == 0 && total > 0 {
            match sys::send_vectored(self.fd.as_raw_fd(), &iovecs[..count]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            }
        } else {
            0
        };
        let kept = (total - written).min(limit);
        for span in crate::byte_spans(parts, skip + written, kept) {
            self.stage(span);
        }
        Ok(written + kept)
    }

    fn stage(&mut self, data: &[u8]) {
        if self.staged_from == self.staged.len() {
            self.staged.clear();
            self.staged_from = 0;
        }
        self.staged.extend_from_slice(data);
    }

    /// Writes what is staged, then passes on the guest's FIN if it came. Fails only if the
    /// socket failed.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.staged() > 0 {
            let pending = &self.staged[self.staged_from..];
            match sys::send_vectored(self.fd.as_raw_fd(), &[IoSlice::new(pending)]) {
                Ok(n) => self.staged_from += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if self.staged_from > 0 {
            self.staged.clear();
            self.staged_from = 0;
            if self.staged.capacity() > 64 << 10 {
                self.staged = Vec::new();
            }
        }
        if self.shut_pending && !self.write_shut {
            sys::shutdown_write(self.fd.as_raw_fd());
            self.write_shut = true;
        }
        Ok(())
    }

    /// The guest sent FIN: the host reads end of stream once everything before it is written.
    pub fn shut_write(&mut self) -> io::Result<()> {
        self.shut_pending = true;
        self.flush()
    }

    /// Makes the close send a reset (the flow was aborted).
    pub fn reset_on_close(&self) {
        sys::set_linger_reset(self.fd.as_raw_fd());
    }
}

/// Bytes peeked past those in flight, not sent yet: `buf[start..len]`.
#[derive(Debug, Default)]
struct Prefetch {
    /// Bytes peeked at once (at most the flow's window; allocated on first use).
    size: usize,
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Prefetch {
    fn is_empty(&self) -> bool {
        self.start == self.len
    }

    fn clear(&mut self) {
        self.start = 0;
        self.len = 0;
    }

    /// Peeks the next bytes (`Ok` with none at the end of stream).
    fn fill(&mut self, fd: RawFd) -> io::Result<()> {
        if self.buf.is_empty() {
            self.buf = vec![0; self.size.max(1)];
        }
        self.clear();
        self.len = sys::peek(fd, &mut [IoSliceMut::new(&mut self.buf)])?;
        Ok(())
    }

    fn copy_out(&mut self, bufs: &mut [IoSliceMut<'_>]) -> usize {
        let n = crate::copy_parts(&[&self.buf[self.start..self.len]], bufs);
        self.start += n;
        n
    }
}

/// A fixed ring of bytes read from the host: `len` bytes from `head`, of which the first
/// `in_flight` (tracked by the owner) were sent.
#[derive(Debug)]
struct Ring {
    buf: Box<[u8]>,
    head: usize,
    len: usize,
    /// The host's end of stream was read.
    eof: bool,
}

impl Ring {
    fn new(size: usize) -> Ring {
        Ring {
            buf: vec![0; size.max(1)].into_boxed_slice(),
            head: 0,
            len: 0,
            eof: false,
        }
    }

    /// The two spans of `count` bytes from logical position `from`.
    fn spans(&self, from: usize, count: usize) -> [(usize, usize); 2] {
        let cap = self.buf.len();
        let start = (self.head + from) % cap;
        let first = count.min(cap - start);
        [(start, first), (0, count - first)]
    }

    fn fill_from(&mut self, fd: RawFd) -> io::Result<()> {
        let free = self.buf.len() - self.len;
        if free == 0 {
            return Ok(());
        }
        let [(a, alen), (b, blen)] = self.spans(self.len, free);
        let (lo, hi) = self.buf.split_at_mut(a);
        let mut bufs = [
            IoSliceMut::new(&mut hi[..alen]),
            IoSliceMut::new(&mut lo[b..b + blen]),
        ];
        match sys::readv(fd, &mut bufs) {
            Ok(0) => self.eof = true,
            Ok(n) => self.len += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn copy_out(&self, from: usize, bufs: &mut [IoSliceMut<'_>]) -> usize {
        let count = self.len.saturating_sub(from);
        let [(a, alen), (b, blen)] = self.spans(from, count);
        crate::copy_parts(&[&self.buf[a..a + alen], &self.buf[b..b + blen]], bufs)
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.head = (self.head + n) % self.buf.len();
        self.len -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, OwnedFd) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, _) = l.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        (peer, OwnedFd::from(ours))
    }

    fn next(s: &mut HostStream, len: usize, small: bool) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        for _ in 0..100 {
            match s.next_to_send(&mut [IoSliceMut::new(&mut buf)], small) {
                Ok(n) => {
                    buf.truncate(n);
                    return buf;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("nothing to send");
    }

    /// Send, acknowledge part, lose the rest and send it again, then the end of stream: the
    /// same bytes whether they wait in the kernel or in the ring.
    #[test]
    fn bytes_in_flight_are_sent_again_after_a_rewind_and_dropped_once_acknowledged() {
        for (force_ring, small) in [(false, false), (false, true), (true, false)] {
            let (mut peer, fd) = pair();
            let mut s = HostStream::new(fd, 64, force_ring);
            if !force_ring {
                assert!(s.zero_copy(), "this kernel keeps TCP bytes for us");
            }
            peer.write_all(&(0u8..40).collect::<Vec<_>>()).unwrap();
            assert_eq!(next(&mut s, 10, small), (0..10).collect::<Vec<_>>());
            assert_eq!(next(&mut s, 10, small), (10..20).collect::<Vec<_>>());
            s.acknowledged(5).unwrap();
            assert_eq!(s.in_flight(), 15);
            s.rewind().unwrap();
            assert_eq!(next(&mut s, 10, small), (5..15).collect::<Vec<_>>());
            s.acknowledged(3).unwrap();
            assert_eq!(next(&mut s, 100, small), (15..40).collect::<Vec<_>>());
            s.acknowledged(32).unwrap();
            drop(peer);
            assert_eq!(next(&mut s, 10, small), Vec::<u8>::new());
            assert!(s.eof, "force_ring={force_ring} small={small}");
        }
    }

    /// A full ring says so when an acknowledgement makes room (the socket still holds bytes no
    /// new readiness will announce), and only then.
    #[test]
    fn an_acknowledgement_that_makes_room_in_a_full_ring_says_so() {
        let (mut peer, fd) = pair();
        let mut s = HostStream::new(fd, 64, true);
        peer.write_all(&[1u8; 100]).unwrap();
        assert_eq!(next(&mut s, 100, false).len(), 64);
        let mut buf = [0u8; 100];
        let full = s.next_to_send(&mut [IoSliceMut::new(&mut buf)], false);
        assert_eq!(full.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(s.acknowledged(10).unwrap(), "room in a full ring");
        assert!(!s.acknowledged(10).unwrap(), "it was not full any more");
        assert_eq!(
            next(&mut s, 100, false).len(),
            20,
            "the bytes the host still had"
        );
    }

    /// A write to a host peer that went away is an error for the flow, not SIGPIPE for the
    /// process: the daemon ignores SIGPIPE, but the backends crate is a library (its fuzz target
    /// was killed here).
    #[test]
    fn a_peer_that_went_away_is_an_error_even_where_sigpipe_kills() {
        let (peer, fd) = pair();
        let mut s = HostStream::new(fd, 64, false);
        drop(peer);
        // SAFETY: the child only resets a signal disposition, makes socket system calls through
        // `write` (which allocates nothing on this path: the data is written, never kept, as the
        // limit is 0) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: signal(2) with a valid signal and disposition; then _exit ends the child.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                let mut failed = false;
                for _ in 0..10 {
                    failed |= s.write(&[b"x"], 0, 0).is_err();
                    libc::usleep(10_000);
                }
                libc::_exit(if failed { 0 } else { 1 });
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above; `status` is a valid out-pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            !libc::WIFSIGNALED(status),
            "killed by signal {}",
            libc::WTERMSIG(status)
        );
        assert_eq!(libc::WEXITSTATUS(status), 0, "the write failed with EPIPE");
    }

    #[test]
    fn what_the_host_socket_does_not_take_is_staged_then_written_with_the_fin_after_it() {
        let (mut peer, fd) = pair();
        let mut s = HostStream::new(fd, 64, false);
        let chunk = vec![7u8; 1 << 20];
        // Far more than the socket buffers hold while the peer reads nothing.
        // In pieces, as a guest's frame spans its buffers, the first 100 bytes skipped.
        let (a, b) = chunk.split_at(1000);
        for _ in 0..16 {
            assert_eq!(
                s.write(&[a, b], 100, usize::MAX).unwrap(),
                chunk.len() - 100
            );
        }
        assert_eq!(
            s.write(&[a, b], 0, 10).unwrap(),
            10,
            "only what may be kept is taken"
        );
        assert!(s.staged() > 0);
        s.shut_write().unwrap();
        assert!(!s.write_shut, "the FIN waits behind staged data");
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).unwrap();
            all.len()
        });
        while s.staged() > 0 || !s.write_shut {
            s.flush().unwrap();
            std::thread::yield_now();
        }
        assert_eq!(reader.join().unwrap(), 16 * ((1 << 20) - 100) + 10);
    }
}
