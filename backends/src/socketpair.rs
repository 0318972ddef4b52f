//! A backend over a `SOCK_SEQPACKET` socket pair: one frame per packet, no privileges needed.
//!
//! For tests only: the test holds the other end of each queue's pair and reads/writes frames.
//! It declares `vnet_hdr` so that the device's header handling is exercised end to end.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::sys;
use crate::{Backend, BackendQueue, Capabilities, Error, Offloads};

/// Socket-pair backend: the daemon's ends, one per queue pair.
#[derive(Debug)]
pub struct SocketpairBackend {
    ends: Vec<OwnedFd>,
    vnet_hdr: bool,
}

impl SocketpairBackend {
    /// Creates `queue_pairs` pairs; returns the backend and the test's ends (blocking).
    pub fn new(queue_pairs: u16, vnet_hdr: bool) -> io::Result<(Self, Vec<OwnedFd>)> {
        let mut ends = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..queue_pairs {
            let (a, b) = seqpacket_pair()?;
            sys::set_nonblocking(a.as_raw_fd(), true)?;
            ends.push(a);
            peers.push(b);
        }
        Ok((SocketpairBackend { ends, vnet_hdr }, peers))
    }
}

fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair(2) writes.
    sys::check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both descriptors were just created by the kernel and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Backend for SocketpairBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            vnet_hdr: self.vnet_hdr,
            offloads: if self.vnet_hdr {
                Offloads::ALL
            } else {
                Offloads::default()
            },
            queue_pairs: self.ends.len() as u16,
        }
    }

    fn queue(&self, index: u16) -> Result<Box<dyn BackendQueue>, Error> {
        let fd = self
            .ends
            .get(usize::from(index))
            .ok_or(Error::NoSuchQueue(index))?;
        let fd = sys::dup_cloexec(fd.as_raw_fd()).map_err(|e| Error::io("dup", e))?;
        Ok(Box::new(SocketpairQueue { fd }))
    }

    fn describe(&self) -> String {
        format!("socketpair queues={}", self.ends.len())
    }
}

/// One queue's end of a socket pair.
#[derive(Debug)]
pub struct SocketpairQueue {
    fd: OwnedFd,
}

impl BackendQueue for SocketpairQueue {
    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn recv(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        sys::readv(self.fd.as_raw_fd(), bufs)
    }

    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        sys::writev(self.fd.as_raw_fd(), bufs)
    }

    fn set_offloads(&mut self, _offloads: Offloads) -> io::Result<()> {
        Ok(())
    }
}
