//! The daemon under test, as a child process (optionally inside a namespace); killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::lines::Lines;

/// Path of the daemon binary cargo built for the integration tests.
pub const BINARY: &str = env!("CARGO_BIN_EXE_vhost-user-netd");

/// A running daemon with its log.
#[derive(Debug)]
pub struct Daemon {
    pub child: Child,
    pub log: Lines,
}

impl Daemon {
    /// Starts `command` (built on [`BINARY`]) and waits until every port is listening.
    pub fn start(mut command: Command, ports: usize) -> Self {
        command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn daemon");
        let log = Lines::spawn(child.stderr.take().expect("stderr"), "daemon", false);
        let daemon = Daemon { child, log };
        for _ in 0..ports {
            daemon.log.wait_for("listening on", Duration::from_secs(20));
        }
        daemon
    }

    /// A command running the daemon binary with `args`.
    pub fn command(args: &[&str]) -> Command {
        let mut c = Command::new(BINARY);
        c.args(args);
        c
    }

    /// Per-pair rx/tx frame counts from the report the daemon logs when a frontend disconnects.
    pub fn pair_frames(&self, pair: u16) -> (u64, u64) {
        let line = self
            .log
            .wait_for(&format!("pair {pair}: rx "), Duration::from_secs(30));
        let after = |key: &str| -> u64 {
            let at = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
            line[at..]
                .split_whitespace()
                .next()
                .unwrap_or("0")
                .parse()
                .unwrap_or(0)
        };
        (after(": rx "), after(", tx "))
    }

    /// Sends SIGKILL and reaps.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait daemon")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
