//! Pieces every bench binary shares: child processes killed on drop, CPU accounting from
//! `/proc`, core pinning, and the median/spread of repeated runs.

#![allow(dead_code)] // each bench uses a different subset

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls for a file another process creates (benches are timed runs, not tests).
pub fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CPU time (user + system) in seconds of the task whose `stat` file is at `stat_path`
/// (`/proc/PID/stat` for a process, `/proc/self/task/TID/stat` for a thread).
pub fn cpu_seconds(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let f = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Linux reports these in USER_HZ, 100 on every common configuration.
    (f(11) + f(12)) as f64 / 100.0
}

/// The machine's CPU time stolen by the hypervisor and its total CPU time, in ticks (the `cpu`
/// line of /proc/stat).
fn steal_and_total() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    (ticks.get(7).copied().unwrap_or(0), ticks.iter().sum())
}

/// How much of the machine's CPU time the host took while a section ran: on a shared VM a
/// section that ran while the host was busy shows it here instead of only in odd figures.
pub struct StealMeter((u64, u64));

impl StealMeter {
    pub fn start() -> Self {
        StealMeter(steal_and_total())
    }

    /// Prints the share of the time since `start` that was stolen.
    pub fn report(&self) {
        let (steal, total) = steal_and_total();
        let (steal, total) = (steal - self.0 .0, (total - self.0 .1).max(1));
        println!(
            "    host steal during this section: {:.1}% of the machine's CPU time",
            steal as f64 * 100.0 / total as f64
        );
    }
}

/// CPU time of process `pid` in seconds.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// Keeps the calling thread on `core`.
pub fn pin_to_core(core: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET and sched_setaffinity only touch the set we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Median, minimum and maximum of the runs.
pub fn summary(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let median = v.get(v.len() / 2).copied().unwrap_or(0.0);
    let min = v.first().copied().unwrap_or(0.0);
    let max = v.last().copied().unwrap_or(0.0);
    (median, min, max)
}

/// `BENCH_RUNS` (default `runs`) and `BENCH_SECONDS` (default `seconds`).
pub fn runs_and_window(runs: usize, seconds: f64) -> (usize, Duration) {
    let runs = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(runs);
    let secs = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(seconds);
    (runs, Duration::from_secs_f64(secs))
}

/// A minimal QMP client for the daemon's counters.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    pub fn connect(path: &Path) -> Self {
        wait_for_file(path);
        let s = UnixStream::connect(path).unwrap();
        let mut q = Qmp {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        };
        q.line();
        q.execute("qmp_capabilities");
        q
    }

    pub fn line(&mut self) -> Value {
        let mut l = String::new();
        self.reader.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap()
    }

    pub fn execute(&mut self, command: &str) -> Value {
        self.writer
            .write_all(json!({ "execute": command }).to_string().as_bytes())
            .unwrap();
        loop {
            let v = self.line();
            if v.get("event").is_none() {
                return v["return"].clone();
            }
        }
    }
}

/// Extra daemon options from `BENCH_DAEMON_ARGS` (e.g. `"--poll-us 0"`), split on whitespace.
pub fn daemon_args() -> Vec<String> {
    std::env::var("BENCH_DAEMON_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// A cgroup capping the processes put in it at a share of one core (cgroup v2 `cpu.max`, or v1's
/// `cpu` controller); removed on drop, once its processes are gone.
pub struct CpuCap {
    dir: std::path::PathBuf,
}

impl CpuCap {
    /// Caps process `pid` (and the threads it starts) at `percent` of one core.
    pub fn apply(pid: u32, percent: u32) -> Self {
        let name = format!("vunetd-bench-{}-{pid}", std::process::id());
        let quota = percent * 1000;
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let dir = if v2 {
            Path::new("/sys/fs/cgroup").join(&name)
        } else {
            Path::new("/sys/fs/cgroup/cpu").join(&name)
        };
        std::fs::create_dir_all(&dir).expect("create cgroup (root, cgroup fs mounted)");
        if v2 {
            std::fs::write(dir.join("cpu.max"), format!("{quota} 100000")).unwrap();
        } else {
            std::fs::write(dir.join("cpu.cfs_period_us"), "100000").unwrap();
            std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string()).unwrap();
        }
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        CpuCap { dir }
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        // Fails while a process is still inside; the caller drops the process first.
        let _ = std::fs::remove_dir(&self.dir);
    }
}
