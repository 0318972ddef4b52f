//! Ports added and removed over QMP (`port-add`, `port-del`, `query-ports`) on a daemon started
//! with no port: three ports on one hub carry frames; one is deleted while the others keep
//! switching, its socket file goes and its frontend is disconnected; the same id comes back;
//! the error classes; and 1,000 add/del cycles leave no descriptor or thread behind and do not
//! grow the daemon's memory.

#![allow(clippy::unwrap_used)]

mod common;

use common::daemon::Daemon;
use common::frontend::{TestFrontend, BUF_LEN, F_EVENT_IDX};
use common::guest_traffic::STEP;
use common::qmp::Qmp;
use common::TempDir;
use serde_json::{json, Value};

fn ethernet(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.resize(len, src[5]);
    f
}

fn frontend(socket: &std::path::Path) -> TestFrontend {
    let mut g = TestFrontend::connect(socket, 1, F_EVENT_IDX);
    g.rings[0].post_buffers(&g.ram, 0, 16, BUF_LEN as u32, true);
    g.kick(0);
    g
}

/// `from` broadcasts a frame; each of `to` receives it.
fn broadcast(from: &mut TestFrontend, slot: u16, to: &mut [&mut TestFrontend], src: u8) {
    let f = ethernet([0xff; 6], [0x52, 0x54, 0, 0, 0, src], 64);
    from.send(0, slot, &f);
    from.wait_used(1, 1);
    for g in to.iter_mut() {
        assert_eq!(g.wait_used(0, 1)[0].1 as usize, 12 + f.len());
    }
}

/// The daemon's resident memory.
fn rss_kib(pid: u32) -> u64 {
    common::process::status_line(pid, "VmRSS:")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

fn count(dir: String) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn ports_come_and_go_over_qmp_without_disturbing_the_others() {
    let dir = TempDir::new("ports");
    let qmp_path = dir.path("qmp.sock");
    // No port and no netdev: the daemon waits for QMP.
    let mut daemon = Daemon::start_until(
        Daemon::command(&["--qmp", &format!("unix:{}", qmp_path.display())]),
        "sandbox On",
        1,
    );
    let pid = daemon.child.id();
    let mut qmp = Qmp::connect(&qmp_path);
    for h in ["h0", "h1", "h2"] {
        qmp.execute(
            "netdev_add",
            json!({"type": "hubport", "id": h, "hubid": 0}),
        )
        .unwrap();
    }
    let socket = |id: &str| dir.path(&format!("{id}.sock"));
    let add = |qmp: &mut Qmp, id: &str, netdev: &str| {
        qmp.execute(
            "port-add",
            json!({"id": id, "netdev": netdev, "socket-path": socket(id)}),
        )
    };
    for (id, netdev) in [("a", "h0"), ("b", "h1"), ("c", "h2")] {
        add(&mut qmp, id, netdev).unwrap();
        let e = qmp.wait_event("VHOST_USER_PORT_ADDED", |d| d["port-id"] == id);
        assert_eq!(e["data"]["netdev-id"], netdev);
    }
    let (mut a, mut b, mut c) = (
        frontend(&socket("a")),
        frontend(&socket("b")),
        frontend(&socket("c")),
    );
    broadcast(&mut a, 0, &mut [&mut b, &mut c], 0xa);

    let ports = qmp.execute("query-ports", json!({})).unwrap();
    let ids: Vec<&str> = ports
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    for p in ports.as_array().unwrap() {
        assert_eq!(p["connected"], true, "{p}");
        assert!(
            p["features"].as_u64().unwrap() & (1 << 32) != 0,
            "VERSION_1: {p}"
        );
        assert_eq!(p["queues"], 1);
    }

    // c goes while a keeps sending to b: nothing a and b exchange is lost.
    qmp.execute("port-del", json!({"id": "c"})).unwrap();
    qmp.wait_event("VHOST_USER_PORT_DELETED", |d| d["port-id"] == "c");
    assert!(!socket("c").exists(), "its socket file is removed");
    for slot in 1..5 {
        broadcast(&mut a, slot, &mut [&mut b], 0xa);
    }
    drop(c);
    assert_eq!(
        qmp.execute("query-ports", json!({}))
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // The same id again.
    add(&mut qmp, "c", "h2").unwrap();
    let mut c = frontend(&socket("c"));
    broadcast(&mut b, 0, &mut [&mut a, &mut c], 0xb);

    // Errors, with QEMU's classes and the member named.
    let err = |r: Result<Value, Value>| {
        let e = r.unwrap_err();
        (
            e["class"].as_str().unwrap().to_string(),
            e["desc"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(
        err(add(&mut qmp, "a", "h2")),
        ("GenericError".into(), "Duplicate ID 'a' for port".into())
    );
    assert_eq!(
        err(add(&mut qmp, "d", "nope")),
        ("DeviceNotFound".into(), "Device 'nope' not found".into())
    );
    qmp.execute(
        "netdev_add",
        json!({"type": "hubport", "id": "h3", "hubid": 0}),
    )
    .unwrap();
    let (class, desc) = err(qmp.execute(
        "port-add",
        json!({"id": "d", "netdev": "h3", "socket-path": "/nonexistent/dir/d.sock"}),
    ));
    assert_eq!(class, "GenericError");
    assert!(desc.contains("/nonexistent/dir/d.sock"), "{desc}");
    let (class, desc) = err(qmp.execute(
        "port-add",
        json!({"id": "d", "netdev": "h3", "socket-path": socket("d"), "mac": "nope"}),
    ));
    assert_eq!(class, "GenericError");
    assert!(desc.starts_with("Parameter 'mac'"), "{desc}");
    assert_eq!(
        err(qmp.execute("port-del", json!({"id": "nope"}))),
        ("DeviceNotFound".into(), "Device 'nope' not found".into())
    );

    // 1,000 add/del cycles: no descriptor, thread or file is left behind, and memory stays.
    let (fds, threads, rss) = (
        count(format!("/proc/{pid}/fd")),
        count(format!("/proc/{pid}/task")),
        rss_kib(pid),
    );
    for _ in 0..1000 {
        add(&mut qmp, "d", "h3").unwrap();
        qmp.execute("port-del", json!({"id": "d"})).unwrap();
    }
    assert_eq!(count(format!("/proc/{pid}/fd")), fds, "descriptors");
    assert_eq!(count(format!("/proc/{pid}/task")), threads, "threads");
    let grown = rss_kib(pid).saturating_sub(rss);
    assert!(
        grown < 8 * 1024,
        "resident memory grew by {grown} KiB over 1,000 cycles"
    );
    assert!(!socket("d").exists());

    // The ports still switch.
    broadcast(&mut c, 0, &mut [&mut a, &mut b], 0xc);
    drop((a, b, c));
    daemon.stop_cleanly();
}

fn pairs(list: &[(&str, bool)]) -> Vec<(String, bool)> {
    list.iter().map(|(i, r)| (i.to_string(), *r)).collect()
}

/// A port's counter in `x-query-port-stats`.
fn port_stat(qmp: &mut Qmp, port: &str, member: &str) -> u64 {
    let stats = qmp.execute("x-query-port-stats", json!({})).unwrap();
    let p = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port-id"] == port)
        .unwrap()
        .clone();
    p[member]
        .as_u64()
        .or_else(|| p["queue-pairs"][0][member].as_u64())
        .unwrap_or_else(|| panic!("{member} in {p}"))
}

#[test]
fn two_ports_share_a_netdev_and_only_one_runs_its_rings() {
    let dir = TempDir::new("shared");
    let qmp_path = dir.path("qmp.sock");
    let mut daemon = Daemon::start_until(
        Daemon::command(&["--qmp", &format!("unix:{}", qmp_path.display())]),
        "sandbox On",
        1,
    );
    let mut qmp = Qmp::connect(&qmp_path);
    for h in ["h0", "h1"] {
        qmp.execute(
            "netdev_add",
            json!({"type": "hubport", "id": h, "hubid": 0}),
        )
        .unwrap();
    }
    let socket = |id: &str| dir.path(&format!("{id}.sock"));
    // A migration on this host: the source's port and the destination's on one netdev.
    for (id, netdev) in [("src", "h0"), ("dst", "h0"), ("peer", "h1")] {
        qmp.execute(
            "port-add",
            json!({"id": id, "netdev": netdev, "socket-path": socket(id)}),
        )
        .unwrap();
    }
    let mut src = frontend(&socket("src"));
    let mut peer = frontend(&socket("peer"));
    assert_eq!(
        qmp.ports_running(),
        pairs(&[("dst", false), ("peer", true), ("src", true)])
    );
    broadcast(&mut peer, 0, &mut [&mut src], 1);

    // The destination starts its rings while the source runs: refused, and it carries nothing.
    let mut dst = frontend(&socket("dst"));
    dst.sync();
    assert_eq!(
        qmp.ports_running(),
        pairs(&[("dst", false), ("peer", true), ("src", true)])
    );
    assert!(port_stat(&mut qmp, "dst", "vhost-user-failed-requests") >= 1);
    let refused = daemon
        .log
        .wait_for("netdev 'h0' runs the rings of port 'src'", STEP);
    assert!(refused.contains("port 'dst'"), "{refused}");
    let from_dst = ethernet([0xff; 6], [0x52, 0x54, 0, 0, 0, 0xd], 64);
    dst.send(0, 0, &from_dst);
    dst.wait_used(1, 1);
    assert_eq!(port_stat(&mut qmp, "dst", "tx-dropped-link-down"), 1);
    // What the peer gets next is the source's frame: the destination's never crossed.
    broadcast(&mut src, 0, &mut [&mut peer], 0x5);
    let got = peer.rings[0].buffer_addr(0, BUF_LEN);
    assert_eq!(peer.ram.read(got + 12 + 11, 1)[0], 0x5, "source MAC");
    assert!(dst.rings[0].take_used(&dst.ram).is_empty());

    // Switch-over: the source stops its rings, the destination starts them and takes over.
    let src_bases = src.stop_rings();
    assert_eq!(
        qmp.ports_running(),
        pairs(&[("dst", false), ("peer", true), ("src", false)])
    );
    let dst_bases = dst.stop_rings();
    dst.restart_rings(&dst_bases);
    assert_eq!(
        qmp.ports_running(),
        pairs(&[("dst", true), ("peer", true), ("src", false)])
    );
    broadcast(&mut peer, 1, &mut [&mut dst], 2);
    broadcast(&mut dst, 1, &mut [&mut peer], 0xd);
    let h0 = qmp.netdev("h0");
    assert_eq!(h0["peer-id"], "dst", "{h0}");

    // The source cannot take them back while the destination runs; once it is gone, it can.
    src.restart_rings(&src_bases);
    assert_eq!(
        qmp.ports_running(),
        pairs(&[("dst", true), ("peer", true), ("src", false)])
    );
    drop(dst);
    qmp.wait_event("VHOST_USER_PORT_DISCONNECTED", |d| d["port-id"] == "dst");
    let src_bases = src.stop_rings();
    src.restart_rings(&src_bases);
    assert_eq!(
        qmp.ports_running(),
        pairs(&[("dst", false), ("peer", true), ("src", true)])
    );
    broadcast(&mut peer, 2, &mut [&mut src], 3);
    drop((src, peer));
    daemon.stop_cleanly();
}
