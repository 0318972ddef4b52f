//! vhost-user framing over a unix stream socket: a 12-byte header, a bounded payload, and the
//! file descriptors that came with it (SCM_RIGHTS).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use vhost::vhost_user::message::MAX_MSG_SIZE;

/// Header flag: the message's version (must be 1).
const VERSION_MASK: u32 = 0x3;
const VERSION_1: u32 = 0x1;
/// Header flag: this is a reply.
pub const FLAG_REPLY: u32 = 0x4;
/// Header flag: the sender wants a REPLY_ACK.
pub const FLAG_NEED_REPLY: u32 = 0x8;

/// Header size on the wire.
pub const HEADER_LEN: usize = 12;

/// Why a connection must end.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frontend closed the connection")]
    Closed,
    #[error("message version {0:#x} is not 1")]
    BadVersion(u32),
    #[error("payload of {0} bytes exceeds the {MAX_MSG_SIZE}-byte limit")]
    Oversized(u32),
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

/// One message from the frontend.
#[derive(Debug, Default)]
pub struct Message {
    pub request: u32,
    pub flags: u32,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Message {
    /// Whether the frontend asked for a REPLY_ACK.
    pub fn need_reply(&self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }

    /// Takes the first descriptor, if any came.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        if self.fds.is_empty() {
            None
        } else {
            Some(self.fds.remove(0))
        }
    }
}

/// A vhost-user connection.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
}

impl Connection {
    pub fn new(stream: UnixStream) -> Self {
        Connection { stream }
    }

    /// Ends the connection for the frontend now, whoever else still holds a duplicate of the
    /// socket (a fault domain does).
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// The socket (to shut it down from elsewhere).
    pub fn socket(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.stream)
    }

    /// Receives one message; the payload is read whole.
    pub fn recv(&mut self) -> Result<Message, WireError> {
        let mut header = [0u8; HEADER_LEN];
        let fds = recv_with_fds(self.stream.as_raw_fd(), &mut header)?;
        let request = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let flags = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let size = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if flags & VERSION_MASK != VERSION_1 {
            return Err(WireError::BadVersion(flags & VERSION_MASK));
        }
        if size as usize > MAX_MSG_SIZE {
            return Err(WireError::Oversized(size));
        }
        let mut payload = vec![0u8; size as usize];
        self.stream
            .read_exact(&mut payload)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => WireError::Closed,
                _ => WireError::Io(e),
            })?;
        Ok(Message {
            request,
            flags,
            payload,
            fds,
        })
    }

    /// Sends a reply to `request` with `payload`.
    pub fn reply(&mut self, request: u32, payload: &[u8]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
        buf.extend_from_slice(&request.to_le_bytes());
        buf.extend_from_slice(&(VERSION_1 | FLAG_REPLY).to_le_bytes());
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(payload);
        self.stream.write_all(&buf)
    }
}

/// Reads exactly `buf.len()` bytes; descriptors arrive with the first read.
fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> Result<Vec<OwnedFd>, WireError> {
    let mut fds = Vec::new();
    let mut got = 0;
    while got < buf.len() {
        let n = vhost_user_netd_backends::sys::recv_with_fds(sock, &mut buf[got..], &mut fds)?;
        if n == 0 {
            return Err(WireError::Closed);
        }
        got += n;
    }
    Ok(fds)
}
