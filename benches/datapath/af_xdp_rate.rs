//! The af-xdp backend at 64 and 1500 bytes per direction on a veth pair, against the tap backend
//! and against DPDK's own `net_vhost` + `net_af_xdp` PMDs on the same veth, same frontend, same
//! run.
//!
//! - **tx** (guest → veth): testpmd `txonly` (core 1) fills the backend's rings; the backend
//!   (core 0) puts each frame on the veth. The rate is the peer end's `rx_packets`.
//! - **rx** (veth → guest): the `AF_PACKET` source (core 1) sends into the peer end as fast as
//!   it can; the backend moves what reaches its AF_XDP socket into testpmd's `rxonly` rings (on
//!   core 1 too). The rate is what testpmd received; as for the tap, the source limits the
//!   plain rate, so the comparison is frames per second of the backend's own CPU.
//!
//! The reference is one `dpdk-testpmd` in `io` mode between `net_vhost` and `net_af_xdp`,
//! busy-polling core 0. It is also measured idle: a daemon with a connected, silent frontend.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{process_cpu_seconds, wait_for_file, Proc};
use crate::frames;
use crate::generator::Generator;
use crate::netns::Netns;
use crate::raw_tap::{tap_stats, Measure};
use crate::report::print_ratio;
use crate::tap_rate::rows;
use crate::{tap_rate, testpmd, DAEMON};

/// The backend's end of the veth pair.
const XDP_IF: &str = "vbxsk0";
/// The other end, where frames are counted (tx) or sent from (rx).
const PEER_IF: &str = "vbpeer0";
/// Seconds after start before counting.
const WARM_UP: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Daemon,
    Dpdk,
}

/// `BENCH_XDP_MODE=native|skb` picks the daemon's attach mode (default: native, else skb, as
/// the netdev does unasked).
fn mode_option() -> String {
    match std::env::var("BENCH_XDP_MODE") {
        Ok(mode) if !mode.is_empty() => format!(",mode={mode}"),
        _ => String::new(),
    }
}

fn veth(ns: &Netns) {
    ns.ip(&[
        "link", "add", XDP_IF, "type", "veth", "peer", "name", PEER_IF,
    ]);
    for ifname in [XDP_IF, PEER_IF] {
        ns.ip(&["link", "set", ifname, "txqueuelen", "10000", "up"]);
    }
}

/// The backend on core 0, serving `socket`.
fn start_backend(ns: &Netns, backend: Backend, socket: &Path, tag: &str) -> Proc {
    let _ = std::fs::remove_file(socket);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name]);
    let proc = match backend {
        Backend::Daemon => Proc(
            cmd.args(["taskset", "-c", "0", DAEMON])
                .args(crate::common::daemon_args())
                .arg("--socket-path")
                .arg(socket)
                .arg("--netdev")
                .arg(format!("af-xdp,id=n0,ifname={XDP_IF}{}", mode_option()))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn daemon"),
        ),
        Backend::Dpdk => {
            // testpmd::command's EAL arguments, inside the namespace, forwarding on core 0.
            let reference = testpmd::command(&format!("vunetd-xdpref-{tag}"), 1);
            let args: Vec<_> = reference.get_args().map(|a| a.to_owned()).collect();
            Proc(
                cmd.arg(reference.get_program())
                    .args(args)
                    .arg("--vdev")
                    .arg(format!("net_vhost0,iface={},queues=1", socket.display()))
                    .arg("--vdev")
                    .arg(format!(
                        "net_af_xdp0,iface={XDP_IF},start_queue=0,queue_count=1"
                    ))
                    // With a stats period testpmd runs until killed instead of reading stdin.
                    .args(["--", "--forward-mode=io", "--total-num-mbufs", "8192"])
                    .args(["--stats-period", "1"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn dpdk-testpmd with net_af_xdp (librte-net-af-xdp23)"),
            )
        }
    };
    wait_for_file(socket);
    proc
}

/// The frontend, with the frames it has received so far (testpmd's `RX-packets`).
struct Frontend {
    _proc: Proc,
    received: Arc<AtomicU64>,
}

fn start_frontend(socket: &Path, mode: &str, size: usize, tag: &str) -> Frontend {
    let mut proc = Proc(
        testpmd::command(&format!("vunetd-xdpfe-{tag}"), 0)
            .arg("--vdev")
            .arg(testpmd::virtio_user(0, socket, 1))
            .args(["--", "--stats-period", "1", "--total-num-mbufs", "8192"])
            .arg(format!("--forward-mode={mode}"))
            .arg(format!("--txpkts={size}"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn dpdk-testpmd"),
    );
    let received = Arc::new(AtomicU64::new(0));
    let out = BufReader::new(proc.0.stdout.take().expect("stdout"));
    let counter = received.clone();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if let Some(rest) = line.trim().strip_prefix("RX-packets:") {
                if let Some(n) = rest.split_whitespace().next().and_then(|v| v.parse().ok()) {
                    counter.store(n, Ordering::Relaxed);
                }
            }
        }
    });
    Frontend {
        _proc: proc,
        received,
    }
}

/// Counts `window` of `frames` and the backend's CPU, after a warm-up.
fn measure(backend: &Proc, window: Duration, frames: impl Fn() -> u64) -> Measure {
    std::thread::sleep(WARM_UP);
    let pid = backend.0.id();
    let (f0, c0, t0) = (frames(), process_cpu_seconds(pid), Instant::now());
    std::thread::sleep(window);
    let (f1, c1, t1) = (frames(), process_cpu_seconds(pid), Instant::now());
    Measure {
        frames: f1.saturating_sub(f0),
        bytes: 0,
        seconds: (t1 - t0).as_secs_f64(),
        cpu: c1 - c0,
    }
}

/// Where and how long each run measures.
struct Runs<'a> {
    ns: &'a Netns,
    window: Duration,
    scratch: &'a Path,
}

impl Runs<'_> {
    /// `backend` serving a testpmd in `mode`, on a fresh socket.
    fn start(&self, backend: Backend, mode: &str, size: usize, tag: &str) -> (Proc, Frontend) {
        let socket = self.scratch.join("xdp.sock");
        let proc = start_backend(self.ns, backend, &socket, tag);
        let frontend = start_frontend(&socket, mode, size, tag);
        (proc, frontend)
    }

    fn tx(&self, backend: Backend, size: usize, tag: &str) -> Measure {
        let (proc, _fe) = self.start(backend, "txonly", size, tag);
        measure(&proc, self.window, || {
            tap_stats(self.ns, PEER_IF).rx_packets
        })
    }

    /// Rx, and the backend's CPU share in the second before the source starts (frontend
    /// connected, no traffic).
    fn rx(&self, backend: Backend, size: usize, tag: &str) -> (Measure, f64) {
        let (proc, fe) = self.start(backend, "rxonly", size, tag);
        std::thread::sleep(WARM_UP);
        let pid = proc.0.id();
        let c0 = process_cpu_seconds(pid);
        std::thread::sleep(Duration::from_secs(1));
        let idle = (process_cpu_seconds(pid) - c0) * 100.0;
        let _source = Generator::start(self.ns, PEER_IF, frames::udp(size), None, 1);
        let m = measure(&proc, self.window, || fe.received.load(Ordering::Relaxed));
        (m, idle)
    }
}

/// Runs the section: tx and rx at 64 and 1500 bytes; af-xdp, tap and DPDK alternating run by run.
pub fn run(runs: usize, window: Duration, scratch: &Path) {
    let ns = Netns::new("xdp");
    veth(&ns);
    let xdp_runs = Runs {
        ns: &ns,
        window,
        scratch,
    };
    let tap_ns = Netns::new("xdptap");
    let pid = std::process::id();
    let dirs = std::env::var("BENCH_DIRS").unwrap_or_default();
    let wanted = |d: &str| dirs.is_empty() || dirs.split(',').any(|x| x == d);
    for size in [64usize, 1500] {
        if wanted("tx") {
            let (mut xdp, mut tap, mut dpdk) = (Vec::new(), Vec::new(), Vec::new());
            for r in 0..runs {
                let tag = format!("{pid}-tx-{size}-{r}");
                xdp.push(xdp_runs.tx(Backend::Daemon, size, &tag));
                tap.push(tap_rate::daemon_tx(
                    &tap_ns,
                    scratch,
                    size,
                    1,
                    true,
                    window,
                    &format!("vunetd-xdptap-{tag}"),
                ));
                dpdk.push(xdp_runs.tx(Backend::Dpdk, size, &tag));
            }
            let a = rows(&format!("af-xdp tx {size} B: vhost-user-netd"), &xdp, false);
            let b = rows(&format!("af-xdp tx {size} B: tap backend"), &tap, false);
            let c = rows(
                &format!("af-xdp tx {size} B: DPDK vhost+af_xdp"),
                &dpdk,
                false,
            );
            print_ratio(&format!("af-xdp tx {size} B / tap"), a / b.max(1.0), 1.2);
            print_ratio(&format!("af-xdp tx {size} B / DPDK"), a / c.max(1.0), 0.8);
        }
        if wanted("rx") {
            let (mut xdp, mut tap, mut dpdk, mut idle) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for r in 0..runs {
                let tag = format!("{pid}-rx-{size}-{r}");
                let (m, i) = xdp_runs.rx(Backend::Daemon, size, &tag);
                xdp.push(m);
                idle.push(i);
                tap.push(tap_rate::daemon_rx(
                    &tap_ns,
                    scratch,
                    size,
                    window,
                    &format!("vunetd-xdptap-{tag}"),
                ));
                dpdk.push(xdp_runs.rx(Backend::Dpdk, size, &tag).0);
            }
            let a = rows(&format!("af-xdp rx {size} B: vhost-user-netd"), &xdp, true);
            let b = rows(&format!("af-xdp rx {size} B: tap backend"), &tap, true);
            let c = rows(
                &format!("af-xdp rx {size} B: DPDK vhost+af_xdp"),
                &dpdk,
                true,
            );
            println!(
                "    vhost-user-netd CPU, frontend connected, no traffic: {:.1}%",
                crate::common::summary(&idle).0
            );
            let name = format!("af-xdp rx {size} B / tap (per CPU second)");
            print_ratio(&name, a / b.max(1.0), 1.5);
            let (xr, dr) = (
                crate::common::summary(
                    &xdp.iter()
                        .map(Measure::frames_per_second)
                        .collect::<Vec<_>>(),
                )
                .0,
                crate::common::summary(
                    &dpdk
                        .iter()
                        .map(Measure::frames_per_second)
                        .collect::<Vec<_>>(),
                )
                .0,
            );
            print_ratio(
                &format!("af-xdp rx {size} B / DPDK (frames/s)"),
                xr / dr.max(1.0),
                0.8,
            );
            print_ratio(
                &format!("af-xdp rx {size} B / DPDK (per CPU second)"),
                a / c.max(1.0),
                0.8,
            );
        }
    }
}
