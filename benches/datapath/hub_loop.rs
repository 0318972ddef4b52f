//! The vhost-user ring path alone: 64-byte frames looping through two ports joined inside the
//! daemon (`hubport`), against DPDK's own vhost backend doing the same job, on the same frontend.
//!
//! The frontend is one `dpdk-testpmd` with two `net_virtio_user` ports in `io` forwarding mode,
//! started with `--tx-first`, so a burst of 64-byte frames loops port 0 → backend → port 1 →
//! testpmd → port 0 … (the classic loopback setup); its forwarding lcore is on core 1. The
//! backend is on core 0:
//! - **vhost-user-netd**: the release daemon with two hub ports on one hub (`taskset -c 0`).
//! - **DPDK vhost**: a second `dpdk-testpmd` with `net_vhost0`/`net_vhost1` in `io` mode,
//!   busy-polling core 0 (the reference ceiling).
//!
//! The rate is testpmd's own `Rx-pps` summed over both ports, one sample a second after a
//! warm-up; each run's figure is the median of its samples, each row the median of `BENCH_RUNS`
//! runs (default 3) with min–max. For the daemon it also prints its CPU use during the run and
//! in the second after the frontend stopped (must be ~0: no polling).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

use crate::common::{process_cpu_seconds, summary, wait_for_file, Proc};
use crate::report::{print_ratio, print_row};

use crate::{testpmd, DAEMON};
/// Seconds of testpmd output ignored before sampling.
const WARM_UP: usize = 2;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Hub,
    DpdkVhost,
}

/// The frontend: two virtio-user ports on `a` and `b`, forwarding between them. Returns the
/// per-second aggregate `Rx-pps` samples after the warm-up.
fn run_frontend(a: &Path, b: &Path, prefix: &str, window: Duration) -> Vec<f64> {
    let seconds = WARM_UP + window.as_secs().max(1) as usize;
    let mut child = Proc(
        testpmd::command(prefix, 0)
            .arg("--vdev")
            .arg(testpmd::virtio_user(0, a, 1))
            .arg("--vdev")
            .arg(testpmd::virtio_user(1, b, 1))
            .args([
                "--",
                "--stats-period",
                "1",
                "--forward-mode=io",
                "--tx-first",
            ])
            .args(["--total-num-mbufs", "8192"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn dpdk-testpmd (run scripts/install-test-deps.sh)"),
    );
    let out = BufReader::new(child.0.stdout.take().unwrap());
    // Each stats period prints one block per port; a period's sample is the sum of the two.
    let mut samples = Vec::new();
    let mut period = Vec::new();
    for line in out.lines() {
        let Ok(line) = line else { break };
        let Some(rest) = line.trim().strip_prefix("Rx-pps:") else {
            continue;
        };
        let pps: f64 = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        period.push(pps);
        if period.len() == 2 {
            samples.push(period.iter().sum());
            period.clear();
            if samples.len() >= seconds {
                break;
            }
        }
    }
    drop(child);
    samples.split_off(WARM_UP.min(samples.len()))
}

/// Both hub ports on one shared worker (`--workers 1`) unless `BENCH_DAEMON_ARGS` says otherwise.
fn hub_daemon_args() -> Vec<String> {
    let mut args = crate::common::daemon_args();
    if !args.iter().any(|a| a.starts_with("--workers")) {
        args.extend(["--workers".to_string(), "1".to_string()]);
    }
    args
}

struct Sample {
    pps: f64,
    /// The daemon's CPU while frames flowed, and in the second after the frontend stopped.
    cpu_busy: f64,
    cpu_idle: f64,
}

fn run_once(backend: Backend, window: Duration, scratch: &Path, run: usize) -> Sample {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).unwrap();
    let (a, b) = (scratch.join("a.sock"), scratch.join("b.sock"));
    let pid = std::process::id();
    let server = match backend {
        Backend::Hub => Proc(
            Command::new("taskset")
                .args(["-c", "0", DAEMON])
                .args(hub_daemon_args())
                .args(["--netdev", "hubport,id=h0,hubid=0"])
                .args(["--netdev", "hubport,id=h1,hubid=0"])
                .arg("--port")
                .arg(format!("id=a,socket-path={},netdev=h0", a.display()))
                .arg("--port")
                .arg(format!("id=b,socket-path={},netdev=h1", b.display()))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn daemon"),
        ),
        Backend::DpdkVhost => Proc(
            testpmd::command(&format!("vunetd-ref-{pid}-{run}"), 1)
                .arg("--vdev")
                .arg(format!("net_vhost0,iface={},queues=1", a.display()))
                .arg("--vdev")
                .arg(format!("net_vhost1,iface={},queues=1", b.display()))
                .args(["--", "--stats-period", "1", "--forward-mode=io"])
                .args(["--total-num-mbufs", "8192"])
                .spawn()
                .expect("spawn dpdk-testpmd"),
        ),
    };
    wait_for_file(&a);
    wait_for_file(&b);
    let server_pid = server.0.id();
    let (c0, t0) = (process_cpu_seconds(server_pid), Instant::now());
    let samples = run_frontend(&a, &b, &format!("vunetd-fe-{pid}-{run}"), window);
    let (c1, t1) = (process_cpu_seconds(server_pid), Instant::now());
    // The frontend is gone: an event-driven backend now sleeps.
    std::thread::sleep(Duration::from_secs(1));
    let c2 = process_cpu_seconds(server_pid);
    drop(server);
    Sample {
        pps: summary(&samples).0,
        cpu_busy: (c1 - c0) / (t1 - t0).as_secs_f64() * 100.0,
        cpu_idle: (c2 - c1) * 100.0,
    }
}

/// Hub loop against DPDK's vhost backend: prints a row each and the ratio. The two alternate
/// run by run, so drift on the machine hits both alike.
pub fn run(runs: usize, window: Duration, scratch: &Path) {
    let (mut hub, mut dpdk) = (Vec::new(), Vec::new());
    for run in 0..runs {
        hub.push(run_once(Backend::Hub, window, scratch, run));
        dpdk.push(run_once(Backend::DpdkVhost, window, scratch, run));
    }
    let mut medians = Vec::new();
    for (name, samples) in [
        ("hub loop 64 B: vhost-user-netd", &hub),
        ("hub loop 64 B: DPDK net_vhost", &dpdk),
    ] {
        let pps: Vec<f64> = samples.iter().map(|s| s.pps).collect();
        let busy: Vec<f64> = samples.iter().map(|s| s.cpu_busy).collect();
        let idle: Vec<f64> = samples.iter().map(|s| s.cpu_idle).collect();
        medians.push(print_row(name, "frames/s", &pps, &busy));
        println!(
            "    backend CPU in the second after the frontend stopped: {:.0}%",
            summary(&idle).0
        );
    }
    print_ratio("hub / DPDK vhost", medians[0] / medians[1].max(1.0), 0.5);
}
