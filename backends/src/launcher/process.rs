//! The launcher process: forked from the daemon before it confines itself, it answers one
//! request at a time until the daemon closes its socket.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Child;

use log::{info, warn};

use super::programs;
use super::protocol::{Reply, Request, MAX_MESSAGE};
use super::{Client, LaunchPolicy};
use crate::sys;

/// The descriptor the launcher keeps its socket on; every other one above stderr is closed.
const SOCKET_FD: RawFd = 3;

/// Forks the launcher and returns the daemon's side.
pub(super) fn start(policy: LaunchPolicy) -> io::Result<Client> {
    let mut pair = [0 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into `pair`, which has room for them.
    sys::check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    })?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
    // SAFETY: the caller forks while the process has a single thread (Launcher::fork's
    // contract), so the child's copy of the heap and of every lock is consistent.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        drop(ours);
        let code = match become_launcher(theirs) {
            Ok(socket) => {
                serve(&socket, &policy);
                0
            }
            Err(e) => {
                warn!("launcher: {e}");
                1
            }
        };
        // SAFETY: ends the child without running the daemon's exit handlers a second time.
        unsafe { libc::_exit(code) };
    }
    drop(theirs);
    info!(
        "launcher process {pid} starts programs for the sandboxed daemon ({} allowed)",
        policy.programs().count()
    );
    Ok(Client {
        socket: std::sync::Mutex::new(ours),
        pid: pid as u32,
    })
}

/// Moves the socket to [`SOCKET_FD`], closes every other inherited descriptor above stderr
/// (listeners, activated sockets) and names the process.
fn become_launcher(socket: OwnedFd) -> io::Result<OwnedFd> {
    let raw = socket.as_raw_fd();
    let socket = if raw == SOCKET_FD {
        socket
    } else {
        // SAFETY: dup3 onto a fixed number; whatever sat there is one of the descriptors
        // closed just below anyway.
        sys::check(unsafe { libc::dup3(raw, SOCKET_FD, libc::O_CLOEXEC) })?;
        drop(socket);
        // SAFETY: dup3 made SOCKET_FD a copy of the socket, owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(SOCKET_FD) }
    };
    // SAFETY: closes descriptors this process does not own any handle to (it only keeps
    // 0-2 and SOCKET_FD).
    unsafe { libc::syscall(libc::SYS_close_range, SOCKET_FD + 1, u32::MAX, 0) };
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"vunetd-launcher".as_ptr(), 0, 0, 0) };
    Ok(socket)
}

fn serve(socket: &OwnedFd, policy: &LaunchPolicy) {
    let mut commands: HashMap<u32, Child> = HashMap::new();
    // One byte more than a message may hold, so that a longer one is seen and refused.
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    loop {
        let mut fds = Vec::new();
        let n = match sys::recv_with_fds(socket.as_raw_fd(), &mut buf, &mut fds) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Requests carry no descriptors; any sent are closed here.
        drop(fds);
        reap(&mut commands);
        let (reply, fd) = match Request::decode(&buf[..n.min(buf.len())]) {
            Ok(request) => handle(request, policy, &mut commands),
            Err(e) => (Reply::Failed(e.to_string()), None),
        };
        let fd_raw = fd.as_ref().map(|f| f.as_raw_fd());
        if sys::send_with_fd(socket.as_raw_fd(), &reply.encode(), fd_raw).is_err() {
            break;
        }
    }
    for child in commands.values_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn refused(what: &str, program: &str) -> Reply {
    Reply::Failed(format!(
        "the sandbox's launcher does not run {what} '{program}': name it on the command line \
         or allow it with --allow-spawn"
    ))
}

fn handle(
    request: Request,
    policy: &LaunchPolicy,
    commands: &mut HashMap<u32, Child>,
) -> (Reply, Option<OwnedFd>) {
    let failed = |e: io::Error| (Reply::Failed(e.to_string()), None);
    match request {
        Request::RunScript { script, ifname } => {
            if !policy.permits(&script) {
                return (refused("network script", &script), None);
            }
            match programs::run_script(&script, &ifname) {
                Ok(()) => (Reply::Done, None),
                Err(e) => failed(e),
            }
        }
        Request::OpenWithHelper { helper, bridge } => {
            if !policy.permits(&helper) {
                return (refused("bridge helper", &helper), None);
            }
            match programs::open_with_helper(&helper, &bridge) {
                Ok(tap) => (Reply::Done, Some(tap)),
                Err(e) => failed(e),
            }
        }
        Request::SpawnCommand { command } => {
            if !policy.permits(&command) {
                return (refused("guestfwd command", &command), None);
            }
            match programs::spawn_command(&command) {
                Ok((fd, child)) => {
                    let pid = child.id();
                    commands.insert(pid, child);
                    (Reply::Spawned { pid }, Some(fd))
                }
                Err(e) => failed(e),
            }
        }
        Request::HasExited { pid } => (Reply::Exited(!commands.contains_key(&pid)), None),
        Request::Kill { pid } => {
            // Only a command this launcher started: never an arbitrary process.
            if let Some(mut child) = commands.remove(&pid) {
                let _ = child.kill();
                let _ = child.wait();
            }
            (Reply::Done, None)
        }
    }
}

/// Forgets the commands that have ended (reaping them).
fn reap(commands: &mut HashMap<u32, Child>) {
    commands.retain(|_, child| matches!(child.try_wait(), Ok(None)));
}
