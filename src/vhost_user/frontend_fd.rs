//! Descriptors a frontend hands over for signalling (kick, call and error notifiers, the
//! backend-request channel): checked for their kind and made non-blocking before anything uses
//! them, so that no descriptor a frontend controls can make a daemon thread wait.
//!
//! A call notifier whose write would block (an eventfd counter at its maximum, a full pipe)
//! already has an interrupt pending: the write is dropped, nothing is lost. A channel that
//! cannot take a message at once belongs to a frontend that stopped reading it.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use vhost_user_netd_backends::sys;
use vmm_sys_util::eventfd::EventFd;

/// Why a frontend's descriptor was refused.
#[derive(Debug, thiserror::Error)]
pub enum FdError {
    #[error("{what} descriptor is {kind}; an eventfd is expected")]
    NotANotifier {
        what: &'static str,
        kind: &'static str,
    },
    #[error("backend-request descriptor is {0}; a unix socket is expected")]
    NotASocket(&'static str),
    #[error("{what} descriptor: {err}")]
    Io {
        what: &'static str,
        err: std::io::Error,
    },
}

fn kind_name(kind: libc::mode_t) -> &'static str {
    match kind {
        0 => "an anonymous inode",
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        libc::S_IFBLK => "a block device",
        libc::S_IFCHR => "a character device",
        libc::S_IFIFO => "a pipe",
        libc::S_IFSOCK => "a socket",
        libc::S_IFLNK => "a symbolic link",
        _ => "of an unknown kind",
    }
}

/// What a notifier is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notifier {
    /// Read by a queue worker's epoll: an eventfd (anonymous inode) only, because a pipe or
    /// socket whose other end closes stays readable for ever and would spin the worker.
    Kick,
    /// Written by the device: an eventfd, a pipe or a socket.
    Call,
    /// Never used (closed): checked like a call.
    Error,
}

impl Notifier {
    fn name(self) -> &'static str {
        match self {
            Notifier::Kick => "kick",
            Notifier::Call => "call",
            Notifier::Error => "error",
        }
    }

    fn accepts(self, kind: libc::mode_t) -> bool {
        match self {
            Notifier::Kick => kind == 0,
            Notifier::Call | Notifier::Error => matches!(kind, 0 | libc::S_IFIFO | libc::S_IFSOCK),
        }
    }
}

/// A kick, call or error notifier of an accepted kind, made non-blocking. Files, directories
/// and devices are refused: a write to a regular file would grow it by eight bytes per
/// interrupt.
pub fn notifier(fd: OwnedFd, use_: Notifier) -> Result<EventFd, FdError> {
    let what = use_.name();
    let io = |err| FdError::Io { what, err };
    let (kind, _) =
        vhost_user_netd_ring::file_info::file_type_and_size(fd.as_raw_fd()).map_err(io)?;
    if !use_.accepts(kind) {
        return Err(FdError::NotANotifier {
            what,
            kind: kind_name(kind),
        });
    }
    sys::set_nonblocking(fd.as_raw_fd(), true).map_err(io)?;
    // SAFETY: we own `fd` (received with SCM_RIGHTS); EventFd takes over its ownership.
    Ok(unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) })
}

/// The backend-request channel (`SET_BACKEND_REQ_FD`): a unix socket, made non-blocking.
pub fn channel(fd: OwnedFd) -> Result<UnixStream, FdError> {
    let io = |err| FdError::Io {
        what: "backend-request",
        err,
    };
    let (kind, _) =
        vhost_user_netd_ring::file_info::file_type_and_size(fd.as_raw_fd()).map_err(io)?;
    if kind != libc::S_IFSOCK {
        return Err(FdError::NotASocket(kind_name(kind)));
    }
    sys::set_nonblocking(fd.as_raw_fd(), true).map_err(io)?;
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    #[test]
    fn notifiers_come_out_non_blocking_and_files_are_refused() {
        let fd = sys::eventfd().unwrap();
        sys::set_nonblocking(fd.as_raw_fd(), false).unwrap();
        let ev = notifier(fd, Notifier::Call).unwrap();
        ev.write(u64::MAX - 1).unwrap();
        // A full counter: the write would block, and now says so instead.
        assert_eq!(
            ev.write(1).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        let file: OwnedFd = File::open("/proc/self/stat").unwrap().into();
        let err = notifier(file, Notifier::Call).unwrap_err().to_string();
        assert_eq!(
            err,
            "call descriptor is a regular file; an eventfd is expected"
        );
        let dir: OwnedFd = File::open("/").unwrap().into();
        assert!(notifier(dir, Notifier::Error).is_err());
        let (r, w) = std::io::pipe().unwrap();
        assert!(
            notifier(w.into(), Notifier::Call).is_ok(),
            "a pipe can take calls"
        );
        assert_eq!(
            notifier(r.into(), Notifier::Kick).unwrap_err().to_string(),
            "kick descriptor is a pipe; an eventfd is expected"
        );
        let pipe = sys::eventfd().unwrap();
        assert_eq!(
            channel(pipe).unwrap_err().to_string(),
            "backend-request descriptor is an anonymous inode; a unix socket is expected"
        );
    }
}
