//! The privileged step for `inhibit=on`: attach the XSK program and hand the daemon sockets that
//! are already in its map (`sock-fds`), or pin the map for the daemon to insert its own
//! (`map-path`). A daemon given either needs neither CAP_NET_ADMIN nor CAP_BPF.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::xsk;

/// libxdp's default program on an interface, as seen through its XSK map.
#[derive(Debug)]
pub struct XskProgram {
    map: OwnedFd,
    ifindex: u32,
    /// The program's id if this attach put it there (none was attached before).
    attached_here: Option<u32>,
}

impl XskProgram {
    /// Attaches the program to `ifname` (or finds the one libxdp attached before).
    pub fn attach(ifname: &str) -> io::Result<Self> {
        let c = std::ffi::CString::new(ifname)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a NUL-terminated name; the call reads nothing else.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        let before = attached_id(ifindex);
        let map = xsk::load_default_program(ifindex)?;
        let attached_here = match (before, attached_id(ifindex)) {
            (None, Some(id)) => Some(id),
            _ => None,
        };
        Ok(XskProgram {
            map,
            ifindex,
            attached_here,
        })
    }

    /// Takes the program off the interface again if [`Self::attach`] put it there and nobody
    /// replaced it since.
    pub fn detach_if_attached_here(&self) -> io::Result<()> {
        match self.attached_here {
            Some(id) if attached_id(self.ifindex) == Some(id) => {
                xsk::detach_program(self.ifindex, id)
            }
            _ => Ok(()),
        }
    }

    /// A new unbound AF_XDP socket, already in the map for interface queue `queue` (the program
    /// redirects a frame to the socket at its receive queue's index). Inheritable.
    pub fn socket_for_queue(&self, queue: u32) -> io::Result<OwnedFd> {
        let socket = xsk::unbound_socket()?;
        xsk::map_insert(&self.map, queue, socket.as_raw_fd())?;
        Ok(socket)
    }

    /// Pins the map at `path` on a mounted bpf filesystem.
    pub fn pin_map(&self, path: &str) -> io::Result<()> {
        xsk::pin(&self.map, path)
    }
}

/// The XDP program attached to `ifindex` in either mode.
fn attached_id(ifindex: u32) -> Option<u32> {
    xsk::attached_program(ifindex, true).or_else(|| xsk::attached_program(ifindex, false))
}

/// Lifts `RLIMIT_MEMLOCK` by `bytes` (the UMEMs to come), soft and hard limit where the
/// process may (CAP_SYS_RESOURCE), else the soft limit up to the hard one.
pub fn raise_memlock(bytes: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return;
    }
    let want = (bytes as u64).saturating_add(limit.rlim_cur);
    if limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= want {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: limit.rlim_max.max(want),
    };
    // SAFETY: `raised` is a valid rlimit; failure leaves the limit as it was.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } != 0 {
        let soft_only = libc::rlimit {
            rlim_cur: want.min(limit.rlim_max),
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above, within the hard limit.
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &soft_only) };
    }
}
