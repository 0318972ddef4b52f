//! The stream netdev against peers the test controls (no privileges needed): frames both ways
//! in QEMU's length-prefixed format, link and `NETDEV_STREAM_*` events as the peer comes and
//! goes, client reconnection, a hostile length, and a server taking one client at a time.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::frontend::{frame, TestFrontend, F_EVENT_IDX};
use common::qmp::Qmp;
use common::TempDir;
use serde_json::{json, Value};

const BUF: u64 = 2048;

fn read_framed(s: &mut impl Read) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    body
}

fn write_framed(s: &mut impl Write, f: &[u8]) {
    let mut wire = (f.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(f);
    s.write_all(&wire).unwrap();
}

/// The guest sends `seed`'s frame (tx slot `slot`); the peer must get it whole.
fn guest_to_peer(t: &mut TestFrontend, peer: &mut impl Read, slot: u16, seed: u8) {
    let f = frame(300, seed);
    t.send(0, slot, &f);
    assert_eq!(read_framed(peer), f, "frame {seed} reached the peer");
    t.wait_used(1, 1);
}

/// The peer sends a frame; the guest gets it in rx buffer `slot`.
fn peer_to_guest(t: &mut TestFrontend, peer: &mut impl Write, slot: u16, seed: u8) {
    let f = frame(200, seed);
    write_framed(peer, &f);
    let used = t.wait_used(0, 1);
    assert_eq!(used, vec![(u32::from(slot), (12 + f.len()) as u32)]);
    let got = t.ram.read(t.rings[0].buffer_addr(slot, BUF) + 12, f.len());
    assert_eq!(got, f, "frame {seed} reached the guest");
}

/// The daemon with one port on `netdev` and a QMP socket; returns once both listen.
fn start_daemon(netdev: &str, socket: &std::path::Path, qmp: &std::path::Path) -> Daemon {
    let mut cmd = Daemon::command(&["--netdev", netdev]);
    cmd.arg("--socket-path").arg(socket).arg("--qmp").arg(qmp);
    Daemon::start(cmd, 2)
}

fn link_up(qmp: &mut Qmp) -> bool {
    qmp.execute("x-query-port-stats", json!({})).unwrap()[0]["link-up"]
        .as_bool()
        .unwrap()
}

#[test]
fn stream_client_follows_its_server_away_and_back() {
    let dir = TempDir::new("stream-client");
    let peer_path = dir.path("peer.sock");
    let socket = dir.path("vm0.sock");
    let qmp_path = dir.path("qmp.sock");
    let listener = UnixListener::bind(&peer_path).unwrap();
    let netdev = format!(
        "stream,id=s0,server=off,reconnect=1,addr.type=unix,addr.path={}",
        peer_path.display()
    );
    let daemon = start_daemon(&netdev, &socket, &qmp_path);
    let (mut peer, _) = listener.accept().unwrap();
    let mut qmp = Qmp::connect(&qmp_path);
    let mut t = TestFrontend::connect(&socket, 1, F_EVENT_IDX);
    t.rings[0].post_buffers(&t.ram, 0, 16, BUF as u32, true);
    t.kick(0);
    assert!(link_up(&mut qmp));
    guest_to_peer(&mut t, &mut peer, 0, 1);
    peer_to_guest(&mut t, &mut peer, 0, 2);

    // The server goes away: link down, event, guest frames dropped and counted.
    drop(peer);
    drop(listener);
    std::fs::remove_file(&peer_path).unwrap();
    let ev = qmp.wait_event("NETDEV_STREAM_DISCONNECTED", |_| true);
    assert_eq!(ev["data"], json!({"netdev-id": "s0"}));
    assert!(ev["timestamp"]["seconds"].as_u64().unwrap() > 0);
    assert!(!link_up(&mut qmp));
    t.send(0, 1, &frame(100, 3));
    t.wait_used(1, 1);
    let stats = qmp.execute("x-query-port-stats", json!({})).unwrap();
    assert_eq!(stats[0]["queue-pairs"][0]["tx-dropped-link-down"], json!(1));

    // It comes back: the daemon reconnects within `reconnect` seconds and traffic resumes.
    let listener = UnixListener::bind(&peer_path).unwrap();
    let started = Instant::now();
    let (mut peer, _) = listener.accept().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "reconnected late"
    );
    let ev = qmp.wait_event("NETDEV_STREAM_CONNECTED", |_| true);
    assert_eq!(
        ev["data"],
        json!({"netdev-id": "s0", "addr": {"type": "unix", "path": peer_path.to_str().unwrap()}})
    );
    assert!(link_up(&mut qmp));
    guest_to_peer(&mut t, &mut peer, 2, 4);
    peer_to_guest(&mut t, &mut peer, 1, 5);

    // A hostile length: the daemon drops the connection (never allocating 4 GiB), says why, and
    // reconnects.
    peer.write_all(&[0xff, 0xff, 0xff, 0xfe, 1, 2, 3]).unwrap();
    let mut rest = Vec::new();
    let _ = peer.read_to_end(&mut rest);
    qmp.wait_event("NETDEV_STREAM_DISCONNECTED", |_| true);
    daemon.log.wait_for(
        "peer announced a 4294967294-byte frame",
        Duration::from_secs(5),
    );
    let (mut peer, _) = listener.accept().unwrap();
    qmp.wait_event("NETDEV_STREAM_CONNECTED", |_| true);
    guest_to_peer(&mut t, &mut peer, 3, 6);
    peer_to_guest(&mut t, &mut peer, 2, 7);

    // query-netdev gives back what netdev_add takes.
    let netdevs = qmp.execute("query-netdev", json!({})).unwrap();
    assert_eq!(
        netdevs[0],
        json!({"id": "s0", "type": "stream", "server": false, "reconnect": 1, "peer-id": "vm0",
               "addr": {"type": "unix", "path": peer_path.to_str().unwrap()}})
    );
}

#[test]
fn stream_server_takes_one_client_at_a_time_and_batches_many_frames() {
    let dir = TempDir::new("stream-server");
    let socket = dir.path("vm0.sock");
    let qmp_path = dir.path("qmp.sock");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let netdev =
        format!("stream,id=s0,server=on,addr.type=inet,addr.host=127.0.0.1,addr.port={port}");
    let _daemon = start_daemon(&netdev, &socket, &qmp_path);
    let mut qmp = Qmp::connect(&qmp_path);
    let mut t = TestFrontend::connect(&socket, 1, F_EVENT_IDX);
    assert!(!link_up(&mut qmp), "no client yet: link down");

    let mut first = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let ev = qmp.wait_event("NETDEV_STREAM_CONNECTED", |_| true);
    let local = first.local_addr().unwrap();
    assert_eq!(
        ev["data"]["addr"],
        json!({"type": "inet", "host": "127.0.0.1", "port": local.port().to_string(), "ipv4": true}),
        "an inet server reports its peer's address"
    );
    // A second client waits while the first is served.
    let mut second = TcpStream::connect(("127.0.0.1", port)).unwrap();

    // Many frames: all arrive whole and in order.
    let count = 200u16;
    for i in 0..count {
        t.send(0, i % 256, &frame(64 + usize::from(i), i as u8));
        if i % 64 == 63 {
            t.wait_used(1, 64);
        }
    }
    for i in 0..count {
        assert_eq!(read_framed(&mut first), frame(64 + usize::from(i), i as u8));
    }
    t.wait_used(1, usize::from(count % 64));

    drop(first);
    qmp.wait_event("NETDEV_STREAM_DISCONNECTED", |_| true);
    let ev = qmp.wait_event("NETDEV_STREAM_CONNECTED", |_| true);
    assert_eq!(
        ev["data"]["addr"]["port"],
        Value::String(second.local_addr().unwrap().port().to_string())
    );
    t.rings[0].post_buffers(&t.ram, 0, 4, BUF as u32, true);
    t.kick(0);
    peer_to_guest(&mut t, &mut second, 0, 9);
}
