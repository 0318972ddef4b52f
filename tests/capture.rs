//! Packet capture as QEMU's `filter-dump` (QMP `object-add`/`object-del`, `--object`) and
//! passt's `--pcap`, read back with `tshark` (Debian's): the frames both ways with their
//! lengths, the snap length, the `queue` direction and timestamps; and a writer that cannot keep
//! up (a pipe nobody reads) drops capture records, counted, never the guest's frames.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::daemon::Daemon;
use common::frontend::{frame, TestFrontend, BUF_LEN, F_EVENT_IDX};
use common::qmp::Qmp;
use common::wire::Wire;
use common::{which, TempDir};
use serde_json::json;

fn tshark_available() -> bool {
    if which("tshark").is_some() {
        return true;
    }
    assert!(
        std::env::var_os("VUNETD_FULL_SUITE").is_none(),
        "tshark missing (Debian's tshark package)"
    );
    eprintln!("tshark missing: SKIPPED");
    false
}

/// `tshark` fields of every frame of `file`: length on the wire, length captured, source MAC,
/// epoch time.
fn frames_in(file: &std::path::Path) -> Vec<(usize, usize, String, f64)> {
    let out = Command::new("tshark")
        .args(["-r"])
        .arg(file)
        .args([
            "-T",
            "fields",
            "-e",
            "frame.len",
            "-e",
            "frame.cap_len",
            "-e",
            "eth.src",
            "-e",
            "frame.time_epoch",
        ])
        .env("HOME", std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].to_string(),
                f[3].parse().unwrap(),
            )
        })
        .collect()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn filter_dump_over_qmp_captures_both_ways_as_tshark_reads_it() {
    if !tshark_available() {
        return;
    }
    let dir = TempDir::new("capture");
    let wire = Wire::new();
    let (socket, qmp_path) = (dir.path("vm.sock"), dir.path("qmp.sock"));
    let mut cmd = Daemon::command(&["--netdev", &wire.netdev("n0"), "--allow-path"]);
    cmd.arg(&dir.0)
        .arg("--socket-path")
        .arg(&socket)
        .arg("--qmp")
        .arg(format!("unix:{}", qmp_path.display()));
    let mut daemon = Daemon::start(cmd, 1);
    daemon
        .log
        .wait_for("their own seccomp filters on top", Duration::from_secs(10));
    let mut qmp = Qmp::connect(&qmp_path);
    let (all, rx_only) = (dir.path("all.pcap"), dir.path("rx.pcap"));
    qmp.execute(
        "object-add",
        json!({"qom-type": "filter-dump", "id": "f0", "netdev": "n0", "file": all,
               "maxlen": 100}),
    )
    .unwrap();
    // QEMU's `rx` is what the netdev receives: the guest's frames.
    qmp.execute(
        "object-add",
        json!({"qom-type": "filter-dump", "id": "f1", "netdev": "n0", "file": rx_only,
               "queue": "rx"}),
    )
    .unwrap();
    // Ours: stop after two frames.
    let two = dir.path("two.pcap");
    qmp.execute(
        "object-add",
        json!({"qom-type": "filter-dump", "id": "f2", "netdev": "n0", "file": two,
               "x-max-frames": 2}),
    )
    .unwrap();
    let started = now();

    let mut guest = TestFrontend::connect(&socket, 1, F_EVENT_IDX);
    guest.rings[0].post_buffers(&guest.ram, 0, 8, BUF_LEN as u32, true);
    guest.kick(0);
    let mut buf = [0u8; 2048];
    for (slot, (len, seed)) in [(60, 1u8), (200, 2), (1000, 3)].into_iter().enumerate() {
        let f = frame(len, seed);
        guest.send(0, slot as u16, &f);
        guest.wait_used(1, 1);
        let n = wire.sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &f[..]);
    }
    for (len, seed) in [(80, 4u8), (300, 5)] {
        wire.sock.send_to(&frame(len, seed), wire.daemon).unwrap();
        guest.wait_used(0, 1);
    }
    let stats = qmp.execute("x-query-port-stats", json!({})).unwrap();
    let ids: Vec<&str> = stats[0]["captures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["f0", "f1", "f2"]);
    assert_eq!(stats[0]["captures"][2]["over-limit"], 3, "{stats}");
    // Removing them closes the files with every record written.
    for id in ["f0", "f1", "f2"] {
        qmp.execute("object-del", json!({"id": id})).unwrap();
    }
    let stopped = now();

    let frames = frames_in(&all);
    let seen: Vec<(usize, usize, String)> =
        frames.iter().map(|f| (f.0, f.1, f.2.clone())).collect();
    let mac = |seed: u8| format!("52:54:00:00:00:{seed:02x}");
    assert_eq!(
        seen,
        vec![
            (60, 60, mac(1)),
            (200, 100, mac(2)),
            (1000, 100, mac(3)),
            (80, 80, mac(4)),
            (300, 100, mac(5)),
        ]
    );
    for w in frames.windows(2) {
        assert!(w[0].3 <= w[1].3, "timestamps in order: {frames:?}");
    }
    assert!(frames[0].3 >= started - 1.0 && frames[4].3 <= stopped + 1.0);
    let rx: Vec<usize> = frames_in(&rx_only).iter().map(|f| f.0).collect();
    assert_eq!(rx, [60, 200, 1000], "queue=rx: the guest's frames only");
    let limited: Vec<usize> = frames_in(&two).iter().map(|f| f.0).collect();
    assert_eq!(limited, [60, 200], "x-max-frames=2");

    // QEMU's errors (tests/qmp.rs compares the same calls with QEMU itself).
    let e = qmp
        .execute(
            "object-add",
            json!({"qom-type": "filter-dump", "id": "f2", "netdev": "nope", "file": all}),
        )
        .unwrap_err();
    assert_eq!(e["desc"], "Parameter 'netdev' expects a network backend id");
    let e = qmp.execute("object-del", json!({"id": "f0"})).unwrap_err();
    assert_eq!(e["desc"], "object 'f0' not found");
    drop(guest);
    daemon.stop_cleanly();
}

#[test]
fn pcap_option_records_from_the_start_and_a_stuck_writer_drops_records_not_frames() {
    let dir = TempDir::new("capturefifo");
    let wire = Wire::new();
    let (socket, qmp_path) = (dir.path("vm.sock"), dir.path("qmp.sock"));
    // A pipe nobody reads: the capture's writer blocks once it is full (64 KiB).
    let fifo = dir.path("stuck.pcap");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let reader = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap()
    };
    let mut cmd = Daemon::command(&["--netdev", &wire.netdev("n0"), "--pcap"]);
    cmd.arg(&fifo)
        .arg("--socket-path")
        .arg(&socket)
        .arg("--qmp")
        .arg(format!("unix:{}", qmp_path.display()));
    let mut daemon = Daemon::start(cmd, 1);
    daemon.log.wait_for("sandbox On", Duration::from_secs(10));
    let mut qmp = Qmp::connect(&qmp_path);

    let mut guest = TestFrontend::connect(&socket, 1, F_EVENT_IDX);
    const FRAMES: usize = 6000;
    const BATCH: usize = 64;
    let f = frame(1000, 7);
    for _ in 0..FRAMES / BATCH {
        for slot in 0..BATCH {
            guest.send(0, slot as u16, &f);
        }
        guest.wait_used(1, BATCH);
    }
    let sent = FRAMES / BATCH * BATCH;
    let stats = qmp.execute("x-query-port-stats", json!({})).unwrap();
    let pair = &stats[0]["queue-pairs"][0];
    assert_eq!(pair["tx-frames"], sent, "every frame went out: {pair}");
    let capture = &stats[0]["captures"][0];
    assert_eq!(capture["id"], "pcap");
    let dropped = capture["dropped-writer-behind"].as_u64().unwrap();
    assert!(
        dropped > 0,
        "the stuck writer's records were dropped: {capture}"
    );
    assert!(
        dropped + capture["written"].as_u64().unwrap() <= sent as u64,
        "{capture}"
    );
    // Shutdown does not hang on the stuck writer.
    drop(guest);
    daemon.stop_cleanly();
    drop(reader);
}

#[test]
fn a_dump_netdev_records_every_frame_crossing_its_hub_unicast_included() {
    if !tshark_available() {
        return;
    }
    let dir = TempDir::new("capturedump");
    let file = dir.path("hub0.pcap");
    let (sa, sb) = (dir.path("a.sock"), dir.path("b.sock"));
    // QEMU 1.x's `-net dump` on VLAN 0, which is hub 0 here.
    let mut cmd = Daemon::command(&[
        "--netdev",
        "hubport,id=ha,hubid=0",
        "--netdev",
        "hubport,id=hb,hubid=0",
        "--netdev",
    ]);
    cmd.arg(format!("dump,id=d0,file={},len=100", file.display()))
        .arg("--port")
        .arg(format!("id=a,netdev=ha,socket-path={}", sa.display()))
        .arg("--port")
        .arg(format!("id=b,netdev=hb,socket-path={}", sb.display()));
    let mut daemon = Daemon::start(cmd, 2);
    let connect = |socket: &std::path::Path| {
        let mut g = TestFrontend::connect(socket, 1, F_EVENT_IDX);
        g.rings[0].post_buffers(&g.ram, 0, 8, BUF_LEN as u32, true);
        g.kick(0);
        g
    };
    let (mut a, mut b) = (connect(&sa), connect(&sb));
    let (mac_a, mac_b) = ([0x52, 0x54, 0, 0, 0, 0xa], [0x52, 0x54, 0, 0, 0, 0xb]);
    let ethernet = |dst: [u8; 6], src: [u8; 6], len: usize| {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x88, 0xb5]);
        f.resize(len, 0x5a);
        f
    };
    // A broadcasts (the hub learns A), B answers A (unicast), A sends to B (unicast).
    a.send(0, 0, &ethernet([0xff; 6], mac_a, 60));
    a.wait_used(1, 1);
    b.wait_used(0, 1);
    b.send(0, 0, &ethernet(mac_a, mac_b, 300));
    b.wait_used(1, 1);
    a.wait_used(0, 1);
    a.send(0, 1, &ethernet(mac_b, mac_a, 90));
    a.wait_used(1, 1);
    b.wait_used(0, 1);
    drop((a, b));
    // Shutdown closes the file with every record written.
    daemon.stop_cleanly();
    let seen: Vec<(usize, usize, String)> = frames_in(&file)
        .into_iter()
        .map(|f| (f.0, f.1, f.2))
        .collect();
    assert_eq!(
        seen,
        vec![
            (60, 60, "52:54:00:00:00:0a".to_string()),
            (300, 100, "52:54:00:00:00:0b".to_string()),
            (90, 90, "52:54:00:00:00:0a".to_string()),
        ]
    );
}
