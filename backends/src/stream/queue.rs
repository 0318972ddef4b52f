//! One stream connection's datapath: frames out of a byte stream into the guest's buffers, and a
//! whole tx batch into one `writev`.
//!
//! The framing state lives with the connection, not with a queue handle: a frontend that
//! reconnects gets a new handle on the same half-read stream and carries on where the last one
//! stopped.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use log::warn;

use super::framing::{prefix, RxFramer, TxPending};
use crate::batching::Batching;
use crate::{sys, BackendQueue, Offloads};

/// Most iovecs one `writev` takes (the kernel's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// A connected stream socket and its framing state.
#[derive(Debug)]
pub struct StreamIo {
    fd: OwnedFd,
    rx: RxFramer,
    tx: TxPending,
    /// Reused per batch: iovecs and the length prefixes they point at.
    iovecs: Vec<libc::iovec>,
    prefixes: Vec<[u8; 4]>,
    /// End of stream, a broken connection, or a peer that broke the framing.
    closed: bool,
}

// SAFETY: the raw iovecs are scratch space, filled and used within one `send_batch` call while
// the memory they point at is borrowed; between calls they are never dereferenced.
unsafe impl Send for StreamIo {}

impl StreamIo {
    /// Wraps a connected, non-blocking socket.
    pub fn new(fd: OwnedFd, batching: Batching) -> Self {
        StreamIo {
            fd,
            rx: RxFramer::new(batching),
            tx: TxPending::default(),
            iovecs: Vec::with_capacity(IOV_MAX),
            prefixes: Vec::with_capacity(64),
            closed: false,
        }
    }

    /// The socket.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn lost(&mut self, why: &dyn std::fmt::Display) {
        if !self.closed {
            warn!("stream peer: {why}; disconnecting");
            self.closed = true;
            sys::shutdown(self.fd.as_raw_fd());
        }
    }

    fn recv(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        loop {
            match self.rx.next_frame() {
                Ok(Some(range)) => return Ok(crate::copy_frame(&self.rx.bytes()[range], bufs)),
                Ok(None) => {}
                Err(e) => {
                    self.lost(&e);
                    return Ok(0);
                }
            }
            if self.closed {
                return Ok(0);
            }
            match self.rx.fill(self.fd.as_raw_fd()) {
                Ok(0) => {
                    self.closed = true;
                    return Ok(0);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) => {
                    self.lost(&e);
                    return Ok(0);
                }
            }
        }
    }

    fn send_batch(&mut self, frames: &[&[IoSlice<'_>]]) -> io::Result<usize> {
        if self.closed {
            return Err(io::Error::from(io::ErrorKind::NotConnected));
        }
        self.tx.flush(self.fd.as_raw_fd())?;
        self.prefixes.clear();
        self.prefixes.extend(
            frames
                .iter()
                .map(|f| prefix(f.iter().map(|s| s.len()).sum())),
        );
        self.iovecs.clear();
        let mut count = 0;
        for (frame, pre) in frames.iter().zip(&self.prefixes) {
            if self.iovecs.len() + 1 + frame.len() > IOV_MAX {
                break;
            }
            self.iovecs.push(libc::iovec {
                iov_base: pre.as_ptr() as *mut libc::c_void,
                iov_len: pre.len(),
            });
            for s in frame.iter() {
                self.iovecs.push(libc::iovec {
                    iov_base: s.as_ptr() as *mut libc::c_void,
                    iov_len: s.len(),
                });
            }
            count += 1;
        }
        if count == 0 {
            return Err(io::Error::other("frame has too many segments"));
        }
        // SAFETY: every iovec points into `self.prefixes` (not touched until the call returns)
        // or into a slice of `frames`, borrowed for this whole call.
        let written = match unsafe { sys::writev_raw(self.fd.as_raw_fd(), &self.iovecs) } {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
            Err(e) => {
                self.lost(&e);
                return Err(e);
            }
        };
        // Which frames went out whole, and the unsent rest of a frame cut short.
        let mut left = written;
        for (i, frame) in frames[..count].iter().enumerate() {
            let size = 4 + frame.iter().map(|s| s.len()).sum::<usize>();
            if left >= size {
                left -= size;
                continue;
            }
            if left == 0 {
                return Ok(i);
            }
            let pre = self.prefixes[i];
            let mut parts: Vec<&[u8]> = Vec::with_capacity(frame.len() + 1);
            parts.push(&pre);
            parts.extend(frame.iter().map(|s| &**s));
            self.tx.keep(&parts, left);
            return Ok(i + 1);
        }
        Ok(count)
    }
}

/// The queue handle the device holds: the shared connection.
#[derive(Debug)]
pub struct StreamQueue {
    io: Arc<Mutex<StreamIo>>,
    fd: RawFd,
}

impl StreamQueue {
    pub fn new(io: Arc<Mutex<StreamIo>>) -> Self {
        let fd = lock(&io).raw_fd();
        StreamQueue { io, fd }
    }

    fn io(&self) -> MutexGuard<'_, StreamIo> {
        lock(&self.io)
    }
}

/// Locks a connection's state (a panic elsewhere does not make it unusable).
pub fn lock(io: &Mutex<StreamIo>) -> MutexGuard<'_, StreamIo> {
    io.lock().unwrap_or_else(|p| p.into_inner())
}

impl BackendQueue for StreamQueue {
    fn fd(&self) -> RawFd {
        self.fd
    }

    fn recv(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        self.io().recv(bufs)
    }

    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        crate::send_one(self, bufs)
    }

    fn send_batch(&mut self, frames: &[&[IoSlice<'_>]]) -> io::Result<usize> {
        self.io().send_batch(frames)
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut io = self.io();
        let fd = io.raw_fd();
        io.tx.flush(fd)
    }

    fn set_offloads(&mut self, _offloads: Offloads) -> io::Result<()> {
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.io().closed
    }

    fn pending_input(&self) -> bool {
        let io = self.io();
        !io.closed && io.rx.has_frame()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn pair() -> (StreamQueue, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let io = Arc::new(Mutex::new(StreamIo::new(OwnedFd::from(a), Batching::ON)));
        (StreamQueue::new(io), b)
    }

    #[test]
    fn batch_goes_out_in_one_write_with_prefixes() {
        let (mut q, mut peer) = pair();
        let a = [1u8; 60];
        let b = [2u8; 100];
        let frames: [&[IoSlice<'_>]; 2] = [
            &[IoSlice::new(&a[..10]), IoSlice::new(&a[10..])],
            &[IoSlice::new(&b)],
        ];
        assert_eq!(q.send_batch(&frames).unwrap(), 2);
        let mut got = vec![0u8; 4 + 60 + 4 + 100];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got[..4], &60u32.to_be_bytes());
        assert_eq!(&got[64..68], &100u32.to_be_bytes());
        assert!(got[68..].iter().all(|&x| x == 2));
    }

    #[test]
    fn partial_write_keeps_the_tail_and_blocks_until_flushed() {
        let (mut q, mut peer) = pair();
        let big = vec![9u8; 60_000];
        let mut sent = 0;
        // Fill the socket buffer; the last accepted frame may be cut short.
        while let Ok(1) = q.send_batch(&[&[IoSlice::new(&big)]]) {
            sent += 1;
            if q.flush().is_err() {
                break;
            }
        }
        assert!(sent > 0);
        // The reader gets every accepted frame whole once we flush as it drains.
        let reader = std::thread::spawn(move || {
            let mut frames = 0;
            let mut len = [0u8; 4];
            while peer.read_exact(&mut len).is_ok() {
                let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                peer.read_exact(&mut body).unwrap();
                assert!(body.iter().all(|&x| x == 9));
                frames += 1;
            }
            frames
        });
        while let Err(e) = q.flush() {
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            sys::poll_one(&q.fd, libc::POLLOUT, 1000).unwrap();
        }
        sys::shutdown(q.fd);
        assert_eq!(reader.join().unwrap(), sent);
    }

    #[test]
    fn garbage_length_closes_without_allocating() {
        let (mut q, mut peer) = pair();
        peer.write_all(&[0x7f, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(q.recv(&mut [IoSliceMut::new(&mut buf)]).unwrap(), 0);
        assert!(q.is_closed());
        // The peer sees the connection end.
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).unwrap();
    }

    #[test]
    fn many_frames_per_read_are_handed_out_one_by_one() {
        let (mut q, mut peer) = pair();
        let mut wire = Vec::new();
        for i in 0..50u8 {
            wire.extend_from_slice(&64u32.to_be_bytes());
            wire.extend_from_slice(&[i; 64]);
        }
        peer.write_all(&wire).unwrap();
        let mut buf = [0u8; 2048];
        for i in 0..50u8 {
            let n = q.recv(&mut [IoSliceMut::new(&mut buf)]).unwrap();
            assert_eq!(n, 64);
            assert_eq!(buf[0], i);
            assert_eq!(q.pending_input(), i < 49);
        }
        let e = q.recv(&mut [IoSliceMut::new(&mut buf)]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
}
