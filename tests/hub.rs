//! `hubport` netdevs: two ports of one daemon on the same hub, each driven by an in-process
//! vhost-user frontend, switch frames to each other inside the daemon (no privileges needed):
//! flooding until the hub has learned a MAC, unicast after, the hub's counters over QMP, and
//! `netdev_del`/`netdev_add` of a hub port under a live frontend; with a worker thread per queue
//! pair (the default) and with both ports' pairs on one shared worker (`--workers 1`).

#![allow(clippy::unwrap_used)]

mod common;

use common::daemon::Daemon;
use common::frontend::{TestFrontend, F_EVENT_IDX};
use common::qmp::Qmp;
use common::TempDir;
use serde_json::json;

const BUF: u64 = 2048;
const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xb];

fn frame(dst: [u8; 6], src: [u8; 6], seed: u8) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend((0..100u8).map(|i| i.wrapping_mul(seed)));
    f
}

/// `from` sends `f` in tx slot `slot`; `to` receives it whole.
fn switch(from: &mut TestFrontend, to: &mut TestFrontend, slot: u16, f: &[u8]) {
    from.send(0, slot, f);
    from.wait_used(1, 1);
    let used = to.wait_used(0, 1);
    let (id, len) = used[0];
    assert_eq!(len as usize, 12 + f.len());
    let got = to
        .ram
        .read(to.rings[0].buffer_addr(id as u16, BUF) + 12, f.len());
    assert_eq!(got, f);
    to.rings[0].make_available(&to.ram, &[id as u16]);
    to.kick(0);
}

fn hub_counter(qmp: &mut Qmp, port: usize, name: &str) -> u64 {
    let stats = qmp.execute("x-query-port-stats", json!({})).unwrap();
    stats[port]["backend"][name].as_u64().unwrap()
}

/// Names of the threads of process `pid`.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

/// A daemon with ports `a` and `b` on hub ports `h0` and `h1` of hub 0, and a QMP socket.
struct Hub {
    daemon: Daemon,
    a_sock: std::path::PathBuf,
    b_sock: std::path::PathBuf,
    qmp_path: std::path::PathBuf,
}

impl Hub {
    fn start(dir: &TempDir, extra: &[&str]) -> Hub {
        let (a_sock, b_sock, qmp_path) =
            (dir.path("a.sock"), dir.path("b.sock"), dir.path("qmp.sock"));
        let mut cmd = Daemon::command(&[
            "--netdev",
            "hubport,id=h0,hubid=0",
            "--netdev",
            "hubport,id=h1,hubid=0",
        ]);
        cmd.arg("--port")
            .arg(format!("id=a,socket-path={},netdev=h0", a_sock.display()))
            .arg("--port")
            .arg(format!("id=b,socket-path={},netdev=h1", b_sock.display()))
            .arg("--qmp")
            .arg(&qmp_path)
            .args(extra);
        Hub {
            daemon: Daemon::start(cmd, 3),
            a_sock,
            b_sock,
            qmp_path,
        }
    }

    fn qmp(&self) -> Qmp {
        Qmp::connect(&self.qmp_path)
    }
}

#[test]
fn two_ports_on_a_hub_switch_frames_and_survive_a_hot_swap() {
    switch_and_swap("hub", &[], |names| {
        let pair_threads = names.iter().filter(|n| *n == "vq-pair-0").count();
        assert_eq!(pair_threads, 2, "a worker per port's pair: {names:?}");
    });
}

#[test]
fn ports_on_one_shared_worker_switch_frames_on_its_thread() {
    switch_and_swap("hub-shared", &["--workers", "1"], |names| {
        assert!(names.iter().any(|n| n == "vq-worker-0"), "{names:?}");
        assert!(
            !names.iter().any(|n| n.starts_with("vq-pair-")),
            "no thread of its own for any pair: {names:?}"
        );
    });
}

/// A unicast frame goes straight into the destination guest's buffers while it has some; when
/// it runs out the rest wait in the port's inbox and arrive, in order, once it posts more.
/// (With a worker per pair a frame also waits when the destination's worker is busy.)
#[test]
fn frames_go_guest_to_guest_and_wait_in_order_for_buffers() {
    let dir = TempDir::new("hub-direct");
    // Both pairs on one worker: while it sends A's frames, B's pair is never busy, so whether a
    // frame goes straight in depends only on B's buffers.
    let hub = Hub::start(&dir, &["--workers", "1"]);
    let (a_sock, b_sock, mut qmp) = (hub.a_sock.clone(), hub.b_sock.clone(), hub.qmp());
    let mut a = TestFrontend::connect(&a_sock, 1, F_EVENT_IDX);
    let mut b = TestFrontend::connect(&b_sock, 1, F_EVENT_IDX);
    a.rings[0].post_buffers(&a.ram, 0, 16, BUF as u32, true);
    a.kick(0);
    // The hub learns where B is.
    switch(&mut b, &mut a, 0, &frame(MAC_A, MAC_B, 1));
    // (A had buffers: that flooded frame went straight in too.)
    let direct = hub_counter(&mut qmp, 1, "hub-direct");
    assert_eq!(direct, 1);
    // B has two buffers for five frames.
    b.rings[0].post_buffers(&b.ram, 0, 2, BUF as u32, true);
    b.kick(0);
    let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(MAC_B, MAC_A, 10 + i)).collect();
    for (slot, f) in frames.iter().enumerate() {
        a.send(0, slot as u16, f);
        a.wait_used(1, 1);
    }
    let mut got = b.wait_used(0, 2);
    assert_eq!(
        hub_counter(&mut qmp, 1, "hub-direct"),
        direct + 2,
        "written straight in"
    );
    b.rings[0].post_buffers(&b.ram, 2, 3, BUF as u32, true);
    b.kick(0);
    got.extend(b.wait_used(0, 3));
    for ((id, len), f) in got.iter().zip(&frames) {
        assert_eq!(*len as usize, 12 + f.len());
        let data = b
            .ram
            .read(b.rings[0].buffer_addr(*id as u16, BUF) + 12, f.len());
        assert_eq!(&data, f, "frames arrive whole and in order");
    }
    assert_eq!(
        hub_counter(&mut qmp, 1, "hub-direct"),
        direct + 2,
        "the rest were queued"
    );
    assert_eq!(hub_counter(&mut qmp, 1, "rx-dropped-inbox-full"), 0);
}

/// Runs the hub scenario on a daemon started with `extra` arguments, then hands the names of
/// its threads, both frontends still connected, to `threads`.
fn switch_and_swap(tag: &str, extra: &[&str], threads: impl FnOnce(&[String])) {
    let dir = TempDir::new(tag);
    let hub = Hub::start(&dir, extra);
    let (a_sock, b_sock, mut qmp) = (hub.a_sock.clone(), hub.b_sock.clone(), hub.qmp());
    let mut a = TestFrontend::connect(&a_sock, 1, F_EVENT_IDX);
    let mut b = TestFrontend::connect(&b_sock, 1, F_EVENT_IDX);
    for t in [&mut a, &mut b] {
        t.rings[0].post_buffers(&t.ram, 0, 16, BUF as u32, true);
        t.kick(0);
    }

    // Unknown destination: flooded. The reply goes to a learned MAC: unicast.
    switch(&mut a, &mut b, 0, &frame(MAC_B, MAC_A, 1));
    switch(&mut b, &mut a, 0, &frame(MAC_A, MAC_B, 2));
    switch(&mut a, &mut b, 1, &frame(MAC_B, MAC_A, 3));
    switch(&mut a, &mut b, 2, &frame([0xff; 6], MAC_A, 4));
    assert_eq!(hub_counter(&mut qmp, 0, "hub-ports"), 2);
    assert_eq!(hub_counter(&mut qmp, 0, "hub-unicast"), 2);
    assert_eq!(hub_counter(&mut qmp, 0, "hub-flooded"), 2);
    let h0 = qmp.netdev("h0");
    assert_eq!(h0["type"], "hubport");
    assert_eq!(h0["hubid"], 0);

    // Port b's hub port goes away and comes back under the live frontend.
    qmp.execute("netdev_del", json!({"id": "h1"})).unwrap();
    assert_eq!(hub_counter(&mut qmp, 0, "hub-ports"), 1);
    qmp.execute(
        "netdev_add",
        json!({"type": "hubport", "id": "h1", "hubid": 0}),
    )
    .unwrap();
    switch(&mut a, &mut b, 3, &frame(MAC_B, MAC_A, 5));
    switch(&mut b, &mut a, 1, &frame(MAC_A, MAC_B, 6));
    let err = qmp
        .execute("netdev_add", json!({"type": "hubport", "id": "h2"}))
        .unwrap_err();
    assert_eq!(err["desc"], "Parameter 'hubid' is missing");
    threads(&thread_names(hub.daemon.child.id()));
}

#[test]
fn hubport_netdev_errors_name_the_netdev() {
    for (args, needle) in [
        (
            &["--netdev", "hubport,id=h0,hubid=0,netdev=nope"][..],
            "netdev 'nope' not found",
        ),
        (
            &[
                "--netdev",
                "user,id=u0",
                "--netdev",
                "hubport,id=h0,hubid=0,netdev=u0",
                "--netdev",
                "hubport,id=h1,hubid=1,netdev=u0",
            ][..],
            "netdev 'u0' is in use by hubport 'h0'",
        ),
    ] {
        let dir = TempDir::new("hubporterr");
        let mut cmd = Daemon::command(args);
        // The port is on the hub port h0; the error is about what h0 joins.
        cmd.arg("--port").arg(format!(
            "id=p,netdev=h0,socket-path={}",
            dir.path("p.sock").display()
        ));
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
