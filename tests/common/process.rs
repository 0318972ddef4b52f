//! What `/proc` says about the processes a test started (children, status lines).

/// The first child of process `pid` (a supervisor's daemon).
pub fn child_of(pid: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .expect("children of the process");
    children
        .split_whitespace()
        .next()
        .expect("the process runs a child")
        .parse()
        .expect("pid")
}

/// The line of `/proc/PID/status` that starts with `key` (empty if there is none).
pub fn status_line(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_default()
        .to_string()
}

/// Makes `cmd`'s process start with each `(from, to)` descriptor of ours at number `to`
/// (inheritable there), whatever `FD_CLOEXEC` says here: nothing leaks into other children the
/// tests start meanwhile.
pub fn pass_fds(cmd: &mut std::process::Command, moves: Vec<(i32, i32)>) {
    use std::os::unix::process::CommandExt;
    assert!(moves.len() <= 8, "at most 8 descriptors");
    // SAFETY: only fcntl(2)/dup2(2), async-signal-safe, between fork and exec. Every source is
    // first copied above 100 so that no target number overwrites a source still to be moved;
    // dup2 leaves the targets without FD_CLOEXEC.
    unsafe {
        cmd.pre_exec(move || {
            let mut parked = [(0, 0); 8];
            for (slot, &(from, to)) in parked.iter_mut().zip(&moves) {
                let tmp = libc::fcntl(from, libc::F_DUPFD_CLOEXEC, 100);
                if tmp < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                *slot = (tmp, to);
            }
            for &(tmp, to) in &parked[..moves.len()] {
                if libc::dup2(tmp, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}
