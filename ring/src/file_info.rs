//! What kind of file a descriptor from a frontend is, how large, and how sealed: checked before
//! anything is mapped from it or written to it.

#![allow(unsafe_code)] // fstat and fcntl (see the SAFETY notes)

use std::io;
use std::os::fd::RawFd;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `fstat(2)`: the descriptor's file type bits (`S_IFMT`) and size in bytes. Anonymous inodes
/// (eventfd, timerfd, ...) have no type bits.
pub fn file_type_and_size(fd: RawFd) -> io::Result<(libc::mode_t, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat writes one `struct stat` into the buffer we own; an invalid fd is EBADF.
    check(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled the whole struct (and it started zeroed anyway).
    let st = unsafe { st.assume_init() };
    Ok((
        st.st_mode & libc::S_IFMT,
        u64::try_from(st.st_size).unwrap_or(0),
    ))
}

/// The seals on a memfd (`F_GET_SEALS`); `None` for files that cannot carry seals.
pub fn memfd_seals(fd: RawFd) -> Option<libc::c_int> {
    // SAFETY: F_GET_SEALS takes no pointer argument; other files only yield EINVAL.
    check(unsafe { libc::fcntl(fd, libc::F_GET_SEALS) }).ok()
}
