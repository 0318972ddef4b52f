//! A real QEMU guest (TCG) on vhost-user-netd with a tap backend in a namespace the test creates:
//! ping both ways, 10 MB over TCP each way with checksums, a daemon restart under traffic, and
//! two queue pairs both carrying frames.

#![allow(clippy::unwrap_used, clippy::cast_possible_wrap)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::netns::Netns;
use common::qemu::{Guest, NicSpec, QemuVersion};
use common::{guest_kernel, initramfs, privileged_environment, TempDir};

const HOST_IP: &str = "10.0.0.1";
const GUEST_IP: &str = "10.0.0.2";
const TAP: &str = "vutap0";
const TRANSFER: usize = 10 << 20;
const BOOT: Duration = Duration::from_secs(180);
const STEP: Duration = Duration::from_secs(120);

const SETUP: &str = r#"
ip link set eth0 up
ip addr add 10.0.0.2/24 dev eth0
echo "GUEST-READY queues=$(ls -d /sys/class/net/eth0/queues/rx-* | wc -l)"
if ping -c 3 -W 5 10.0.0.1 | grep -q " 0% packet loss"; then echo "RESULT ping-host ok"; else echo "RESULT ping-host fail"; fi
dd if=/dev/urandom of=/tmp/out bs=1M count=10 2>/dev/null
echo "RESULT tx-md5 $(md5sum /tmp/out | cut -c1-32)"
nc 10.0.0.1 5000 < /tmp/out
nc 10.0.0.1 5001 < /dev/null > /tmp/in
echo "RESULT rx-md5 $(md5sum /tmp/in | cut -c1-32) bytes=$(wc -c < /tmp/in)"
"#;

const RESTART: &str = r#"
ping -i 0.2 10.0.0.1 > /dev/null 2>&1 &
PING=$!
echo "PHASE restart"
nc -l -p 5002 < /dev/null > /tmp/go
kill $PING
echo "RESULT go $(cat /tmp/go)"
if ping -c 3 -W 5 10.0.0.1 | grep -q " 0% packet loss"; then echo "RESULT ping-after-restart ok"; else echo "RESULT ping-after-restart fail"; fi
"#;

const MIGRATE: &str = r#"
echo "PHASE migrate"
nc -l -p 5004 < /dev/null > /tmp/go
echo "RESULT resumed $(cat /tmp/go)"
if ping -c 3 -W 5 10.0.0.1 | grep -q " 0% packet loss"; then echo "RESULT ping-after-migrate ok"; else echo "RESULT ping-after-migrate fail"; fi
"#;

const FLOWS: &str = r#"
i=0
while [ $i -lt 16 ]; do nc 10.0.0.1 5003 < /dev/null > /dev/null & i=$((i+1)); done
wait
echo "RESULT flows-done"
"#;

/// Deterministic pseudo-random bytes (xorshift64).
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn md5(data: &[u8], dir: &TempDir, name: &str) -> String {
    let path = dir.path(name);
    std::fs::write(&path, data).unwrap();
    let out = Command::new("md5sum").arg(&path).output().expect("md5sum");
    String::from_utf8_lossy(&out.stdout)[..32].to_string()
}

fn field(line: &str, index: usize) -> String {
    line.split_whitespace()
        .nth(index)
        .unwrap_or_default()
        .to_string()
}

/// The host's side of the TCP checks, running inside the namespace.
struct HostPeer {
    received: JoinHandle<Vec<u8>>,
    sent: JoinHandle<Vec<u8>>,
    flows: Option<JoinHandle<usize>>,
}

impl HostPeer {
    fn start(ns: &Netns, flows: usize) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ready = ready_tx.clone();
        let received = ns.spawn(move || {
            let l = TcpListener::bind((HOST_IP, 5000)).expect("bind 5000");
            ready.send(()).unwrap();
            let (mut s, _) = l.accept().expect("accept 5000");
            let mut data = Vec::new();
            s.read_to_end(&mut data).expect("read guest data");
            data
        });
        let ready = ready_tx.clone();
        let sent = ns.spawn(move || {
            let l = TcpListener::bind((HOST_IP, 5001)).expect("bind 5001");
            ready.send(()).unwrap();
            let (mut s, _) = l.accept().expect("accept 5001");
            let data = pattern(TRANSFER);
            s.write_all(&data).expect("send to guest");
            data
        });
        let flow_handle = (flows > 0).then(|| {
            let ready = ready_tx.clone();
            ns.spawn(move || {
                let l = TcpListener::bind((HOST_IP, 5003)).expect("bind 5003");
                ready.send(()).unwrap();
                let chunk = pattern(256 << 10);
                let mut served = 0;
                for _ in 0..flows {
                    let (mut s, _) = l.accept().expect("accept 5003");
                    let chunk = chunk.clone();
                    std::thread::spawn(move || {
                        let _ = s.write_all(&chunk);
                    });
                    served += 1;
                }
                served
            })
        });
        let expected = 2 + usize::from(flows > 0);
        for _ in 0..expected {
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("listener ready");
        }
        HostPeer {
            received,
            sent,
            flows: flow_handle,
        }
    }
}

fn start_daemon(ns: &Netns, socket: &std::path::Path, queues: u16) -> Daemon {
    start_daemon_mode(ns, socket, queues, false)
}

/// Starts the daemon on a tap in `ns`; as a client it waits until it has connected.
fn start_daemon_mode(ns: &Netns, socket: &std::path::Path, queues: u16, client: bool) -> Daemon {
    let mut cmd = ns.command(common::daemon::BINARY);
    cmd.arg("--socket-path")
        .arg(socket)
        .arg("--netdev")
        .arg(format!(
            "tap,id=n0,ifname={TAP},queues={queues},script=no,downscript=no"
        ));
    let d = if client {
        cmd.arg("--client");
        Daemon::start_until(cmd, "connected to", 1)
    } else {
        Daemon::start(cmd, 1)
    };
    ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
    ns.ip(&["link", "set", TAP, "up"]);
    d
}

fn host_pings_guest(ns: &Netns) {
    let out = ns
        .command("ping")
        .args(["-c", "3", "-W", "5", GUEST_IP])
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 0% packet loss"),
        "host → guest ping failed:\n{text}"
    );
}

/// Checks ping both ways and the two 10 MB transfers.
fn check_ping_and_transfers(
    guest: &Guest,
    ns: &Netns,
    peer: HostPeer,
    dir: &TempDir,
    queues: u16,
) -> Option<JoinHandle<usize>> {
    let ready = guest.console.wait_for("GUEST-READY", BOOT);
    assert!(
        ready.ends_with(&format!("queues={queues}")),
        "guest sees {ready}"
    );
    host_pings_guest(ns);
    let line = guest.console.wait_for("RESULT ping-host", STEP);
    assert!(line.ends_with(" ok"), "guest → host ping: {line}");

    let line = guest.console.wait_for("RESULT tx-md5", STEP);
    let received = peer.received.join().expect("receiver thread");
    assert_eq!(received.len(), TRANSFER, "guest → host byte count");
    assert_eq!(
        field(&line, 2),
        md5(&received, dir, "rx.bin"),
        "guest → host checksum"
    );

    let line = guest.console.wait_for("RESULT rx-md5", STEP);
    let sent = peer.sent.join().expect("sender thread");
    assert_eq!(
        field(&line, 3),
        format!("bytes={TRANSFER}"),
        "host → guest byte count"
    );
    assert_eq!(
        field(&line, 2),
        md5(&sent, dir, "tx.bin"),
        "host → guest checksum"
    );
    peer.flows
}

#[test]
fn guest_on_tap_one_queue_pair_ping_transfer_and_daemon_restart() {
    if !privileged_environment("guest_on_tap_one_queue_pair") {
        return;
    }
    let (kernel, modules) = guest_kernel().expect("kernel");
    let dir = TempDir::new("guest1");
    let initrd = dir.path("initrd.cpio");
    initramfs::build(&initrd, &modules, &format!("{SETUP}{RESTART}"));
    let ns = Netns::new("g1");
    let socket = dir.path("vm.sock");
    let mut daemon = start_daemon(&ns, &socket, 1);
    let peer = HostPeer::start(&ns, 0);

    let nic = NicSpec {
        socket: &socket,
        queues: 1,
        reconnect_ms: Some(300),
        qemu_is_server: false,
    };
    let mut guest = Guest::boot(&kernel, &initrd, &nic, 1);
    check_ping_and_transfers(&guest, &ns, peer, &dir, 1);

    // Kill the daemon while the guest pings, start a new one: QEMU reconnects, traffic resumes.
    guest.console.wait_for("PHASE restart", STEP);
    daemon.kill();
    daemon = start_daemon(&ns, &socket, 1);
    let go = ns.spawn(|| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Retried until the guest's listener is reachable again through the new daemon.
            match TcpStream::connect_timeout(&(GUEST_IP, 5002).into_addr(), Duration::from_secs(2))
            {
                Ok(mut s) => {
                    s.write_all(b"restarted\n").expect("send go");
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    });
    if let Err(e) = go.join().expect("reconnect thread") {
        panic!(
            "guest unreachable after daemon restart: {e}\nnew daemon's log:\n{}\nguest console:\n{}",
            daemon.log.transcript(),
            guest.console.transcript()
        );
    }
    let line = guest.console.wait_for("RESULT go", STEP);
    assert!(line.ends_with("restarted"), "{line}");
    let line = guest.console.wait_for("RESULT ping-after-restart", STEP);
    assert!(line.ends_with(" ok"), "{line}");
    guest.console.wait_for("GUEST-DONE", STEP);
    assert!(
        guest.wait_exit(Duration::from_secs(30)),
        "guest did not power off"
    );

    let (rx, tx) = daemon.pair_frames(0);
    assert!(
        rx > 0 && tx > 0,
        "restarted daemon moved frames (rx {rx}, tx {tx})"
    );
    let status = daemon.terminate();
    assert!(status.success(), "daemon exit on SIGTERM: {status}");
    assert!(!socket.exists(), "socket removed on SIGTERM");
}

#[test]
fn guest_on_tap_two_queue_pairs_both_carry_traffic() {
    if !privileged_environment("guest_on_tap_two_queue_pairs") {
        return;
    }
    let (kernel, modules) = guest_kernel().expect("kernel");
    let dir = TempDir::new("guest2");
    let initrd = dir.path("initrd.cpio");
    initramfs::build(&initrd, &modules, &format!("{SETUP}{FLOWS}{MIGRATE}"));
    let ns = Netns::new("g2");
    let socket = dir.path("vm.sock");
    let daemon = start_daemon(&ns, &socket, 2);
    let peer = HostPeer::start(&ns, 16);

    let nic = NicSpec {
        socket: &socket,
        queues: 2,
        reconnect_ms: None,
        qemu_is_server: false,
    };
    let qmp_path = dir.path("qmp.sock");
    let mut guest = Guest::boot_with_qmp(&kernel, &initrd, &nic, 2, Some(&qmp_path));
    let flows = check_ping_and_transfers(&guest, &ns, peer, &dir, 2);
    // QEMU is long past creating its QMP socket once the guest has run its script.
    let mut qmp = common::qmp::Qmp::connect(&qmp_path);
    guest.console.wait_for("RESULT flows-done", STEP);
    assert_eq!(flows.expect("flows").join().expect("flows thread"), 16);

    // Live migration: QEMU only allows it when the backend logs dirty pages (LOG_SHMFD).
    guest.console.wait_for("PHASE migrate", STEP);
    let events = serde_json::json!({"capabilities": [{"capability": "events", "state": true}]});
    qmp.execute("migrate-set-capabilities", events)
        .expect("migration events");
    let uri = format!("exec:cat > {}", dir.path("migration.bin").display());
    if let Err(e) = qmp.execute("migrate", serde_json::json!({ "uri": uri })) {
        panic!("QEMU refused to migrate: {e}");
    }
    let done = qmp.wait_event("MIGRATION", |d| {
        d["status"] == "completed" || d["status"] == "failed"
    });
    assert_eq!(done["data"]["status"], "completed", "{done}");
    // The source stops after migrating; resume it: the device restarts and traffic flows again.
    qmp.execute("cont", serde_json::json!({})).expect("cont");
    ns.spawn(|| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Retried until the resumed guest's listener answers.
            match TcpStream::connect_timeout(&(GUEST_IP, 5004).into_addr(), Duration::from_secs(2))
            {
                Ok(mut s) => return s.write_all(b"after-migration\n").expect("send go"),
                Err(e) if Instant::now() > deadline => {
                    panic!("guest unreachable after migration: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    })
    .join()
    .expect("resume thread");
    let line = guest.console.wait_for("RESULT ping-after-migrate", STEP);
    assert!(line.ends_with(" ok"), "{line}");
    guest.console.wait_for("GUEST-DONE", STEP);
    assert!(
        guest.wait_exit(Duration::from_secs(30)),
        "guest did not power off"
    );

    let mut largest = (0, 0);
    for pair in 0..2 {
        let c = daemon.pair_counts(pair);
        assert!(
            c.rx_frames + c.tx_frames > 0,
            "queue pair {pair} carried no frames"
        );
        largest = (largest.0.max(c.rx_max_frame), largest.1.max(c.tx_max_frame));
    }
    eprintln!(
        "largest frames: host → guest {} bytes, guest → host {} bytes",
        largest.0, largest.1
    );
    // Without TSO/GSO no Ethernet frame exceeds 1514 bytes; with TUNSETOFFLOAD following the
    // guest's features, the bulk transfers cross as large segments in both directions.
    assert!(
        largest.0 > 1514,
        "host → guest: largest frame {} bytes, no GSO",
        largest.0
    );
    assert!(
        largest.1 > 1514,
        "guest → host: largest frame {} bytes, no TSO",
        largest.1
    );
}

trait IntoAddr {
    fn into_addr(self) -> std::net::SocketAddr;
}

impl IntoAddr for &(&str, u16) {
    fn into_addr(self) -> std::net::SocketAddr {
        format!("{}:{}", self.0, self.1).parse().expect("address")
    }
}

#[test]
fn guest_on_qemu_7_2_two_queue_pairs_daemon_as_client() {
    if !privileged_environment("guest_on_qemu_7_2") {
        return;
    }
    // QEMU 7.2 sends ADD_MEM_REG for the same region once per queue pair, and (like 10.0)
    // SET_VRING_ENABLE before SET_FEATURES.
    assert!(
        common::qemu::qemu_72_root()
            .join("usr/bin/qemu-system-x86_64")
            .exists(),
        "QEMU 7.2 not unpacked (scripts/install-test-deps.sh)"
    );
    let (kernel, modules) = guest_kernel().expect("kernel");
    let dir = TempDir::new("guest72");
    let initrd = dir.path("initrd.cpio");
    initramfs::build(&initrd, &modules, SETUP);
    let ns = Netns::new("g72");
    let socket = dir.path("vm.sock");
    let nic = NicSpec {
        socket: &socket,
        queues: 2,
        reconnect_ms: None,
        qemu_is_server: true,
    };
    let mut guest = Guest::boot_version(QemuVersion::Bookworm72, &kernel, &initrd, &nic, 2, None);
    // QEMU listens and blocks its start-up until a backend connects; the daemon, in client
    // mode, connects (retrying with backoff until the socket exists).
    let daemon = start_daemon_mode(&ns, &socket, 2, true);
    let peer = HostPeer::start(&ns, 0);
    check_ping_and_transfers(&guest, &ns, peer, &dir, 2);
    guest.console.wait_for("GUEST-DONE", STEP);
    assert!(
        guest.wait_exit(Duration::from_secs(30)),
        "guest did not power off"
    );
    let (rx, tx) = daemon.pair_frames(0);
    assert!(rx > 0 && tx > 0, "pair 0 moved frames (rx {rx}, tx {tx})");
}
