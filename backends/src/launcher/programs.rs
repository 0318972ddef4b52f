//! How each program the backends start is run, as QEMU runs it: a tap's set-up/tear-down
//! script, QEMU's bridge helper, a user stack's `guestfwd` command. The same code runs in the
//! daemon (no sandbox) and in the launcher process (sandbox).
//!
//! Every program starts with an empty signal mask: the daemon blocks its shutdown signals in
//! every thread, and a blocked mask survives `exec`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// A command that starts with no signal blocked.
fn command(program: &str) -> Command {
    let mut c = Command::new(program);
    // SAFETY: the closure runs between fork and exec and only calls sigemptyset and
    // pthread_sigmask, which are async-signal-safe, on a set on its own stack.
    unsafe {
        c.pre_exec(|| {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    c
}

/// Runs `script IFNAME` and waits for it; a non-zero exit is an error, as in QEMU.
pub fn run_script(script: &str, ifname: &str) -> io::Result<()> {
    let status = command(script).arg(ifname).status().map_err(|e| {
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
        let mut c = command("/bin/sh");
        c.arg("-c")
            .arg(format!("{helper} --use-vnet --fd={child_fd} --br={bridge}"));
        c
    } else {
        let mut c = command(helper);
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

/// Runs a `guestfwd` command (`/bin/sh -c COMMAND`, as QEMU) with one end of a socket pair as
/// its stdin and stdout; returns the other end and the child.
pub fn spawn_command(line: &str) -> io::Result<(OwnedFd, Child)> {
    let (ours, theirs) = UnixStream::pair()?;
    let theirs_out = theirs.try_clone()?;
    let child = command("/bin/sh")
        .arg("-c")
        .arg(line)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(OwnedFd::from(theirs_out)))
        .spawn()?;
    Ok((OwnedFd::from(ours), child))
}

/// Receives one descriptor sent with SCM_RIGHTS (and at least one byte of data).
fn recv_one_fd(sock: RawFd) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut fds = Vec::new();
    crate::sys::recv_with_fds(sock, &mut byte, &mut fds)?;
    Ok(fds.into_iter().next())
}
