//! The tap backend at fixed frame sizes (64 and 1500 bytes), per direction, against the raw
//! system call on the same machine in the same run; and with two queue pairs.
//!
//! - **tx** (guest → tap): testpmd `txonly` on core 1 fills the daemon's tx ring; the daemon
//!   (core 0) writes each frame into the tap. The reference is a thread on core 0 doing nothing
//!   but `writev` of one frame into a tap. The rate is the tap's `rx_packets`.
//! - **rx** (tap → guest): an `AF_PACKET` source on core 1 sends into the tap as fast as it can;
//!   the daemon reads the tap into testpmd's `rxonly` rings (testpmd shares core 1 with the
//!   source). The reference is a thread on core 0 doing nothing but `readv` from a tap fed by the
//!   same source. The rate is the tap's `tx_packets`.
//!
//! The source and the sink are not the same in the two rx setups (testpmd takes half of core 1
//! in the daemon's), so the comparison is frames per second of the measured side's own CPU:
//! what it would do with the core to itself. For tx both sides are CPU-bound, so that is also
//! the plain rate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{process_cpu_seconds, wait_for_file, Proc};
use crate::frames;
use crate::generator::Generator;
use crate::netns::Netns;
use crate::raw_tap::{self, tap_stats, Measure, TapStats};
use crate::report::{print_ratio, print_row};
use crate::{testpmd, DAEMON};

/// The daemon's tap.
pub const DAEMON_TAP: &str = "vbtap0";
/// The reference loop's tap.
const REFERENCE_TAP: &str = "vbraw0";
/// Seconds after start before counting.
const WARM_UP: Duration = Duration::from_secs(2);

/// The daemon serving one port on tap [`DAEMON_TAP`] in `ns`, on core 0 when `pinned`.
pub fn start_daemon(ns: &Netns, scratch: &Path, queues: u16, pinned: bool) -> (Proc, PathBuf) {
    let socket = scratch.join(format!("tap-{queues}.sock"));
    let _ = std::fs::remove_file(&socket);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name]);
    if pinned {
        cmd.args(["taskset", "-c", "0"]);
    }
    let daemon = Proc(
        cmd.arg(DAEMON)
            .args(crate::common::daemon_args())
            .arg("--socket-path")
            .arg(&socket)
            .arg("--netdev")
            .arg(format!(
                "tap,id=n0,ifname={DAEMON_TAP},queues={queues},script=no,downscript=no"
            ))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn daemon"),
    );
    wait_for_file(&socket);
    ns.ip(&["link", "set", DAEMON_TAP, "txqueuelen", "10000", "up"]);
    (daemon, socket)
}

/// Counts `window` of the tap's counters and the daemon's CPU, after a warm-up.
pub fn measure_daemon(
    ns: &Netns,
    daemon: &Proc,
    window: Duration,
    count: impl Fn(&TapStats) -> (u64, u64),
) -> Measure {
    std::thread::sleep(WARM_UP);
    let pid = daemon.0.id();
    let (s0, c0, t0) = (
        tap_stats(ns, DAEMON_TAP),
        process_cpu_seconds(pid),
        Instant::now(),
    );
    std::thread::sleep(window);
    let (s1, c1, t1) = (
        tap_stats(ns, DAEMON_TAP),
        process_cpu_seconds(pid),
        Instant::now(),
    );
    let (f0, b0) = count(&s0);
    let (f1, b1) = count(&s1);
    Measure {
        frames: f1 - f0,
        bytes: b1 - b0,
        seconds: (t1 - t0).as_secs_f64(),
        cpu: c1 - c0,
    }
}

fn frontend(socket: &Path, prefix: &str, queues: u16, mode: &str, size: usize) -> Proc {
    let mut c = testpmd::command(prefix, 0);
    c.arg("--vdev")
        .arg(testpmd::virtio_user(0, socket, queues))
        .args(["--", "--stats-period", "1", "--total-num-mbufs", "8192"])
        .arg(format!("--forward-mode={mode}"))
        .arg(format!("--txpkts={size}"));
    if queues > 1 {
        c.arg(format!("--rxq={queues}"))
            .arg(format!("--txq={queues}"));
    }
    Proc(c.spawn().expect("spawn dpdk-testpmd"))
}

pub fn daemon_tx(
    ns: &Netns,
    scratch: &Path,
    size: usize,
    queues: u16,
    pinned: bool,
    window: Duration,
    tag: &str,
) -> Measure {
    let (daemon, socket) = start_daemon(ns, scratch, queues, pinned);
    let _fe = frontend(&socket, tag, queues, "txonly", size);
    measure_daemon(ns, &daemon, window, |s| (s.rx_packets, s.rx_bytes))
}

pub fn daemon_rx(ns: &Netns, scratch: &Path, size: usize, window: Duration, tag: &str) -> Measure {
    let (daemon, socket) = start_daemon(ns, scratch, 1, true);
    let _fe = frontend(&socket, tag, 1, "rxonly", size);
    let _source = Generator::start(ns, DAEMON_TAP, frames::udp(size), None, 1);
    measure_daemon(ns, &daemon, window, |s| (s.tx_packets, s.tx_bytes))
}

/// Prints a row of frame rates (and, with `per_cpu`, one of rates per second of the measured
/// side's CPU); returns the last row's median.
pub fn rows(name: &str, runs: &[Measure], per_cpu: bool) -> f64 {
    let rate: Vec<f64> = runs.iter().map(Measure::frames_per_second).collect();
    let cpu: Vec<f64> = runs.iter().map(Measure::cpu_percent).collect();
    let m = print_row(name, "frames/s", &rate, &cpu);
    if !per_cpu {
        return m;
    }
    let capacity: Vec<f64> = runs.iter().map(Measure::frames_per_cpu_second).collect();
    print_row("    per second of its own CPU", "frames/s", &capacity, &cpu)
}

/// Runs the fixed-size section: tx and rx at 64 and 1500 bytes, daemon and reference.
pub fn run(runs: usize, window: Duration, scratch: &Path) {
    let ns = Netns::new("dp");
    let pid = std::process::id();
    let dirs = std::env::var("BENCH_DIRS").unwrap_or_default();
    let wanted = |d: &str| dirs.is_empty() || dirs.split(',').any(|x| x == d);
    for size in [64usize, 1500] {
        // Daemon and reference runs alternate, so drift on the machine hits both alike.
        if wanted("tx") {
            let (mut tx, mut raw) = (Vec::new(), Vec::new());
            for r in 0..runs {
                let tag = format!("vunetd-tx-{pid}-{size}-{r}");
                tx.push(daemon_tx(&ns, scratch, size, 1, true, window, &tag));
                raw.push(raw_tap::raw_tx(
                    &ns,
                    REFERENCE_TAP,
                    frames::udp(size),
                    window,
                ));
            }
            let a = rows(&format!("tap tx {size} B: vhost-user-netd"), &tx, false);
            let b = rows(&format!("tap tx {size} B: raw writev loop"), &raw, false);
            print_ratio(
                &format!("tap tx {size} B / raw writev"),
                a / b.max(1.0),
                0.8,
            );
        }
        if wanted("rx") {
            let (mut rx, mut raw) = (Vec::new(), Vec::new());
            for r in 0..runs {
                let tag = format!("vunetd-rx-{pid}-{size}-{r}");
                rx.push(daemon_rx(&ns, scratch, size, window, &tag));
                raw.push(raw_tap::raw_rx(&ns, REFERENCE_TAP, window, || {
                    Generator::start(&ns, REFERENCE_TAP, frames::udp(size), None, 1)
                }));
            }
            let a = rows(&format!("tap rx {size} B: vhost-user-netd"), &rx, true);
            let b = rows(&format!("tap rx {size} B: raw readv loop"), &raw, true);
            let name = format!("tap rx {size} B / raw readv (per CPU second)");
            print_ratio(&name, a / b.max(1.0), 0.8);
        }
    }
}

/// Two queue pairs against one, tx at 64 bytes, the daemon free to use both cores.
pub fn run_multiqueue(runs: usize, window: Duration, scratch: &Path) {
    let ns = Netns::new("mq");
    let pid = std::process::id();
    let mut medians = Vec::new();
    for queues in [1u16, 2] {
        let m: Vec<Measure> = (0..runs)
            .map(|r| {
                daemon_tx(
                    &ns,
                    scratch,
                    64,
                    queues,
                    false,
                    window,
                    &format!("vunetd-mq-{pid}-{queues}-{r}"),
                )
            })
            .collect();
        medians.push(rows(
            &format!("tap tx 64 B, {queues} queue pair(s), 2 cores"),
            &m,
            false,
        ));
    }
    print_ratio("2 pairs / 1 pair", medians[1] / medians[0].max(1.0), 1.6);
}
