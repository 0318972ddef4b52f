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
