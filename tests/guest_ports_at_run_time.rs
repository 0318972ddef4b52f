//! Ports added at run time, with real guests: a daemon started with only `--qmp` gets a tap,
//! a hub joined to it and three ports over QMP (QEMU's `qemu.qmp`); a QEMU guest (TCG) on each
//! pings the host and the other two. One port is deleted while they ping: the other two keep
//! exchanging every frame; the same id is added again, its guest's QEMU reconnects and reaches
//! everyone again.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::guest_traffic::{prepare, tell_guest_at, BOOT, HOST_IP, STEP};
use common::qemu::{vhost_user_nic, Guest, QemuVersion};
use common::qmp::Qmp;
use serde_json::json;

const TAP: &str = "vuptap0";

/// Each guest takes 10.0.0.N from the last byte of its MAC (11, 12, 13), waits until the host
/// and the other guests answer, pings the other two until the host says `go`, then reports.
const SCRIPT: &str = r#"
ip link set eth0 up
me=10.0.0.$((0x$(cut -d: -f6 /sys/class/net/eth0/address)))
ip addr add $me/24 dev eth0
echo "GUEST-READY $me"
for peer in 10.0.0.1 10.0.0.11 10.0.0.12 10.0.0.13; do
  [ $peer = $me ] && continue
  m=0; until ping -c 1 -W 1 $peer >/dev/null 2>&1; do m=$((m+1)); [ $m -ge 60 ] && echo "UNREACHABLE $peer" && break; done
done
echo "RESULT all-reachable"
pids=""
for p in 11 12 13; do
  [ 10.0.0.$p = $me ] && continue
  ping -i 0.2 10.0.0.$p > /tmp/ping-$p 2>&1 &
  pids="$pids $!"
done
echo "PHASE traffic"
nc -l -p 5004 < /dev/null > /tmp/go
kill -INT $pids
wait
for p in 11 12 13; do
  [ -e /tmp/ping-$p ] && echo "RESULT ping-$p $(grep transmitted /tmp/ping-$p)"
done
if ping -c 3 -W 5 10.0.0.1 | grep -q " 0% packet loss"; then echo "RESULT ping-host-after ok"; else echo "RESULT ping-host-after fail"; fi
"#;

const GUESTS: [(&str, &str, &str); 3] = [
    ("a", "52:54:00:00:00:0b", "10.0.0.11"),
    ("b", "52:54:00:00:00:0c", "10.0.0.12"),
    ("c", "52:54:00:00:00:0d", "10.0.0.13"),
];

/// Frames port `id`'s guest has sent so far.
fn tx_frames(qmp: &mut Qmp, id: &str) -> u64 {
    let stats = qmp.execute("x-query-port-stats", json!({})).unwrap();
    let port = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port-id"] == id)
        .unwrap()
        .clone();
    port["queue-pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["tx-frames"].as_u64().unwrap())
        .sum()
}

/// Busybox ping's summary in a `RESULT ping-N` line: (transmitted, received).
fn ping_counts(line: &str) -> (u64, u64) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let n = |i: usize| words.get(i).and_then(|w| w.parse().ok()).unwrap_or(0);
    // "RESULT ping-12 T packets transmitted, R packets received, ..."
    (n(2), n(5))
}

#[test]
fn three_guests_on_ports_added_over_qmp_one_deleted_under_traffic_and_added_again() {
    if !common::privileged_environment("guest_ports_at_run_time") {
        return;
    }
    let prepared = prepare("ports3", SCRIPT);
    let (ns, dir) = (&prepared.ns, &prepared.dir);
    let d = dir.0.display().to_string();
    let qmp_path = dir.path("qmp.sock");
    let mut cmd = ns.command(common::daemon::BINARY);
    cmd.arg("--qmp").arg(format!("unix:{}", qmp_path.display()));
    let daemon = Daemon::start_until(cmd, "sandbox On", 1);
    if !common::python::run_qmp_script_with("ports_add.py", &qmp_path, &[&d, TAP]) {
        return;
    }
    ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
    ns.ip(&["link", "set", TAP, "up"]);
    let mut qmp = Qmp::connect(&qmp_path);

    let guests: Vec<Guest> = GUESTS
        .iter()
        .map(|(id, mac, _)| {
            // QEMU reconnects when its port comes back.
            let chardev = format!("socket,id=c0,path={d}/{id}.sock,reconnect-ms=200");
            let args = vhost_user_nic(QemuVersion::Installed, chardev, 1, mac);
            Guest::boot_in(
                None,
                QemuVersion::Installed,
                &prepared.kernel,
                &prepared.initrd,
                1,
                &args,
            )
        })
        .collect();
    for g in &guests {
        g.console.wait_for("GUEST-READY", BOOT);
    }
    for g in &guests {
        g.console.wait_for("RESULT all-reachable", STEP);
        g.console.wait_for("PHASE traffic", STEP);
    }

    // Every guest pings the two others five times a second, and a guest's pings are frames
    // it sends: wait for `frames` more from port `id`'s guest.
    let wait_frames = |qmp: &mut Qmp, id: &str, frames: u64| {
        let before = tx_frames(qmp, id);
        let deadline = Instant::now() + STEP;
        while tx_frames(qmp, id) < before + frames {
            assert!(
                Instant::now() < deadline,
                "guest on port {id} stopped sending"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_frames(&mut qmp, "c", 20);

    // c goes under traffic, its socket file with it; a and b keep pinging each other for about
    // four seconds while it is gone.
    qmp.execute("port-del", json!({"id": "c"})).unwrap();
    qmp.wait_event("VHOST_USER_PORT_DELETED", |d| d["port-id"] == "c");
    assert!(!dir.path("c.sock").exists());
    let ports = qmp.execute("query-ports", json!({})).unwrap();
    assert_eq!(ports.as_array().unwrap().len(), 2, "{ports}");
    wait_frames(&mut qmp, "a", 40);

    // The same id again: c's QEMU reconnects to it.
    qmp.execute(
        "port-add",
        json!({"id": "c", "netdev": "hc", "socket-path": dir.path("c.sock")}),
    )
    .unwrap();
    qmp.wait_event("VHOST_USER_PORT_CONNECTED", |d| d["port-id"] == "c");
    wait_frames(&mut qmp, "c", 20);
    for (_, _, ip) in GUESTS {
        tell_guest_at(ns, ip, 5004, "go").unwrap_or_else(|e| panic!("{ip}: {e}"));
    }

    let result = |g: &Guest, peer: &str| {
        ping_counts(&g.console.wait_for(&format!("RESULT ping-{peer}"), STEP))
    };
    // a and b: every ping between them answered (the last may be in flight when it stops).
    for (g, peer) in [(&guests[0], "12"), (&guests[1], "11")] {
        let (sent, received) = result(g, peer);
        eprintln!("ping to {peer}: {received}/{sent}");
        assert!(
            sent >= 10 && sent - received <= 1,
            "to {peer}: {received}/{sent}"
        );
    }
    // Pings to c went unanswered while its port was gone (the hub had nowhere to send them);
    // c's own pings waited in its rings while QEMU reconnected and went out after, so c heard
    // answers again.
    for (g, peer) in [(&guests[0], "13"), (&guests[1], "13")] {
        let (sent, received) = result(g, peer);
        eprintln!("ping to {peer}: {received}/{sent}");
        assert!(
            received > 0 && received + 5 < sent,
            "to {peer}: {received}/{sent}"
        );
    }
    for peer in ["11", "12"] {
        let (sent, received) = result(&guests[2], peer);
        eprintln!("ping from c to {peer}: {received}/{sent}");
        assert!(received > 0, "c to {peer}: {received}/{sent}");
    }
    for g in &guests {
        let line = g.console.wait_for("RESULT ping-host-after", STEP);
        assert!(line.ends_with(" ok"), "{line}");
    }
    for mut g in guests {
        g.console.wait_for("GUEST-DONE", STEP);
        assert!(g.wait_exit(Duration::from_secs(30)));
    }
    drop(daemon);
}
