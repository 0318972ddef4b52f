//! The tap's set-up/tear-down scripts and QEMU's bridge helper.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Runs `script IFNAME` and waits for it; a non-zero exit is an error, as in QEMU.
pub fn run_script(script: &str, ifname: &str) -> io::Result<()> {
    let status = Command::new(script).arg(ifname).status().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("could not launch network script {script}: {e}"),
        )
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "network script {script} failed with status {status}"
        )))
    }
}

/// Runs QEMU's bridge helper (`HELPER --use-vnet --fd=N --br=BR`) and receives the tap it opens.
pub fn open_with_helper(helper: &str, bridge: &str) -> io::Result<OwnedFd> {
    let (ours, theirs) = UnixStream::pair()?;
    let child_fd = theirs.as_raw_fd();
    let mut command = if helper.contains(' ') {
        // QEMU runs a helper with arguments through the shell.
        let mut c = Command::new("/bin/sh");
        c.arg("-c")
            .arg(format!("{helper} --use-vnet --fd={child_fd} --br={bridge}"));
        c
    } else {
        let mut c = Command::new(helper);
        c.arg("--use-vnet")
            .arg(format!("--fd={child_fd}"))
            .arg(format!("--br={bridge}"));
        c
    };
    // SAFETY: the closure only calls fcntl(2), which is async-signal-safe, on a descriptor the
    // child inherited; it allocates nothing and touches no locks.
    unsafe {
        command.pre_exec(move || {
            let flags = libc::fcntl(child_fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(child_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("could not run bridge helper {helper}: {e}"),
        )
    })?;
    drop(theirs);
    let received = recv_one_fd(ours.as_raw_fd());
    let status = child.wait()?;
    match received {
        Ok(Some(fd)) if status.success() => Ok(fd),
        _ => Err(io::Error::other(format!("bridge helper failed ({status})"))),
    }
}

/// Receives one descriptor sent with SCM_RIGHTS (and at least one byte of data).
fn recv_one_fd(sock: RawFd) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut fds = Vec::new();
    crate::sys::recv_with_fds(sock, &mut byte, &mut fds)?;
    Ok(fds.into_iter().next())
}
