//! 64 KiB GSO frames across the tap, both ways, against 1514-byte frames on the same path; and
//! what an idle port costs.
//!
//! The frontend is the in-repo vhost-user driver (`tests/common/frontend.rs`) on core 1: testpmd's
//! `txonly` cannot mark frames for TSO. It negotiates checksum and TSO4 both ways, so the daemon
//! turns the tap's offloads on.
//! - **tx**: it keeps its tx ring full of one TCP/IPv4 frame (64 000 bytes with a GSO header at
//!   MSS 1448, or 1514 bytes without); the kernel counts what the tap received (`rx_bytes`,
//!   `rx_packets`: a GSO frame that crossed whole counts once, with all its bytes).
//! - **rx**: an `AF_PACKET` source with `PACKET_VNET_HDR` sends the same frames into the tap; the
//!   frontend drains its rx ring (256 buffers of 64 KiB, no mergeable buffers) and counts.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::process_cpu_seconds;
use crate::driver::Driver;
use crate::frames;
use crate::frontend::{F_EVENT_IDX, F_VERSION_1};
use crate::generator::Generator;
use crate::netns::Netns;
use crate::raw_tap::Measure;
use crate::report::{print_ratio, print_row};
use crate::tap_rate::{measure_daemon, start_daemon, DAEMON_TAP};

const F_CSUM: u64 = 1 << 0;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_GUEST_TSO4: u64 = 1 << 7;
const F_HOST_TSO4: u64 = 1 << 11;
const OFFLOADS: u64 = F_CSUM | F_GUEST_CSUM | F_GUEST_TSO4 | F_HOST_TSO4;
const FEATURES: u64 = F_VERSION_1 | F_EVENT_IDX | OFFLOADS;
const GSO_FRAME: usize = 64_000;
const PLAIN_FRAME: usize = 1514;
const MSS: u16 = 1448;

fn header(gso: bool) -> Vec<u8> {
    let mut h = frames::vnet_header(gso.then_some(MSS)).to_vec();
    h.extend_from_slice(&[0, 0]); // num_buffers
    h
}

fn frame_len(gso: bool) -> usize {
    if gso {
        GSO_FRAME
    } else {
        PLAIN_FRAME
    }
}

fn tx_once(ns: &Netns, scratch: &Path, gso: bool, window: Duration) -> Measure {
    let (daemon, socket) = start_daemon(ns, scratch, 1, true);
    let mut data = header(gso);
    data.extend_from_slice(&frames::tcp(frame_len(gso)));
    let _driver = Driver::start(&socket, FEATURES, OFFLOADS, Some(data), 1);
    measure_daemon(ns, &daemon, window, |s| (s.rx_packets, s.rx_bytes))
}

fn rx_once(ns: &Netns, scratch: &Path, gso: bool, window: Duration) -> Measure {
    let (daemon, socket) = start_daemon(ns, scratch, 1, true);
    let driver = Driver::start(&socket, FEATURES, OFFLOADS, None, 1);
    let hdr = frames::vnet_header(gso.then_some(MSS));
    let _source = Generator::start(ns, DAEMON_TAP, frames::tcp(frame_len(gso)), Some(hdr), 1);
    std::thread::sleep(Duration::from_secs(2));
    let pid = daemon.0.id();
    let ((f0, b0), c0, t0) = (driver.received(), process_cpu_seconds(pid), Instant::now());
    std::thread::sleep(window);
    let ((f1, b1), c1, t1) = (driver.received(), process_cpu_seconds(pid), Instant::now());
    Measure {
        frames: f1 - f0,
        bytes: b1 - b0,
        seconds: (t1 - t0).as_secs_f64(),
        cpu: c1 - c0,
    }
}

/// Prints the rate, Gbit/s per second of the daemon's CPU and the mean frame size; returns the
/// median of the rate, or with `per_cpu` of the per-CPU figure.
fn rows(name: &str, runs: &[Measure], per_cpu: bool) -> f64 {
    let gbits: Vec<f64> = runs.iter().map(Measure::gbits).collect();
    let cpu: Vec<f64> = runs.iter().map(Measure::cpu_percent).collect();
    let capacity: Vec<f64> = runs
        .iter()
        .map(|m| m.gbits() / (m.cpu_percent() / 100.0).max(1e-3))
        .collect();
    let mean: Vec<f64> = runs
        .iter()
        .map(|m| m.bytes as f64 / m.frames.max(1) as f64)
        .collect();
    let g = print_row(name, "Gbit/s", &gbits, &cpu);
    let c = print_row("    per second of its own CPU", "Gbit/s", &capacity, &cpu);
    print_row(
        "    bytes per frame (64 000: crossed whole)",
        "B",
        &mean,
        &cpu,
    );
    if per_cpu {
        c
    } else {
        g
    }
}

/// Runs the GSO section.
pub fn run(runs: usize, window: Duration, scratch: &Path) {
    let ns = Netns::new("gso");
    for (direction, once) in [
        (
            "tx",
            tx_once as fn(&Netns, &Path, bool, Duration) -> Measure,
        ),
        ("rx", rx_once),
    ] {
        let mut medians = Vec::new();
        for gso in [true, false] {
            let m: Vec<Measure> = (0..runs).map(|_| once(&ns, scratch, gso, window)).collect();
            let what = if gso { "64 000 B GSO" } else { "1514 B" };
            // rx shares core 1 between the source and the frontend, and the daemon is not always
            // busy: compare what it does per second of its own CPU.
            medians.push(rows(
                &format!("tap {direction} {what} frames"),
                &m,
                direction == "rx",
            ));
        }
        let how = if direction == "rx" {
            " (per CPU second)"
        } else {
            ""
        };
        print_ratio(
            &format!("tap {direction} GSO / 1514 B Gbit/s{how}"),
            medians[0] / medians[1].max(1e-9),
            10.0,
        );
    }
}

/// An idle port: connected, 256-entry rings with buffers posted, no traffic. Its CPU over the
/// window and the daemon's resident memory.
pub fn run_idle(window: Duration, scratch: &Path) {
    let ns = Netns::new("idle");
    let (daemon, socket) = start_daemon(&ns, scratch, 1, true);
    let driver = Driver::start(&socket, FEATURES, OFFLOADS, None, 1);
    std::thread::sleep(Duration::from_secs(1));
    let pid = daemon.0.id();
    let c0 = process_cpu_seconds(pid);
    std::thread::sleep(window);
    let cpu = (process_cpu_seconds(pid) - c0) / window.as_secs_f64() * 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    drop(driver);
    println!(
        "idle tap port (connected, 256-entry rings): cpu {cpu:.1}% over {:.0} s, daemon RSS {:.1} MiB",
        window.as_secs_f64(),
        rss_kib / 1024.0
    );
    let verdict = if cpu < 0.5 && rss_kib <= 16.0 * 1024.0 {
        "met"
    } else {
        "MISSED"
    };
    println!("  => idle: 0% CPU and <= 16 MiB per port: {verdict}");
}
