//! Each port is a fault domain: whatever one frontend or one QMP client does, the other ports
//! keep forwarding, QMP keeps answering and SIGTERM still ends the daemon at once.
//!
//! One daemon process with two ports on `dgram` netdevs (the test holds the far UDP ends):
//! port `a` gets the hostile input, port `b` an in-process frontend whose frames are checked
//! after every attack.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::frontend::{frame, TestFrontend, BUF_LEN, F_EVENT_IDX, F_LOG_ALL, RAM_SIZE};
use common::qmp::Qmp;
use common::raw_frontend::{
    mem_table, memfd, RawFrontend, PF_LOG_SHMFD, SET_LOG_BASE, SET_MEM_TABLE,
};
use common::wire::Wire;
use common::TempDir;
use serde_json::{json, Value};
use vmm_sys_util::eventfd::EventFd;

const F_VERSION_1: u64 = 1 << 32;
const F_PROTOCOL: u64 = 1 << 30;
const F_INDIRECT: u64 = 1 << 28;

struct TwoPorts {
    daemon: Daemon,
    a_sock: PathBuf,
    qmp_path: PathBuf,
    qmp: Qmp,
    a_wire: Wire,
    b_wire: Wire,
    b: TestFrontend,
    /// Next tx slot of `b`.
    b_slot: u16,
    _dir: TempDir,
}

impl TwoPorts {
    fn start(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let (a_wire, b_wire) = (Wire::new(), Wire::new());
        let a_sock = dir.path("a.sock");
        let b_sock = dir.path("b.sock");
        let qmp_path = dir.path("qmp.sock");
        let mut cmd = Daemon::command(&["--netdev", &a_wire.netdev("na")]);
        cmd.args(["--netdev", &b_wire.netdev("nb")])
            .arg("--port")
            .arg(format!("socket-path={},netdev=na", a_sock.display()))
            .arg("--port")
            .arg(format!("socket-path={},netdev=nb", b_sock.display()))
            .arg("--qmp")
            .arg(format!("unix:{}", qmp_path.display()));
        let daemon = Daemon::start(cmd, 3);
        let qmp = Qmp::connect(&qmp_path);
        let mut b = TestFrontend::connect(&b_sock, 1, F_EVENT_IDX);
        b.rings[0].post_buffers(&b.ram, 0, 64, BUF_LEN as u32, true);
        b.kick(0);
        let mut ports = TwoPorts {
            daemon,
            a_sock,
            qmp_path,
            qmp,
            a_wire,
            b_wire,
            b,
            b_slot: 0,
            _dir: dir,
        };
        ports.b_forwards(0);
        ports
    }

    /// Port `b` still moves frames both ways.
    fn b_forwards(&mut self, tag: u8) {
        let sent = frame(80, tag);
        let slot = self.b_slot % 64;
        self.b_slot += 1;
        self.b.send(0, slot, &sent);
        self.b.wait_used(1, 1);
        let mut buf = [0u8; 2048];
        let n = self
            .b_wire
            .sock
            .recv(&mut buf)
            .expect("b's frame on the wire");
        assert_eq!(&buf[..n], &sent[..], "b tx");
        self.b_wire.sock.send_to(&sent, self.b_wire.daemon).unwrap();
        let (id, len) = self.b.wait_used(0, 1)[0];
        assert_eq!(len as usize, 12 + sent.len(), "b rx");
        self.b.rings[0].make_available(&self.b.ram, &[id as u16]);
        self.b.kick(0);
    }

    /// QMP answers a query within a second; returns port `a`'s statistics.
    fn qmp_answers(&mut self) -> Value {
        let start = Instant::now();
        let stats = self.qmp.execute("x-query-port-stats", json!({})).unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "QMP took {:?}",
            start.elapsed()
        );
        stats[0].clone()
    }

    /// SIGTERM ends the daemon cleanly within two seconds.
    fn terminates_promptly(mut self) {
        let start = Instant::now();
        let status = self.daemon.terminate();
        assert!(status.success(), "{status}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "SIGTERM took {:?}",
            start.elapsed()
        );
    }
}

/// A raw frontend on port `a`, negotiated (REPLY_ACK, LOG_SHMFD).
fn raw_a(ports: &TwoPorts) -> RawFrontend {
    let mut fe = RawFrontend::connect(&ports.a_sock);
    fe.handshake(PF_LOG_SHMFD, F_VERSION_1 | F_PROTOCOL | F_INDIRECT);
    fe
}

#[test]
fn regions_and_logs_larger_than_their_files_are_refused() {
    let mut ports = TwoPorts::start("fault-fit");
    let mut a = raw_a(&ports);
    // A 4 MiB region backed by a 64 KiB memfd.
    let small = memfd(64 << 10);
    let table = mem_table(0, 4 << 20, 0x7f00_0000_0000, 0);
    assert_eq!(
        a.acked(SET_MEM_TABLE, &table, &[small.as_raw_fd()]),
        1,
        "region beyond its file refused"
    );
    // The region's offset past the end of a large enough file.
    let table = mem_table(0, 64 << 10, 0x7f00_0000_0000, 4096);
    assert_eq!(a.acked(SET_MEM_TABLE, &table, &[small.as_raw_fd()]), 1);
    // Not a memory file at all: an eventfd.
    let ev = EventFd::new(0).unwrap();
    let table = mem_table(0, 4096, 0x7f00_0000_0000, 0);
    assert_eq!(a.acked(SET_MEM_TABLE, &table, &[ev.as_raw_fd()]), 1);
    // A region that fits is taken.
    assert_eq!(a.acked(SET_MEM_TABLE, &table, &[small.as_raw_fd()]), 0);
    // A log of 8 KiB in a 4 KiB memfd: the reply says it failed (1).
    let log_file = memfd(4096);
    let log = [8192u64.to_le_bytes(), 0u64.to_le_bytes()].concat();
    a.send(SET_LOG_BASE, 1, &log, &[log_file.as_raw_fd()]);
    assert_eq!(a.reply_u64(), 1, "log beyond its file refused");
    assert!(a.answers(), "the connection goes on");
    let stats = ports.qmp_answers();
    assert_eq!(stats["vhost-user-failed-requests"], 4, "{stats}");
    ports.b_forwards(1);
    ports.terminates_promptly();
}

#[test]
fn memory_that_shrinks_after_mapping_disconnects_only_its_port() {
    let mut ports = TwoPorts::start("fault-shrink");
    // Guest RAM shrunk to nothing under running rings: the next ring access faults.
    let a = TestFrontend::connect(&ports.a_sock, 1, F_EVENT_IDX);
    ports
        .qmp
        .wait_event("VHOST_USER_PORT_CONNECTED", |d| d["port-id"] == "a");
    a.ram.file.set_len(0).unwrap();
    a.kick(1);
    ports
        .qmp
        .wait_event("VHOST_USER_PORT_DISCONNECTED", |d| d["port-id"] == "a");
    ports
        .daemon
        .log
        .wait_for("vanished", Duration::from_secs(5));
    assert!(
        vhost::VhostBackend::get_features(&a.fe).is_err(),
        "the daemon closed the frontend's connection"
    );
    drop(a);
    ports.b_forwards(2);
    assert_eq!(ports.qmp_answers()["memory-faults"], 1);

    // The same with the dirty log: a log shrunk after SET_LOG_BASE, written with LOG_ALL on.
    let mut a = TestFrontend::connect(&ports.a_sock, 1, F_EVENT_IDX);
    let bitmap = memfd(4096);
    let region = vhost::VhostUserDirtyLogRegion {
        mmap_size: RAM_SIZE / 4096 / 8,
        mmap_offset: 0,
        mmap_handle: bitmap.as_raw_fd(),
    };
    vhost::VhostBackend::set_log_base(&a.fe, 0, Some(region)).expect("SET_LOG_BASE");
    vhost::VhostBackend::set_features(&a.fe, a.acked | F_LOG_ALL).unwrap();
    a.sync();
    a.rings[0].post_buffers(&a.ram, 0, 4, BUF_LEN as u32, true);
    a.kick(0);
    bitmap.set_len(0).unwrap();
    ports
        .a_wire
        .sock
        .send_to(&frame(60, 3), ports.a_wire.daemon)
        .unwrap();
    ports
        .qmp
        .wait_event("VHOST_USER_PORT_DISCONNECTED", |d| d["port-id"] == "a");
    drop(a);
    ports.b_forwards(3);
    assert_eq!(ports.qmp_answers()["memory-faults"], 2);

    // A new frontend on the port gets a working device.
    let mut a = TestFrontend::connect(&ports.a_sock, 1, F_EVENT_IDX);
    a.send(0, 0, &frame(70, 4));
    a.wait_used(1, 1);
    let mut buf = [0u8; 2048];
    let n = ports.a_wire.sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &frame(70, 4)[..]);
    drop(a);
    ports.terminates_promptly();
}

/// Runs `f` on another thread; whether it finished within `limit`.
fn finishes_within<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

#[test]
fn call_descriptors_that_would_block_never_wedge_the_daemon() {
    let mut ports = TwoPorts::start("fault-call");
    let a = TestFrontend::connect(&ports.a_sock, 1, F_EVENT_IDX);
    // rx's call: a blocking eventfd one short of its maximum count. The daemon signals a new
    // call descriptor on a started ring at once.
    let full = EventFd::new(0).unwrap();
    full.write(u64::MAX - 1).unwrap();
    // tx's call: a blocking pipe whose buffer is full.
    let mut pipe = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    let ret = unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_NONBLOCK) };
    assert_eq!(ret, 0);
    // SAFETY: both descriptors were just created and are owned here.
    let (pipe_r, pipe_w) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(pipe[0]),
            std::fs::File::from_raw_fd(pipe[1]),
        )
    };
    while std::io::Write::write(&mut &pipe_w, &[0u8; 4096]).is_ok() {}
    vhost_user_netd_backends::sys::set_nonblocking(pipe_w.as_raw_fd(), false).unwrap();

    let pipe_call = {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let dup = pipe_w.try_clone().unwrap().into_raw_fd();
        // SAFETY: `dup` is a descriptor we own; the EventFd takes it over.
        unsafe { EventFd::from_raw_fd(dup) }
    };
    let (mut a, calls) = finishes_within(Duration::from_secs(2), move || {
        use vhost::VhostBackend;
        a.fe.set_vring_call(0, &full).expect("rx call");
        a.fe.set_vring_call(1, &pipe_call).expect("tx call");
        (a, (full, pipe_call, pipe_w, pipe_r))
    })
    .expect("SET_VRING_CALL answered within 2 s");
    ports.qmp_answers();
    ports.b_forwards(5);
    // Frames through `a` both ways: every interrupt hits a descriptor that cannot take it.
    a.rings[0].post_buffers(&a.ram, 0, 8, BUF_LEN as u32, true);
    a.kick(0);
    for tag in 0..4u8 {
        a.send(0, u16::from(tag), &frame(90, 10 + tag));
        let mut buf = [0u8; 2048];
        let n = ports
            .a_wire
            .sock
            .recv(&mut buf)
            .expect("a's frame on the wire");
        assert_eq!(n, 90);
        ports
            .a_wire
            .sock
            .send_to(&frame(90, 20 + tag), ports.a_wire.daemon)
            .unwrap();
    }
    // No interrupt can reach us (both call descriptors are full), so the rings are polled.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut rx_used, mut tx_used) = (0, 0);
    while (rx_used < 4 || tx_used < 4) && Instant::now() < deadline {
        rx_used += a.rings[0].take_used(&a.ram).len();
        tx_used += a.rings[1].take_used(&a.ram).len();
        std::thread::yield_now();
    }
    assert_eq!((rx_used, tx_used), (4, 4), "a's frames went through");
    drop(calls);
    ports.qmp_answers();
    ports.b_forwards(6);
    drop(a);
    ports.terminates_promptly();
}

/// A QMP client that negotiates and then never reads.
fn deaf_client(path: &std::path::Path) -> UnixStream {
    let mut s = UnixStream::connect(path).unwrap();
    std::io::Write::write_all(&mut s, b"{\"execute\": \"qmp_capabilities\"}").unwrap();
    s
}

/// Connects and disconnects a frontend on port `a` `n` times (two events each); returns the
/// slowest cycle.
fn churn(path: &std::path::Path, n: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let start = Instant::now();
        let mut fe = RawFrontend::connect(path);
        assert!(fe.answers());
        drop(fe);
        slowest = slowest.max(start.elapsed());
    }
    slowest
}

#[test]
fn a_qmp_client_that_stops_reading_is_dropped_and_stalls_nothing() {
    let mut ports = TwoPorts::start("fault-qmp");
    // A client that reads keeps getting every event meanwhile.
    let mut reader = Qmp::connect(&ports.qmp_path);
    let listener = std::thread::spawn(move || {
        (0..600)
            .map(|_| reader.wait_event("VHOST_USER_PORT_DISCONNECTED", |d| d["port-id"] == "a"))
            .count()
    });
    let mut deaf = deaf_client(&ports.qmp_path);
    // Far more events than its socket and its queue hold.
    let slowest = churn(&ports.a_sock, 600);
    assert!(
        slowest < Duration::from_secs(1),
        "a port connect took {slowest:?}"
    );
    assert_eq!(
        listener.join().unwrap(),
        600,
        "the reading client got every event"
    );
    ports.b_forwards(7);
    // The fixture's own session did not read during all that either: it was dropped too.
    ports.qmp = Qmp::connect(&ports.qmp_path);
    ports.qmp_answers();
    // The deaf client was disconnected: after what was buffered, end-of-file.
    deaf.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    deaf.read_to_end(&mut sink)
        .expect("end-of-file, not a timeout");
    assert!(String::from_utf8_lossy(&sink).contains("VHOST_USER_PORT_CONNECTED"));
    ports
        .daemon
        .log
        .wait_for("not reading; disconnected", Duration::from_secs(1));

    // Another deaf client whose socket is full but whose queue is not: shutdown does not wait
    // for it.
    let _deaf = deaf_client(&ports.qmp_path);
    churn(&ports.a_sock, 150);
    ports.qmp_answers();
    ports.terminates_promptly();
}

#[test]
fn qmp_sessions_are_capped_with_a_clear_error() {
    let mut ports = TwoPorts::start("fault-qmp-cap");
    let max = vhost_user_netd::qmp::server::MAX_SESSIONS;
    // The fixture holds one session already.
    let mut held: Vec<Qmp> = (1..max).map(|_| Qmp::connect(&ports.qmp_path)).collect();
    let mut extra = UnixStream::connect(&ports.qmp_path).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    extra.read_to_string(&mut answer).unwrap();
    let v: Value = serde_json::from_str(answer.trim()).unwrap();
    assert_eq!(v["error"]["class"], "GenericError");
    assert_eq!(
        v["error"]["desc"],
        format!("Too many QMP sessions: at most {max} are served at once")
    );
    ports.qmp_answers();
    // A session that ends frees its place.
    drop(held.pop());
    ports
        .daemon
        .log
        .wait_for("QMP session ended", Duration::from_secs(5));
    held.push(Qmp::connect(&ports.qmp_path));
    ports.b_forwards(8);
    drop(held);
    ports.terminates_promptly();
}
