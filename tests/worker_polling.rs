//! A worker that just had work keeps reading the pair's rings for `--poll-us` instead of asking
//! the guest to kick: a driver that honours `VIRTIO_RING_F_EVENT_IDX` (kicks only when the
//! device's `avail_event` asks) sends a stream of frames with a handful of kicks, not one each;
//! and when the worker stops polling it asks for kicks again, so nothing is left behind.

#![allow(clippy::unwrap_used)]

mod common;

use std::num::Wrapping;

use common::daemon::Daemon;
use common::frontend::{frame, TestFrontend, BUF_LEN, F_EVENT_IDX};
use common::qmp::Qmp;
use common::TempDir;
use serde_json::json;

const TX: usize = 1;
const FRAMES: u16 = 50;

/// The pair's counter `name` from `x-query-port-stats`.
fn counter(qmp: &mut Qmp, name: &str) -> u64 {
    let stats = qmp.execute("x-query-port-stats", json!({})).unwrap();
    stats[0]["queue-pairs"][0][name].as_u64().unwrap()
}

/// Posts frames one after another from avail index (and slot) `first`, each once the previous
/// one completed, kicking only when the device's `avail_event` asks for it. Returns how many
/// kicks that took.
fn send_honouring_event_idx(fe: &mut TestFrontend, first: u16) -> u64 {
    let mut kicks = 0;
    let mut avail = Wrapping(first);
    for i in 0..FRAMES {
        let mut data = vec![0u8; fe.hdr_len()];
        data.extend_from_slice(&frame(60, i as u8));
        let old = avail;
        fe.rings[TX].post_tx(&fe.ram, first + i, &data, BUF_LEN);
        avail += Wrapping(1);
        let event = Wrapping(fe.rings[TX].avail_event(&fe.ram));
        if (avail - event - Wrapping(1)) < (avail - old) {
            fe.kick(TX);
            kicks += 1;
        }
        fe.wait_used(TX, 1);
    }
    kicks
}

/// A daemon on `netdev` polling 10 ms after work (the frames below follow each other within
/// microseconds), its QMP session and a frontend with `EVENT_IDX`.
fn polling_daemon(dir: &TempDir, netdev: &str) -> (Daemon, Qmp, TestFrontend) {
    let (socket, qmp_path) = (dir.path("vm.sock"), dir.path("qmp.sock"));
    let mut cmd = Daemon::command(&["--netdev", netdev, "--poll-us", "10000"]);
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--qmp")
        .arg(&qmp_path);
    let daemon = Daemon::start(cmd, 2);
    let qmp = Qmp::connect(&qmp_path);
    let fe = TestFrontend::connect(&socket, 1, F_EVENT_IDX);
    assert_eq!(fe.acked & F_EVENT_IDX, F_EVENT_IDX);
    (daemon, qmp, fe)
}

#[test]
fn a_hot_worker_reads_the_ring_without_kicks_and_asks_for_them_again_before_sleeping() {
    let dir = TempDir::new("polling");
    let (_daemon, mut qmp, mut fe) = polling_daemon(&dir, "hubport,id=h0,hubid=0");

    let kicks = send_honouring_event_idx(&mut fe, 0);
    assert_eq!(counter(&mut qmp, "tx-frames"), u64::from(FRAMES));
    assert!(
        kicks <= 5,
        "{kicks} kicks for {FRAMES} frames: the worker does not poll while hot"
    );

    // Once the window is over the worker asks for kicks again: the device's avail_event
    // catches up with what it took, and the next frame is kicked and sent.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fe.rings[TX].avail_event(&fe.ram) != FRAMES {
        assert!(
            std::time::Instant::now() < deadline,
            "kicks never asked for again"
        );
        std::thread::yield_now();
    }
    let kicks = send_honouring_event_idx(&mut fe, FRAMES);
    assert!(kicks >= 1, "the first frame after a pause is kicked");
    assert_eq!(counter(&mut qmp, "tx-frames"), 2 * u64::from(FRAMES));
}
