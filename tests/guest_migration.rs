//! Same-host live migration: a QEMU guest (TCG) with one NIC on a tap netdev and one on the
//! user-mode stack migrates to a second QEMU on this host. The destination connects to a second
//! port of each netdev while the source runs; at switch-over the source stops its rings and the
//! destination's start and take the netdevs' queues. The guest pings the host through both NICs
//! all the way through and keeps a TCP connection on each.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use common::daemon::{Daemon, BINARY};
use common::guest_traffic::{field, BOOT, HOST_IP, STEP};
use common::qemu::{vhost_user_nic_at, Guest, QemuVersion};
use common::qmp::Qmp;
use common::{guest_kernel, initramfs, privileged_environment, TempDir};
use serde_json::json;

const TAP: &str = "vumig0";
/// The guest's TCP stream through the tap (to the host's address in the namespace).
const TAP_STREAM_PORT: u16 = 5010;
/// The guest's TCP stream through the user stack (to 10.0.2.2, the namespace's loopback).
const USER_STREAM_PORT: u16 = 5011;
/// Lines each stream must carry after the migration before the host ends it.
const LINES_AFTER: usize = 20;

const SCRIPT: &str = r#"
ip link set eth0 up
ip addr add 10.0.0.2/24 dev eth0
ip link set eth1 up
ip addr add 10.0.2.15/24 dev eth1
for gw in 10.0.0.1 10.0.2.2; do
  if ping -c 3 -W 5 $gw | grep -q " 0% packet loss"; then echo "RESULT ping-before $gw ok"; else echo "RESULT ping-before $gw fail"; fi
done
ping -i 0.2 10.0.0.1 > /tmp/ping-tap 2>&1 &
PING_TAP=$!
ping -i 0.2 10.0.2.2 > /tmp/ping-user 2>&1 &
PING_USER=$!
stream() { i=0; while ! grep -q stop /tmp/reply-$1; do echo "seq $i"; i=$((i+1)); sleep 0.1; done; }
touch /tmp/reply-tap /tmp/reply-user
stream tap | nc 10.0.0.1 5010 > /tmp/reply-tap &
NC_TAP=$!
stream user | nc 10.0.2.2 5011 > /tmp/reply-user &
NC_USER=$!
echo "PHASE migrate"
wait $NC_TAP
wait $NC_USER
kill -INT $PING_TAP $PING_USER
wait $PING_TAP
wait $PING_USER
echo "RESULT ping-tap $(grep -c DUP /tmp/ping-tap) dup $(grep transmitted /tmp/ping-tap)"
echo "RESULT ping-user $(grep -c DUP /tmp/ping-user) dup $(grep transmitted /tmp/ping-user)"
"#;

/// What the host saw of one guest stream.
#[derive(Debug)]
struct StreamReport {
    lines: usize,
    /// Lines received after the host heard the migration had completed.
    after: usize,
    /// Every line carried the next sequence number: the connection never restarted.
    in_order: bool,
}

/// Reads the guest's `seq N` lines; once `migrated` fires, lets [`LINES_AFTER`] more through,
/// then asks the guest to stop and reads to the end.
fn serve_stream(listener: TcpListener, migrated: Receiver<()>) -> StreamReport {
    let (stream, _) = listener.accept().expect("guest stream");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut report = StreamReport {
        lines: 0,
        after: 0,
        in_order: true,
    };
    let mut migrated_at = None;
    let mut asked = false;
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        report.in_order &= line == format!("seq {}", report.lines);
        report.lines += 1;
        if migrated_at.is_none() && migrated.try_recv().is_ok() {
            migrated_at = Some(report.lines);
        }
        if let Some(at) = migrated_at {
            report.after = report.lines - at;
            if report.after >= LINES_AFTER && !asked {
                writer.write_all(b"stop\n").unwrap();
                asked = true;
            }
        }
    }
    report
}

/// Busybox ping's `RESULT` line: (duplicates, transmitted, received).
fn ping_counts(line: &str) -> (u64, u64, u64) {
    let n = |i| field(line, i).parse::<u64>().unwrap_or(0);
    // "RESULT ping-tap D dup T packets transmitted, R packets received, ..."
    (n(2), n(4), n(7))
}

#[test]
fn guest_migrates_between_two_ports_of_one_daemon_keeping_tap_and_user_traffic() {
    if !privileged_environment("guest_migration") {
        return;
    }
    let (kernel, modules) = guest_kernel().unwrap();
    let dir = TempDir::new("migration");
    let d = dir.0.display().to_string();
    let initrd = dir.path("guest.cpio");
    initramfs::build(&initrd, &modules, SCRIPT);
    let ns = common::netns::Netns::new("mig");

    let port =
        |id: &str, netdev: &str| format!("id={id},socket-path={d}/{id}.sock,netdev={netdev}");
    let daemon_qmp = dir.path("daemon-qmp.sock");
    let mut cmd = ns.command(BINARY);
    cmd.args([
        "--netdev",
        &format!("tap,id=n0,ifname={TAP},script=no,downscript=no"),
        "--netdev",
        "user,id=n1",
        "--port",
        &port("src-tap", "n0"),
        "--port",
        &port("dst-tap", "n0"),
        "--port",
        &port("src-user", "n1"),
        "--port",
        &port("dst-user", "n1"),
        "--qmp",
        &format!("unix:{}", daemon_qmp.display()),
    ]);
    let daemon = Daemon::start(cmd, 4);
    ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
    ns.ip(&["link", "set", TAP, "up"]);
    // The daemon opens its QMP socket after its ports.
    let mut ports = Qmp::connect_when_created(&daemon_qmp, STEP);

    let (ready_tx, ready) = channel();
    let mut streams = Vec::new();
    let mut migrated = Vec::new();
    for addr in [(HOST_IP, TAP_STREAM_PORT), ("127.0.0.1", USER_STREAM_PORT)] {
        let (tx, rx) = channel();
        migrated.push(tx);
        let ready = ready_tx.clone();
        streams.push(ns.spawn(move || {
            let listener = TcpListener::bind(addr).unwrap();
            ready.send(()).unwrap();
            serve_stream(listener, rx)
        }));
    }
    for _ in 0..2 {
        ready.recv_timeout(Duration::from_secs(10)).unwrap();
    }

    let nics = |side: &str| {
        let mut args = Vec::new();
        for (i, netdev) in ["tap", "user"].iter().enumerate() {
            args.extend(vhost_user_nic_at(
                QemuVersion::Installed,
                i,
                format!("{d}/{side}-{netdev}.sock"),
                1,
                &format!("52:54:00:de:00:0{i}"),
            ));
        }
        args.extend([
            "-qmp".into(),
            format!("unix:{d}/{side}-qmp.sock,server=on,wait=off"),
        ]);
        args
    };
    let boot =
        |args: &[String]| Guest::boot_in(None, QemuVersion::Installed, &kernel, &initrd, 1, args);
    let mut source = boot(&nics("src"));
    let c = &source.console;
    for _ in 0..2 {
        let line = c.wait_for("RESULT ping-before", BOOT);
        assert!(line.ends_with(" ok"), "{line}");
    }
    assert_eq!(
        ports.ports_running(),
        [
            ("dst-tap".to_string(), false),
            ("dst-user".to_string(), false),
            ("src-tap".to_string(), true),
            ("src-user".to_string(), true)
        ]
    );

    // The destination connects to the second ports and negotiates while the source runs.
    let incoming = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut dst_args = nics("dst");
    dst_args.extend(["-incoming".into(), format!("tcp:127.0.0.1:{incoming}")]);
    let mut destination = boot(&dst_args);
    // Both its NICs connect (the daemon's port threads log in either order).
    let mut connected = Vec::new();
    while connected.len() < 2 {
        let line = daemon.log.wait_for(": frontend connected", STEP);
        connected.extend(
            ["dst-tap", "dst-user"]
                .into_iter()
                .filter(|p| line.contains(&format!("port {p}:"))),
        );
    }
    // QEMU creates its QMP socket after its netdevs; it answers once QEMU's main loop runs, by
    // which time the incoming listener is up.
    let mut dst_qmp = Qmp::connect_when_created(&dir.path("dst-qmp.sock"), STEP);
    let status = dst_qmp.execute("query-status", json!({})).unwrap();
    assert_eq!(status["status"], "inmigrate", "{status}");
    c.wait_for("PHASE migrate", STEP);
    let mut src_qmp = Qmp::connect(&dir.path("src-qmp.sock"));
    let events = json!({"capabilities": [{"capability": "events", "state": true}]});
    src_qmp.execute("migrate-set-capabilities", events).unwrap();
    src_qmp
        .execute(
            "migrate",
            json!({"uri": format!("tcp:127.0.0.1:{incoming}")}),
        )
        .unwrap_or_else(|e| panic!("QEMU refused to migrate: {e}"));
    let done = src_qmp.wait_event("MIGRATION", |d| {
        d["status"] == "completed" || d["status"] == "failed"
    });
    assert_eq!(done["data"]["status"], "completed", "{done}");
    let status = dst_qmp.execute("query-status", json!({})).unwrap();
    if status["status"] != "running" {
        dst_qmp.wait_event("RESUME", |_| true);
    }
    for tx in &migrated {
        tx.send(()).unwrap();
    }
    // The queues moved: the destination's ports run the rings (QEMU starts its vhost devices
    // as the VM runs, around its RESUME event), the stopped source's do not. The daemon has no
    // event for it: its state is looked at every 20 ms.
    let deadline = std::time::Instant::now() + STEP;
    while ports.ports_running().iter().filter(|(_, r)| *r).count() < 2
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        ports.ports_running(),
        [
            ("dst-tap".to_string(), true),
            ("dst-user".to_string(), true),
            ("src-tap".to_string(), false),
            ("src-user".to_string(), false)
        ]
    );
    // The source is done (stopped after migrating); its frontend's going changes nothing for
    // the destination.
    if let Some(exit) = source.exit_status() {
        panic!(
            "the source QEMU exited after migrating ({exit}); daemon log:\n{}",
            daemon.log.transcript()
        );
    }
    let status = src_qmp.execute("query-status", json!({}));
    assert_eq!(
        status.as_ref().map(|s| s["status"].clone()),
        Ok(json!("postmigrate")),
        "source after migrating: {status:?}"
    );
    src_qmp.execute("quit", json!({})).unwrap();
    drop(source);

    let dc = &destination.console;
    for (name, stream) in ["tap", "user"].iter().zip(streams) {
        let report = stream.join().unwrap();
        assert!(
            report.in_order,
            "{name} stream restarted or lost lines: {report:?}"
        );
        assert!(report.after >= LINES_AFTER, "{name}: {report:?}");
        let line = dc.wait_for(&format!("RESULT ping-{name}"), STEP);
        let (dups, sent, received) = ping_counts(&line);
        eprintln!("{name}: {report:?}; ping {received}/{sent}, {dups} duplicates");
        assert_eq!(dups, 0, "frames were duplicated: {line}");
        assert!(sent >= 10, "{line}");
        // QEMU's switch-over stops the guest for well under a second; allow a few replies to
        // go missing there, and none anywhere else.
        assert!(sent - received <= 5, "{name} ping lost too much: {line}");
    }
    destination.console.wait_for("GUEST-DONE", STEP);
    assert!(destination.wait_exit(Duration::from_secs(30)));
    drop(ports);
    drop(daemon);
}
