//! A real QEMU guest (TCG) on vhost-user-netd with a tap backend in a namespace the test creates:
//! ping both ways, 10 MB over TCP each way with checksums, a daemon restart under traffic, and
//! two queue pairs both carrying frames.

#![allow(clippy::unwrap_used, clippy::cast_possible_wrap)]

mod common;

use common::daemon::Daemon;
use common::guest_traffic::{
    check_ping_and_transfers, guest_done, phase, prepare, tell_guest, HostPeer, FLOWS, HOST_IP,
    SETUP, STEP,
};
use common::netns::Netns;
use common::privileged_environment;
use common::qemu::{Guest, NicSpec, QemuVersion};

const TAP: &str = "vutap0";

const RESTART: &str = r#"
ping -i 0.2 10.0.0.1 > /dev/null 2>&1 &
PING=$!
echo "PHASE restart"
nc -l -p 5002 < /dev/null > /tmp/go
kill $PING
echo "RESULT go $(cat /tmp/go)"
if ping -c 3 -W 5 10.0.0.1 | grep -q " 0% packet loss"; then echo "RESULT ping-after-restart ok"; else echo "RESULT ping-after-restart fail"; fi
"#;

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

#[test]
fn guest_on_tap_one_queue_pair_ping_transfer_and_daemon_restart() {
    if !privileged_environment("guest_on_tap_one_queue_pair") {
        return;
    }
    let prepared = prepare("g1", &format!("{SETUP}{RESTART}"));
    let (ns, dir) = (&prepared.ns, &prepared.dir);
    let socket = dir.path("vm.sock");
    let mut daemon = start_daemon(ns, &socket, 1);
    let peer = HostPeer::start(ns, 0);

    let nic = NicSpec {
        socket: &socket,
        queues: 1,
        reconnect_ms: Some(300),
        qemu_is_server: false,
    };
    let mut guest = Guest::boot(&prepared.kernel, &prepared.initrd, &nic, 1);
    check_ping_and_transfers(&guest, ns, peer, dir, 1);

    // Kill the daemon while the guest pings, start a new one: QEMU reconnects, traffic resumes.
    guest.console.wait_for("PHASE restart", STEP);
    daemon.kill();
    daemon = start_daemon(ns, &socket, 1);
    if let Err(e) = tell_guest(ns, 5002, "restarted") {
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
    guest_done(&mut guest);

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
    let prepared = prepare("g2", &format!("{SETUP}{FLOWS}{}", phase("migrate", 5004)));
    let (ns, dir) = (&prepared.ns, &prepared.dir);
    let socket = dir.path("vm.sock");
    let daemon = start_daemon(ns, &socket, 2);
    let peer = HostPeer::start(ns, 16);

    let nic = NicSpec {
        socket: &socket,
        queues: 2,
        reconnect_ms: None,
        qemu_is_server: false,
    };
    let qmp_path = dir.path("qmp.sock");
    let mut guest =
        Guest::boot_with_qmp(&prepared.kernel, &prepared.initrd, &nic, 2, Some(&qmp_path));
    let flows = check_ping_and_transfers(&guest, ns, peer, dir, 2);
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
    tell_guest(ns, 5004, "after-migration").expect("guest unreachable after migration");
    let line = guest.console.wait_for("RESULT go", STEP);
    assert!(line.ends_with("after-migration"), "{line}");
    let line = guest.console.wait_for("RESULT ping-after-migrate", STEP);
    assert!(line.ends_with(" ok"), "{line}");
    guest_done(&mut guest);

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
    let prepared = prepare("g72", SETUP);
    let (ns, dir) = (&prepared.ns, &prepared.dir);
    let socket = dir.path("vm.sock");
    let nic = NicSpec {
        socket: &socket,
        queues: 2,
        reconnect_ms: None,
        qemu_is_server: true,
    };
    let mut guest = Guest::boot_version(
        QemuVersion::Bookworm72,
        &prepared.kernel,
        &prepared.initrd,
        &nic,
        2,
        None,
    );
    // QEMU listens and blocks its start-up until a backend connects; the daemon, in client
    // mode, connects (retrying with backoff until the socket exists).
    let daemon = start_daemon_mode(ns, &socket, 2, true);
    let peer = HostPeer::start(ns, 0);
    check_ping_and_transfers(&guest, ns, peer, dir, 2);
    guest_done(&mut guest);
    let (rx, tx) = daemon.pair_frames(0);
    assert!(rx > 0 && tx > 0, "pair 0 moved frames (rx {rx}, tx {tx})");
}
