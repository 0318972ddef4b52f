//! Raw vhost-user messages, with descriptors attached as a hostile frontend would send them
//! (what the `vhost` crate's `Frontend` would never send), and a memfd helper for them.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Header flags: version 1, and "reply wanted".
pub const V1: u32 = 1;
pub const NEED_REPLY: u32 = 8;

/// Request codes used by the tests.
pub const GET_FEATURES: u32 = 1;
pub const SET_FEATURES: u32 = 2;
pub const SET_MEM_TABLE: u32 = 5;
pub const SET_LOG_BASE: u32 = 6;
pub const SET_VRING_CALL: u32 = 13;
pub const GET_PROTOCOL_FEATURES: u32 = 15;
pub const SET_PROTOCOL_FEATURES: u32 = 16;

/// Protocol features: REPLY_ACK and LOG_SHMFD.
pub const PF_REPLY_ACK: u64 = 1 << 3;
pub const PF_LOG_SHMFD: u64 = 1 << 1;

/// Sends `bytes` on the socket `fd` with `fds` attached (SCM_RIGHTS).
pub fn send_with_fds(fd: RawFd, bytes: &[u8], fds: &[RawFd]) {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut control = [0u64; 16];
    let data_len = std::mem::size_of_val(fds) as u32;
    // SAFETY: msghdr is plain data.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if !fds.is_empty() {
        assert!(fds.len() <= 16, "at most 16 descriptors");
        hdr.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a constant computation.
        hdr.msg_controllen = unsafe { libc::CMSG_SPACE(data_len) } as usize;
        // SAFETY: the control buffer (128 bytes) holds one cmsg with up to 16 ints; the pointers
        // are into it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(data_len) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c).cast::<i32>(),
                fds.len(),
            );
        }
    }
    // SAFETY: hdr points at live buffers for the duration of the call.
    let sent = unsafe { libc::sendmsg(fd, &hdr, 0) };
    assert_eq!(
        sent as usize,
        bytes.len(),
        "sendmsg: {}",
        std::io::Error::last_os_error()
    );
}

/// A memfd of `size` bytes.
pub fn memfd(size: u64) -> File {
    // SAFETY: the name is a valid NUL-terminated string; memfd_create takes no other pointer.
    let fd = unsafe { libc::memfd_create(c"hostile".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: fd was just created and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).unwrap();
    file
}

/// A vhost-user connection driven message by message.
#[derive(Debug)]
pub struct RawFrontend {
    pub sock: UnixStream,
}

impl RawFrontend {
    /// Wraps a connected socket; replies are awaited at most 5 s.
    pub fn new(sock: UnixStream) -> Self {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        RawFrontend { sock }
    }

    /// Connects to a daemon's port.
    pub fn connect(path: &std::path::Path) -> Self {
        Self::new(UnixStream::connect(path).expect("connect to the port"))
    }

    /// Sends one message with `fds` attached.
    pub fn send(&mut self, request: u32, flags: u32, payload: &[u8], fds: &[RawFd]) {
        let mut m = Vec::new();
        m.extend_from_slice(&request.to_le_bytes());
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        m.extend_from_slice(payload);
        if fds.is_empty() {
            self.sock.write_all(&m).unwrap();
        } else {
            send_with_fds(self.sock.as_raw_fd(), &m, fds);
        }
    }

    /// The next reply: its request code and payload.
    pub fn reply(&mut self) -> (u32, Vec<u8>) {
        let mut h = [0u8; 12];
        self.sock.read_exact(&mut h).expect("reply header");
        let size = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
        let mut p = vec![0u8; size];
        self.sock.read_exact(&mut p).expect("reply payload");
        (u32::from_le_bytes([h[0], h[1], h[2], h[3]]), p)
    }

    /// The next reply as a u64 (a REPLY_ACK: 0 = done).
    pub fn reply_u64(&mut self) -> u64 {
        let (_, p) = self.reply();
        u64::from_le_bytes(p[..8].try_into().expect("u64 reply"))
    }

    /// Sends a request that wants an ack and returns it.
    pub fn acked(&mut self, request: u32, payload: &[u8], fds: &[RawFd]) -> u64 {
        self.send(request, V1 | NEED_REPLY, payload, fds);
        self.reply_u64()
    }

    /// Negotiates protocol features `pf` (REPLY_ACK included) and sets `features`.
    pub fn handshake(&mut self, pf: u64, features: u64) {
        self.send(GET_PROTOCOL_FEATURES, V1, &[], &[]);
        let offered = self.reply_u64();
        assert_eq!(offered & pf, pf, "protocol features {pf:#x} offered");
        self.send(
            SET_PROTOCOL_FEATURES,
            V1,
            &(pf | PF_REPLY_ACK).to_le_bytes(),
            &[],
        );
        assert_eq!(self.acked(SET_FEATURES, &features.to_le_bytes(), &[]), 0);
    }

    /// Whether the connection still answers (GET_FEATURES).
    pub fn answers(&mut self) -> bool {
        self.send(GET_FEATURES, V1, &[], &[]);
        self.reply().1.len() == 8
    }
}

/// A `SET_MEM_TABLE` payload with one region.
pub fn mem_table(guest_phys: u64, size: u64, user_addr: u64, offset: u64) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&1u32.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    for v in [guest_phys, size, user_addr, offset] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p
}
