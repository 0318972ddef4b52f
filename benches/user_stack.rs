//! TCP bulk throughput through the user-mode stack (`-netdev user`), guest → host and host →
//! guest, against QEMU's own `-netdev user` (libslirp) on the same workload in the same run.
//!
//! The "guest" is the kernel's TCP stack in a network namespace the bench creates, behind a tap
//! (`10.0.2.15/24`, default route via `10.0.2.2`, MTU 1500):
//! - **vhost-user-netd, offloads**: the daemon (release build, default `user` netdev) and, as its
//!   vhost-user frontend, a bridge thread in this process that moves frames between the tap and
//!   the split rings (one `read`/`write` per frame, one kick per batch; no busy polling). The tap
//!   has a vnet header and checksum/TSO offloads, and the bridge negotiates the matching virtio
//!   features, as a Linux guest's virtio-net driver does: TCP crosses as 64 KiB GSO frames.
//! - **vhost-user-netd, plain**: the same without offloads (1514-byte frames, full checksums).
//! - **libslirp**: `qemu-system-x86_64 -machine none` with a plain tap (`-netdev tap,fd=`) and a
//!   `user` netdev joined by a hub, so QEMU's event loop moves the frames itself. QEMU gives
//!   libslirp no offloads: a guest on `-netdev user` sends and receives 1514-byte frames.
//!
//! A TCP connection from the namespace to `10.0.2.2` (which both stacks map to the host's
//! loopback) carries the bulk data; its receiver counts bytes over a timed window after a
//! warm-up. Each figure is the median of `BENCH_RUNS` runs (default 3) of `BENCH_SECONDS`
//! (default 3) with min–max, plus the CPU the stack used (daemon + bridge thread, or QEMU).
//!
//! Run as root after `bash scripts/install-test-deps.sh`: `cargo bench --bench user_stack`
//! (`BENCH_DAEMON_ARGS="--poll-us 0"` passes options to the daemon).

#![allow(clippy::unwrap_used, clippy::expect_used)]

// The integration tests' frontend, namespaces and taps; each bench uses a subset.
#[allow(dead_code)]
#[path = "../tests/common/frontend.rs"]
mod frontend;
#[allow(dead_code)]
#[path = "../tests/common/netns.rs"]
mod netns;
#[allow(dead_code)]
#[path = "../tests/common/tap.rs"]
mod tap;

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{
    cpu_seconds, process_cpu_seconds, runs_and_window, summary, wait_for_file, Proc, Qmp,
};
use frontend::{RawDescriptor, TestFrontend, F_EVENT_IDX, F_MRG_RXBUF, F_VERSION_1, QUEUE_SIZE};
use netns::Netns;
use vm_memory::{GuestAddress, GuestMemoryBackend};

const DAEMON: &str = env!("CARGO_BIN_EXE_vhost-user-netd");
const TAP: &str = "vubench0";
/// The virtio-net header (VERSION_1, no mergeable buffers).
const VNET_HDR: usize = 12;
/// Buffer per descriptor: a 64 KiB GSO frame and its header fit.
const BUF: u64 = 66 * 1024;
const F_CSUM: u64 = 1 << 0;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_GUEST_TSO4: u64 = 1 << 7;
const F_GUEST_TSO6: u64 = 1 << 8;
const F_HOST_TSO4: u64 = 1 << 11;
const F_HOST_TSO6: u64 = 1 << 12;
const OFFLOAD_FEATURES: u64 =
    F_CSUM | F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_HOST_TSO4 | F_HOST_TSO6;
/// Bytes per application write/read on both ends of the bulk connection.
const CHUNK: usize = 128 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stack {
    /// The daemon, with a frontend that negotiates checksum and TSO offloads.
    Offloads,
    /// The daemon, with a frontend that negotiates none.
    Plain,
    /// QEMU's `-netdev user`.
    Libslirp,
    /// passt `--vhost-user` (`PASST`, or what `scripts/build-passt.sh` built), on the same
    /// frontend and tap.
    Passt,
}

impl Stack {
    /// Its name in `BENCH_STACKS`.
    fn key(self) -> &'static str {
        match self {
            Stack::Offloads => "offloads",
            Stack::Plain => "plain",
            Stack::Libslirp => "libslirp",
            Stack::Passt => "passt",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Stack::Offloads => "vhost-user-netd",
            Stack::Plain => "vhost-user-netd (no offloads)",
            Stack::Libslirp => "libslirp (QEMU)",
            Stack::Passt => "passt --vhost-user",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Direction {
    GuestToHost,
    HostToGuest,
}

/// The guest namespace with the tap in it, addressed as QEMU's default guest.
fn guest_namespace(tap_fd: &OwnedFd) -> Netns {
    let _ = tap_fd;
    let ns = Netns::new("bench");
    let status = Command::new("ip")
        .args(["link", "set", TAP, "netns", &ns.name])
        .status()
        .unwrap();
    assert!(status.success(), "move {TAP} into {}", ns.name);
    ns.ip(&["addr", "add", "10.0.2.15/24", "dev", TAP]);
    ns.ip(&["link", "set", TAP, "up"]);
    ns.ip(&["route", "add", "default", "via", "10.0.2.2"]);
    ns.ip(&["-6", "addr", "add", "fec0::15/64", "dev", TAP, "nodad"]);
    ns
}

/// Moves frames between the tap and the daemon's rings until `stop`.
struct Bridge {
    stop: Arc<AtomicBool>,
    tid: Arc<AtomicI32>,
    thread: Option<JoinHandle<()>>,
}

impl Bridge {
    fn start(socket: &Path, tap: OwnedFd, stack: Stack) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(AtomicI32::new(0));
        let mut fe = match stack {
            Stack::Offloads => {
                let fe =
                    TestFrontend::connect(socket, 1, F_VERSION_1 | F_EVENT_IDX | OFFLOAD_FEATURES);
                assert_eq!(
                    fe.acked & OFFLOAD_FEATURES,
                    OFFLOAD_FEATURES,
                    "offloads offered"
                );
                fe
            }
            Stack::Plain => TestFrontend::connect(socket, 1, F_VERSION_1 | F_EVENT_IDX),
            // passt offers VERSION_1 and MRG_RXBUF only (same 12-byte header).
            _ => TestFrontend::connect_other(socket, 1, F_VERSION_1 | F_MRG_RXBUF),
        };
        let (flag, tid_out) = (stop.clone(), tid.clone());
        let thread = std::thread::spawn(move || {
            // SAFETY: gettid has no arguments and cannot fail.
            tid_out.store(unsafe { libc::gettid() }, Ordering::SeqCst);
            bridge_loop(&mut fe, &tap, stack, &flag);
        });
        Bridge {
            stop,
            tid,
            thread: Some(thread),
        }
    }

    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&format!(
            "/proc/self/task/{}/stat",
            self.tid.load(Ordering::SeqCst)
        ))
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The host address of guest-physical `addr` in the frontend's RAM.
fn host_ptr(fe: &TestFrontend, addr: u64) -> *mut u8 {
    fe.ram
        .mem
        .get_host_address(GuestAddress(addr))
        .expect("buffer inside guest RAM")
}

/// passt's frames toward the guest carry TCP with a zero checksum and `DATA_VALID`, which a
/// tap cannot take (the kernel would verify the zero): they become partial checksums, as a
/// virtio-net guest's driver would treat them (the pseudo-header sum, `NEEDS_CSUM`).
fn data_valid_to_partial(buf: &mut [u8]) {
    const F_NEEDS_CSUM: u8 = 1;
    const F_DATA_VALID: u8 = 2;
    if buf.len() < VNET_HDR + 14 + 40 || buf[0] & F_DATA_VALID == 0 {
        return;
    }
    let frame = &buf[VNET_HDR..];
    let (ip_hdr, tcp_len, sum) = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 if frame[14 + 9] == 6 => {
            let hl = usize::from(frame[14] & 0xf) * 4;
            let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
            let tcp_len = total.saturating_sub(hl);
            (hl, tcp_len, pseudo_sum(&frame[26..34], tcp_len))
        }
        0x86dd if frame[14 + 6] == 6 => {
            let tcp_len = usize::from(u16::from_be_bytes([frame[18], frame[19]]));
            (40, tcp_len, pseudo_sum(&frame[22..54], tcp_len))
        }
        _ => return,
    };
    let start = 14 + ip_hdr;
    if VNET_HDR + start + 18 > buf.len() || tcp_len < 20 {
        return;
    }
    buf[0] = F_NEEDS_CSUM;
    buf[6..8].copy_from_slice(&(start as u16).to_le_bytes());
    buf[8..10].copy_from_slice(&16u16.to_le_bytes());
    buf[VNET_HDR + start + 16..VNET_HDR + start + 18].copy_from_slice(&sum.to_be_bytes());
}

/// The folded (not complemented) TCP pseudo-header sum over `addresses` (source then
/// destination) and `tcp_len`.
fn pseudo_sum(addresses: &[u8], tcp_len: usize) -> u16 {
    let mut sum: u32 = 6 + tcp_len as u32;
    for pair in addresses.chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// With a vnet-header tap (every stack but "no offloads") the tap carries the virtio-net header
/// itself (same layout, 12 bytes): buffers go to and from it whole. Without, the header is all
/// zero and stays out of the tap.
fn bridge_loop(fe: &mut TestFrontend, tap: &OwnedFd, stack: Stack, stop: &AtomicBool) {
    const RX: usize = 0;
    const TX: usize = 1;
    let skip = if stack == Stack::Plain { VNET_HDR } else { 0 };
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no pointers involved.
    unsafe {
        let flags = libc::fcntl(tap.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(tap.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    fe.rings[RX].post_buffers(&fe.ram, 0, QUEUE_SIZE, BUF as u32, true);
    fe.kick(RX);
    let mut free_tx: Vec<u16> = (0..QUEUE_SIZE).collect();
    let mut heads = Vec::with_capacity(usize::from(QUEUE_SIZE));
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [
            libc::pollfd {
                fd: tap.as_raw_fd(),
                events: if free_tx.is_empty() { 0 } else { libc::POLLIN },
                revents: 0,
            },
            libc::pollfd {
                fd: fe.calls[RX].as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: fe.calls[TX].as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of three pollfds for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), 3, 100) };
        let _ = fe.calls[RX].read();
        let _ = fe.calls[TX].read();

        // Daemon → guest: each used rx buffer becomes one tap write, then goes back on the ring.
        heads.clear();
        for (id, len) in fe.rings[RX].take_used(&fe.ram) {
            let slot = id as u16;
            let addr = fe.rings[RX].buffer_addr(slot, BUF);
            let frame_len = (len as usize).saturating_sub(skip);
            let ptr = host_ptr(fe, addr + skip as u64);
            if stack == Stack::Passt {
                // SAFETY: the buffer lies inside the mapped guest RAM, the device has filled
                // `len` bytes of it and handed it back (it is off the ring until reposted).
                data_valid_to_partial(unsafe { std::slice::from_raw_parts_mut(ptr, frame_len) });
            }
            // SAFETY: the buffer lies inside the mapped guest RAM and the device has filled
            // `len` bytes of it; write only reads from it.
            unsafe { libc::write(tap.as_raw_fd(), ptr.cast(), frame_len) };
            heads.push(slot);
        }
        if !heads.is_empty() {
            fe.rings[RX].make_available(&fe.ram, &heads);
            fe.kick(RX);
        }

        // Guest → daemon: reclaim sent buffers, then read frames from the tap into free ones.
        for (id, _) in fe.rings[TX].take_used(&fe.ram) {
            free_tx.push(id as u16);
        }
        heads.clear();
        while let Some(&slot) = free_tx.last() {
            let addr = fe.rings[TX].buffer_addr(slot, BUF);
            let ptr = host_ptr(fe, addr + skip as u64);
            // SAFETY: the buffer lies inside the mapped guest RAM, is BUF bytes long and is not
            // on the ring (the device does not touch it) until it is made available below.
            let n = unsafe { libc::read(tap.as_raw_fd(), ptr.cast(), BUF as usize - skip) };
            if n <= 0 {
                break;
            }
            free_tx.pop();
            let desc = RawDescriptor::new(addr, (n as usize + skip) as u32, 0, 0);
            fe.ram
                .write_descs(fe.rings[TX].desc + 16 * u64::from(slot), &[desc]);
            heads.push(slot);
        }
        if !heads.is_empty() {
            fe.rings[TX].make_available(&fe.ram, &heads);
            fe.kick(TX);
        }
    }
}

/// The stack under test with the tap attached; dropped to tear it down.
struct Running {
    process: Proc,
    bridge: Option<Bridge>,
    qmp: Option<Qmp>,
}

impl Running {
    /// The daemon's frames and bytes toward the guest (`rx`) or from it (`tx`), and the kicks
    /// it took and the interrupts it sent.
    fn counters(&mut self, dir: Direction) -> Option<[u64; 4]> {
        let stats = self.qmp.as_mut()?.execute("x-query-port-stats");
        let pair = &stats[0]["queue-pairs"][0];
        let (f, b) = match dir {
            Direction::HostToGuest => ("rx-frames", "rx-bytes"),
            Direction::GuestToHost => ("tx-frames", "tx-bytes"),
        };
        Some([
            pair[f].as_u64()?,
            pair[b].as_u64()?,
            pair["kicks"].as_u64()?,
            pair["interrupts"].as_u64()?,
        ])
    }

    fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(self.process.0.id())
            + self.bridge.as_ref().map_or(0.0, Bridge::cpu_seconds)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // The bridge goes first, while the daemon still answers it.
        self.bridge.take();
    }
}

fn start_stack(stack: Stack, tap: OwnedFd, scratch: &Path) -> Running {
    match stack {
        Stack::Offloads | Stack::Plain => {
            let socket = scratch.join("vm.sock");
            let qmp = scratch.join("qmp.sock");
            let process = Proc(
                Command::new(DAEMON)
                    .arg("--socket-path")
                    .arg(&socket)
                    .arg("--qmp")
                    .arg(&qmp)
                    .args(common::daemon_args())
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("spawn daemon"),
            );
            let qmp = Qmp::connect(&qmp);
            wait_for_file(&socket);
            let bridge = Bridge::start(&socket, tap, stack);
            Running {
                process,
                bridge: Some(bridge),
                qmp: Some(qmp),
            }
        }
        Stack::Passt => {
            let socket = scratch.join("passt.sock");
            let passt = passt_binary().expect("passt binary");
            // The bench's guest: QEMU's user-mode addresses, the gateway mapped to the host's
            // loopback as both other stacks do.
            let process = Proc(
                Command::new(passt)
                    .args(["--vhost-user", "--foreground", "--quiet", "--socket"])
                    .arg(&socket)
                    .args(["-a", "10.0.2.15", "-n", "24", "-g", "10.0.2.2"])
                    .args(["-a", "fec0::15", "-g", "fec0::2"])
                    .args(["--map-host-loopback", "10.0.2.2"])
                    .args(["--map-host-loopback", "fec0::2"])
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("spawn passt"),
            );
            wait_for_file(&socket);
            let bridge = Bridge::start(&socket, tap, stack);
            Running {
                process,
                bridge: Some(bridge),
                qmp: None,
            }
        }
        Stack::Libslirp => {
            let raw = tap.as_raw_fd();
            let mut cmd = Command::new("qemu-system-x86_64");
            cmd.args(["-machine", "none", "-nodefaults", "-display", "none"])
                .arg("-netdev")
                .arg(format!("tap,id=t,fd={raw}"))
                .args(["-netdev", "hubport,id=h0,hubid=0,netdev=t"])
                .args(["-netdev", "user,id=u"])
                .args(["-netdev", "hubport,id=h1,hubid=0,netdev=u"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: between fork and exec only fcntl runs, which is async-signal-safe; `raw`
            // stays open in the parent until the child has been spawned.
            unsafe {
                cmd.pre_exec(move || {
                    // The tap survives exec in the child only.
                    if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let process = Proc(cmd.spawn().expect("spawn qemu-system-x86_64"));
            drop(tap);
            Running {
                process,
                bridge: None,
                qmp: None,
            }
        }
    }
}

/// The bulk connection: the guest connects out to `10.0.2.2:port`, one side writes, the other
/// counts what it reads.
struct Transfer {
    received: Arc<AtomicU64>,
    sockets: Vec<TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Transfer {
    fn drop(&mut self) {
        for s in &self.sockets {
            let _ = s.shutdown(Shutdown::Both);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn pump(mut s: TcpStream, send: bool, received: &AtomicU64) {
    let mut buf = vec![0x5au8; CHUNK];
    loop {
        if send {
            if s.write_all(&buf).is_err() {
                return;
            }
        } else {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
    }
}

fn start_transfer(ns: &Netns, dir: Direction, v6: bool) -> Transfer {
    let (listen, gateway): (std::net::IpAddr, std::net::IpAddr) = if v6 {
        ("::1".parse().unwrap(), "fec0::2".parse().unwrap())
    } else {
        ("127.0.0.1".parse().unwrap(), "10.0.2.2".parse().unwrap())
    };
    let listener = TcpListener::bind((listen, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(AtomicU64::new(0));
    let guest = ns.spawn(move || {
        // The stack may still be starting: the first SYNs can go unanswered.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match TcpStream::connect_timeout(&(gateway, port).into(), Duration::from_secs(2)) {
                Ok(s) => return s,
                Err(e) => assert!(Instant::now() < deadline, "guest connect: {e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let (host, _) = listener.accept().unwrap();
    let guest = guest.join().unwrap();
    let sockets = vec![host.try_clone().unwrap(), guest.try_clone().unwrap()];
    let (sender, receiver) = match dir {
        Direction::GuestToHost => (guest, host),
        Direction::HostToGuest => (host, guest),
    };
    let r = received.clone();
    let threads = vec![
        std::thread::spawn(move || pump(sender, true, &AtomicU64::new(0))),
        std::thread::spawn(move || pump(receiver, false, &r)),
    ];
    Transfer {
        received,
        sockets,
        threads,
    }
}

struct Sample {
    gbit_per_sec: f64,
    cpu_percent: f64,
    /// Mean frame size the daemon moved in the data direction (0 for libslirp).
    mean_frame: f64,
    kicks_per_mb: f64,
    irqs_per_mb: f64,
}

fn run_once(stack: Stack, dir: Direction, v6: bool, window: Duration, scratch: &Path) -> Sample {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).unwrap();
    let tap = match stack {
        Stack::Offloads => tap::open_offload_tap(TAP),
        // A vnet header (to present passt's checksums to the tap), no offloads from the kernel:
        // passt negotiates none.
        Stack::Passt => tap::open_vnet_tap(TAP, 0),
        Stack::Plain | Stack::Libslirp => tap::open_plain_tap(TAP),
    };
    let ns = guest_namespace(&tap);
    let mut running = start_stack(stack, tap, scratch);
    let transfer = start_transfer(&ns, dir, v6);
    // Warm-up: TCP's slow start and the first buffers (timing, not synchronisation).
    std::thread::sleep(Duration::from_millis(500));
    let (b0, c0, t0) = (
        transfer.received.load(Ordering::Relaxed),
        running.cpu_seconds(),
        Instant::now(),
    );
    let d0 = running.counters(dir);
    std::thread::sleep(window);
    let (b1, c1, t1) = (
        transfer.received.load(Ordering::Relaxed),
        running.cpu_seconds(),
        Instant::now(),
    );
    // Mean frame size, and kicks and interrupts per MB moved (what polling saves).
    let (mean_frame, kicks_per_mb, irqs_per_mb) = match (d0, running.counters(dir)) {
        (Some(a), Some(b)) if b[0] > a[0] => {
            let mb = (b[1] - a[1]) as f64 / 1e6;
            (
                (b[1] - a[1]) as f64 / (b[0] - a[0]) as f64,
                (b[2] - a[2]) as f64 / mb,
                (b[3] - a[3]) as f64 / mb,
            )
        }
        _ => (0.0, 0.0, 0.0),
    };
    drop(transfer);
    drop(running);
    drop(ns);
    let secs = (t1 - t0).as_secs_f64();
    Sample {
        gbit_per_sec: (b1 - b0) as f64 * 8.0 / secs / 1e9,
        cpu_percent: (c1 - c0) / secs * 100.0,
        mean_frame,
        kicks_per_mb,
        irqs_per_mb,
    }
}

/// The daemon's CPU while its guest holds an established TCP connection that carries nothing
/// (a frontend attached, rings running): it should sleep.
fn idle(window: Duration, scratch: &Path) {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).unwrap();
    let tap = tap::open_offload_tap(TAP);
    let ns = guest_namespace(&tap);
    let running = start_stack(Stack::Offloads, tap, scratch);
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let guest = ns.spawn(move || TcpStream::connect(("10.0.2.2", port)).unwrap());
    let (host, _) = listener.accept().unwrap();
    let guest = guest.join().unwrap();
    // Let the handshake's last timers run out (timing, not synchronisation).
    std::thread::sleep(Duration::from_secs(1));
    let daemon = running.process.0.id();
    let c0 = process_cpu_seconds(daemon);
    std::thread::sleep(window);
    let cpu = (process_cpu_seconds(daemon) - c0) / window.as_secs_f64() * 100.0;
    println!(
        "{:<30} {:<16} {:>9} {:>15} {:>6.1}",
        "vhost-user-netd", "idle, 1 flow", "-", "-", cpu
    );
    drop((host, guest, running, ns));
}

/// passt with vhost-user support: `PASST`, else the one `scripts/build-passt.sh` builds.
fn passt_binary() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PASST").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/.work/passt/passt"),
        std::path::PathBuf::from,
    );
    path.exists().then_some(path)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (runs, window) = runs_and_window(3, 3.0);
    let scratch = std::env::temp_dir().join(format!("vunetd-bench-user-{}", std::process::id()));
    println!(
        "{:<30} {:<16} {:>9} {:>15} {:>6} {:>10} {:>8} {:>8}",
        "stack", "direction", "Gbit/s", "min-max", "cpu%", "frame B", "kicks/MB", "irqs/MB"
    );
    let mut stacks = vec![Stack::Offloads, Stack::Plain, Stack::Libslirp];
    if passt_binary().is_some() {
        stacks.push(Stack::Passt);
    } else {
        println!(
            "passt: skipped (no passt with vhost-user: set PASST, or run scripts/build-passt.sh)"
        );
    }
    // BENCH_STACKS=offloads,plain,libslirp,passt picks stacks (all by default).
    let picked = std::env::var("BENCH_STACKS").unwrap_or_default();
    stacks.retain(|s| picked.is_empty() || picked.split(',').any(|p| p == s.key()));
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |name: String| only.is_empty() || only.split(',').any(|o| o == name);
    // BENCH_IP=4 (the default), 6, or 4,6 for both in one run (BENCH_IPV6=1 means 6).
    let families = std::env::var("BENCH_IP").unwrap_or_else(|_| {
        if std::env::var_os("BENCH_IPV6").is_some() {
            "6".into()
        } else {
            "4".into()
        }
    });
    let mut by_family: Vec<(bool, Direction, Stack, f64)> = Vec::new();
    for v6 in [false, true] {
        if !families.split(',').any(|f| f == if v6 { "6" } else { "4" }) {
            continue;
        }
        let family = if v6 { "v6" } else { "v4" };
        for dir in [Direction::GuestToHost, Direction::HostToGuest] {
            if !wanted(format!("{dir:?}").to_lowercase()) {
                continue;
            }
            let label = format!("{dir:?}/{family}");
            let mut medians = Vec::new();
            for &stack in &stacks {
                let samples: Vec<Sample> = (0..runs)
                    .map(|_| run_once(stack, dir, v6, window, &scratch))
                    .collect();
                let rates: Vec<f64> = samples.iter().map(|s| s.gbit_per_sec).collect();
                let cpu: Vec<f64> = samples.iter().map(|s| s.cpu_percent).collect();
                let frame: Vec<f64> = samples.iter().map(|s| s.mean_frame).collect();
                let kicks: Vec<f64> = samples.iter().map(|s| s.kicks_per_mb).collect();
                let irqs: Vec<f64> = samples.iter().map(|s| s.irqs_per_mb).collect();
                let (m, lo, hi) = summary(&rates);
                println!(
                    "{:<30} {:<16} {:>9.3} {:>15} {:>6.0} {:>10.0} {:>8.1} {:>8.1}",
                    stack.label(),
                    label,
                    m,
                    format!("{lo:.2}-{hi:.2}"),
                    summary(&cpu).0,
                    summary(&frame).0,
                    summary(&kicks).0,
                    summary(&irqs).0
                );
                medians.push(m);
                by_family.push((v6, dir, stack, m));
            }
            let median = |s: Stack| stacks.iter().position(|&x| x == s).map(|i| medians[i]);
            for reference in [Stack::Libslirp, Stack::Passt] {
                let Some(r) = median(reference) else { continue };
                let ratio =
                    |s| median(s).map_or("-".to_string(), |m| format!("{:.2}x", m / r.max(1e-9)));
                println!(
                    "{:<30} {:<16} {:>9} (no offloads: {})",
                    format!("vhost-user-netd / {}", reference.key()),
                    label,
                    ratio(Stack::Offloads),
                    ratio(Stack::Plain)
                );
            }
        }
    }
    if wanted("idle".into()) {
        idle(window, &scratch);
    }
    // Both families in one run: IPv6 against IPv4, per stack and direction.
    for &(_, dir, stack, m6) in by_family.iter().filter(|f| f.0) {
        if let Some(&(_, _, _, m4)) = by_family
            .iter()
            .find(|f| !f.0 && f.1 == dir && f.2 == stack)
        {
            println!(
                "{:<30} {:<16} {:>8.2}x  IPv6 / IPv4",
                stack.label(),
                format!("{dir:?}"),
                m6 / m4.max(1e-9)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
