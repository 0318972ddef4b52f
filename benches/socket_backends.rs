//! Throughput of the socket netdevs (stream, dgram, l2tpv3), batched and with `--no-batching`
//! (one system call per frame) as the in-run reference.
//!
//! The frontend for guest → peer is DPDK's `dpdk-testpmd` with `net_virtio_user` in `txonly`
//! mode on lcores 0,1; for peer → guest it is the in-repo driver (`benches/common/driver.rs`),
//! which sleeps until called, on core 1 beside the bench's source (testpmd's busy `rxonly` lcore
//! starved the source). The daemon (release build) is pinned to core 0; the bench's peer thread
//! runs on core 1. Rates come from the daemon's `x-query-port-stats` counters over a
//! timed window; each figure is the median of `BENCH_RUNS` runs (default 3) with min–max.
//!
//! Run as root after `bash scripts/install-test-deps.sh`:
//! `cargo bench --bench socket_backends` (see docs/performance.md); `BENCH_ONLY=dgram` and
//! `BENCH_DIRS=rx` narrow it down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/driver.rs"]
mod driver;
#[path = "../tests/common/frontend.rs"]
#[allow(dead_code)]
mod frontend;
#[path = "common/testpmd.rs"]
mod testpmd;

use std::io::{Read, Write};
use std::net::UdpSocket;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{
    pin_to_core, process_cpu_seconds, runs_and_window, summary, wait_for_file, CpuCap, Proc, Qmp,
};
use driver::Driver;

const DAEMON: &str = env!("CARGO_BIN_EXE_vhost-user-netd");

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Stream,
    Dgram,
    L2tpv3,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Direction {
    /// Guest (testpmd txonly) → daemon → peer.
    Tx,
    /// Peer → daemon → guest (the in-repo driver).
    Rx,
}

/// The bench's end of the backend: it discards what it gets (tx) or sends as fast as it can (rx).
struct Peer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const L2TP_HEADER: [u8; 8] = [0, 3, 0, 0, 0, 0, 0, 1];

fn ether_frame(size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[..6].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

/// Sets up the peer and returns the daemon's `--netdev` for it.
fn start_peer(kind: Kind, dir: Direction, size: usize, scratch: &Path) -> (Peer, String) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    match kind {
        Kind::Stream => {
            let path = scratch.join("peer.sock");
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path).unwrap();
            let netdev = format!(
                "stream,id=n0,server=off,reconnect=1,addr.type=unix,addr.path={}",
                path.display()
            );
            let thread = std::thread::spawn(move || {
                pin_to_core(1);
                let (mut s, _) = listener.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                s.set_write_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut buf = vec![0u8; 1 << 20];
                let mut wire = Vec::new();
                for _ in 0..256 {
                    wire.extend_from_slice(&(size as u32).to_be_bytes());
                    wire.extend_from_slice(&ether_frame(size));
                }
                while !flag.load(Ordering::Relaxed) {
                    let _ = match dir {
                        Direction::Tx => s.read(&mut buf).map(|_| ()),
                        Direction::Rx => s.write_all(&wire),
                    };
                }
            });
            (
                Peer {
                    stop,
                    thread: Some(thread),
                },
                netdev,
            )
        }
        Kind::Dgram | Kind::L2tpv3 => {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            let peer_port = sock.local_addr().unwrap().port();
            let ours = UdpSocket::bind("127.0.0.1:0").unwrap();
            let our_port = ours.local_addr().unwrap().port();
            drop(ours);
            sock.connect(("127.0.0.1", our_port)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            // Room for many datagrams in flight: on loopback a sender's buffer stays charged
            // until the receiver reads, so a small one makes the source wait for the daemon.
            set_buffer(&sock, libc::SO_SNDBUFFORCE, 8 << 20);
            let netdev = match kind {
                Kind::Dgram => format!(
                    "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={our_port},remote.type=inet,remote.host=127.0.0.1,remote.port={peer_port}"
                ),
                _ => format!(
                    "l2tpv3,id=n0,src=127.0.0.1,dst=127.0.0.1,udp=on,srcport={our_port},dstport={peer_port},txsession=1"
                ),
            };
            let mut datagram = Vec::new();
            if kind == Kind::L2tpv3 {
                datagram.extend_from_slice(&L2TP_HEADER);
            }
            datagram.extend_from_slice(&ether_frame(size));
            let thread = std::thread::spawn(move || {
                pin_to_core(1);
                let mut bufs = vec![vec![0u8; 65_536]; PEER_BATCH];
                while !flag.load(Ordering::Relaxed) {
                    match dir {
                        Direction::Tx => mmsg(&sock, &mut bufs, false),
                        Direction::Rx => {
                            for b in bufs.iter_mut() {
                                b.clear();
                                b.extend_from_slice(&datagram);
                            }
                            mmsg(&sock, &mut bufs, true);
                        }
                    }
                }
            });
            (
                Peer {
                    stop,
                    thread: Some(thread),
                },
                netdev,
            )
        }
    }
}

/// Datagrams per peer system call: the peer must not be what is measured.
const PEER_BATCH: usize = 64;

/// Sets a socket buffer size option (as root, beyond the sysctl maximum).
fn set_buffer(sock: &UdpSocket, option: libc::c_int, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    let _ = vhost_user_netd_backends::sys::setsockopt_int(
        sock.as_raw_fd(),
        libc::SOL_SOCKET,
        option,
        bytes,
    );
}

/// One `sendmmsg` of every buffer, or one `recvmmsg` into them, on a connected socket.
fn mmsg(sock: &UdpSocket, bufs: &mut [Vec<u8>], send: bool) {
    use std::os::fd::AsRawFd;
    let mut iovecs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: if send { b.len() } else { b.capacity() },
        })
        .collect();
    // SAFETY: mmsghdr is plain data; zero is valid.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; bufs.len()];
    for (m, iov) in msgs.iter_mut().zip(iovecs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every message points at one iovec over a live buffer; the vectors outlive the call.
    unsafe {
        if send {
            libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0);
        } else {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            );
        }
    }
}

/// The stats the bench reads.
trait FrameCount {
    fn frames(&mut self, dir: Direction) -> u64;
}

impl FrameCount for Qmp {
    fn frames(&mut self, dir: Direction) -> u64 {
        let stats = self.execute("x-query-port-stats");
        let key = match dir {
            Direction::Tx => "tx-frames",
            Direction::Rx => "rx-frames",
        };
        stats[0]["queue-pairs"][0][key].as_u64().unwrap_or(0)
    }
}

struct Sample {
    frames_per_sec: f64,
    cpu_percent: f64,
}

/// The guest side of a run.
/// Held for its drop: stopping it ends the run.
enum Frontend {
    Testpmd(#[allow(dead_code)] Proc),
    Driver(#[allow(dead_code)] Driver),
}

/// testpmd sending `size`-byte frames as fast as it can (forwarding lcore on core 1).
fn testpmd_txonly(socket: &Path, size: usize) -> Proc {
    let prefix = format!("vunetd-bench-{}", std::process::id());
    Proc(
        testpmd::command(&prefix, 0)
            .arg("--vdev")
            .arg(testpmd::virtio_user(0, socket, 1))
            .args(["--", "--stats-period", "1", "--total-num-mbufs", "8192"])
            .args(["--forward-mode=txonly", &format!("--txpkts={size}")])
            .spawn()
            .expect("spawn dpdk-testpmd (run scripts/install-test-deps.sh)"),
    )
}

fn run_once(
    kind: Kind,
    dir: Direction,
    size: usize,
    batching: bool,
    window: Duration,
    scratch: &Path,
) -> Sample {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).unwrap();
    let (peer, netdev) = start_peer(kind, dir, size, scratch);
    let socket = scratch.join("vm.sock");
    let qmp_path = scratch.join("qmp.sock");
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", DAEMON, "--netdev", &netdev])
        .args(common::daemon_args())
        .arg("--socket-path")
        .arg(&socket)
        .arg("--qmp")
        .arg(&qmp_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if !batching {
        cmd.arg("--no-batching");
    }
    let daemon = Proc(cmd.spawn().expect("spawn daemon"));
    // `BENCH_DAEMON_CPU=25`: the daemon gets a quarter of a core, so it is the bottleneck and
    // frames/s compares what it does with the same CPU, whatever the source can do.
    let _cap = std::env::var("BENCH_DAEMON_CPU")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(|percent| CpuCap::apply(daemon.0.id(), percent));
    let mut qmp = Qmp::connect(&qmp_path);
    wait_for_file(&socket);
    // rx: the in-repo driver, which sleeps until called, so the source keeps core 1 (testpmd's
    // busy-polling rxonly lcore took half of it and its ring then bounded the run).
    let frontend = match dir {
        Direction::Tx => Frontend::Testpmd(testpmd_txonly(&socket, size)),
        Direction::Rx => Frontend::Driver(Driver::start(
            &socket,
            frontend::F_VERSION_1 | frontend::F_EVENT_IDX,
            0,
            None,
            1,
        )),
    };
    // Warm up: until frames flow.
    let deadline = Instant::now() + Duration::from_secs(30);
    while qmp.frames(dir) == 0 {
        assert!(
            Instant::now() < deadline,
            "no frames flow for {kind:?} {dir:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    // The measurement window (timing, not synchronisation).
    let (f0, c0, t0) = (
        qmp.frames(dir),
        process_cpu_seconds(daemon.0.id()),
        Instant::now(),
    );
    std::thread::sleep(window);
    let (f1, c1, t1) = (
        qmp.frames(dir),
        process_cpu_seconds(daemon.0.id()),
        Instant::now(),
    );
    drop(frontend);
    drop(peer);
    drop(daemon);
    let secs = (t1 - t0).as_secs_f64();
    Sample {
        frames_per_sec: (f1 - f0) as f64 / secs,
        cpu_percent: (c1 - c0) / secs * 100.0,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (runs, window) = runs_and_window(3, 2.0);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let scratch: PathBuf =
        std::env::temp_dir().join(format!("vunetd-bench-{}", std::process::id()));
    println!(
        "{:<8} {:<3} {:>5} {:<9} {:>12} {:>21} {:>9} {:>6} {:>12}",
        "backend", "dir", "size", "mode", "frames/s", "min-max", "Gbit/s", "cpu%", "per cpu-s"
    );
    for kind in [Kind::Stream, Kind::Dgram, Kind::L2tpv3] {
        let name = format!("{kind:?}").to_lowercase();
        if !only.is_empty() && !only.split(',').any(|o| o == name) {
            continue;
        }
        for dir in [Direction::Tx, Direction::Rx] {
            let dir_name = match dir {
                Direction::Tx => "tx",
                Direction::Rx => "rx",
            };
            let dirs = std::env::var("BENCH_DIRS").unwrap_or_default();
            if !dirs.is_empty() && !dirs.split(',').any(|d| d == dir_name) {
                continue;
            }
            for size in [64usize, 1500] {
                let mut medians = Vec::new();
                let mut per_cpu_medians = Vec::new();
                for batching in [true, false] {
                    let mut rates = Vec::new();
                    let mut cpu = Vec::new();
                    let mut per_cpu = Vec::new();
                    for _ in 0..runs {
                        let s = run_once(kind, dir, size, batching, window, &scratch);
                        rates.push(s.frames_per_sec);
                        cpu.push(s.cpu_percent);
                        per_cpu.push(s.frames_per_sec / (s.cpu_percent / 100.0).max(1e-3));
                    }
                    let (m, lo, hi) = summary(&rates);
                    let pc = summary(&per_cpu).0;
                    println!(
                        "{:<8} {:<3} {:>5} {:<9} {:>12.0} {:>21} {:>9.3} {:>6.0} {:>12.0}",
                        name,
                        dir_name,
                        size,
                        if batching { "batched" } else { "unbatched" },
                        m,
                        format!("{:.0}-{:.0}", lo, hi),
                        m * size as f64 * 8.0 / 1e9,
                        summary(&cpu).0,
                        pc
                    );
                    medians.push(m);
                    per_cpu_medians.push(pc);
                }
                println!(
                    "{:<8} {:<3} {:>5} ratio     {:>12.2}x  per cpu-s {:.2}x",
                    name,
                    dir_name,
                    size,
                    medians[0] / medians[1].max(1.0),
                    per_cpu_medians[0] / per_cpu_medians[1].max(1.0)
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
