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
    pub fn start(command: Command, ports: usize) -> Self {
        Self::start_until(command, "listening on", ports)
    }

    /// Starts `command` and waits for `ports` log lines containing `marker`.
    pub fn start_until(mut command: Command, marker: &str, ports: usize) -> Self {
        command
            .env(
                "RUST_LOG",
                std::env::var("VUNETD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn daemon");
        let log = Lines::spawn(
            child.stderr.take().expect("stderr"),
            "daemon",
            std::env::var_os("VUNETD_TEST_ECHO").is_some(),
        );
        let daemon = Daemon { child, log };
        for _ in 0..ports {
            daemon.log.wait_for(marker, Duration::from_secs(60));
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
        let c = self.pair_counts(pair);
        (c.rx_frames, c.tx_frames)
    }

    /// Per-pair counters from the disconnect report
    /// (`pair N: rx F frames B bytes, tx F frames B bytes, ...`).
    pub fn pair_counts(&self, pair: u16) -> PairCounts {
        let line = self
            .log
            .wait_for(&format!("pair {pair}: rx "), Duration::from_secs(30));
        let numbers = |key: &str| -> (u64, u64) {
            let at = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
            let mut words = line[at..].split_whitespace();
            let frames = words.next().unwrap_or("0").parse().unwrap_or(0);
            let _ = words.next(); // "frames"
            let bytes = words.next().unwrap_or("0").parse().unwrap_or(0);
            (frames, bytes)
        };
        let (rx_frames, rx_bytes) = numbers(": rx ");
        let (tx_frames, tx_bytes) = numbers(", tx ");
        // "... largest frame rx A tx B"
        let at = line
            .find("largest frame rx ")
            .map_or(line.len(), |i| i + "largest frame rx ".len());
        let words: Vec<&str> = line[at..].split_whitespace().collect();
        let word = |i: usize| words.get(i).and_then(|w| w.parse().ok()).unwrap_or(0);
        PairCounts {
            rx_frames,
            rx_bytes,
            tx_frames,
            tx_bytes,
            rx_max_frame: word(0),
            tx_max_frame: word(2),
        }
    }

    /// Sends SIGKILL and reaps.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (at most `timeout`) for the daemon to exit on its own; its status, or `None`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: pidfd_open on our own child's pid; the descriptor is closed below.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.child.id(), 0) };
        if pidfd >= 0 {
            let mut p = libc::pollfd {
                fd: pidfd as i32,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            // SAFETY: one valid pollfd; the pidfd becomes readable when the process exits.
            unsafe {
                libc::poll(&mut p, 1, ms);
                libc::close(pidfd as i32);
            }
        }
        self.child.try_wait().expect("try_wait")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait daemon")
    }

    /// Stops the daemon with SIGTERM and checks that it exited cleanly, showing its log if not.
    pub fn stop_cleanly(&mut self) {
        let status = self.terminate();
        assert!(
            status.success(),
            "the daemon ended with {status:?}; its log:\n{}",
            self.log.transcript()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One queue pair's counters as the daemon reported them.
#[derive(Debug, Clone, Copy, Default)]
pub struct PairCounts {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Largest frame each way (bytes, without the virtio-net header).
    pub rx_max_frame: u64,
    pub tx_max_frame: u64,
}
