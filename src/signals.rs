//! Shutdown signals: blocked in every thread, awaited by the main thread with `sigwait`.

use std::io;

fn shutdown_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
    }
    set
}

/// Blocks SIGTERM/SIGINT/SIGHUP in this thread and every thread it spawns later. Call first.
pub fn block_shutdown_signals() -> io::Result<()> {
    let set = shutdown_set();
    // SAFETY: `set` is initialised; the old mask is not wanted (null).
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

/// Waits for a shutdown signal; returns its number.
pub fn wait_for_shutdown() -> i32 {
    let set = shutdown_set();
    let mut signal = 0;
    loop {
        // SAFETY: `set` is initialised and `signal` is a valid out-pointer.
        if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
            return signal;
        }
    }
}

/// Asks the main thread to shut down as if SIGTERM had arrived (QMP `quit`).
pub fn request_shutdown() {
    // SAFETY: kill(2) on our own pid with a valid signal number.
    unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
}

/// Makes `command`'s process a supervised child: it starts with the shutdown signals unblocked
/// again (a child inherits the blocked mask across `exec`), and gets SIGTERM if its parent dies
/// (so that killing the supervisor never leaves the child running).
pub fn supervised_child(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only calls pthread_sigmask and prctl,
    // which are async-signal-safe, on a set built before the fork.
    unsafe {
        let set = shutdown_set();
        command.pre_exec(move || {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `signal` to process `pid` (a child being told to stop).
pub fn forward(pid: u32, signal: i32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a valid signal number on a child we started.
        unsafe { libc::kill(pid, signal) };
    }
}
