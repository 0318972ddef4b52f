//! QMP netdev management against the real daemon with a tap in a namespace and the in-process
//! vhost-user frontend as the guest: query-netdev, hot-swap of the port's backend under traffic
//! (netdev_del, netdev_add, no reconnect), set_link, and the error classes.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::daemon::Daemon;
use common::frontend::{frame, TestFrontend, F_EVENT_IDX, F_MRG_RXBUF};
use common::netns::Netns;
use common::packet::PacketSocket;
use common::qmp::Qmp;
use common::{privileged_environment, TempDir};
use serde_json::json;

const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// A frame the host stack ignores, tagged with `tag`.
fn tagged(tag: u8) -> Vec<u8> {
    let mut f = frame(64, tag);
    f[12..14].copy_from_slice(&ETHERTYPE);
    f
}

/// The next of our tagged frames the tap received from the daemon.
fn next_tagged(sock: &PacketSocket) -> u8 {
    loop {
        let f = sock.recv_incoming().expect("frame on the tap");
        if f.get(12..14) == Some(&ETHERTYPE[..]) {
            return f[11];
        }
    }
}

#[test]
fn netdevs_are_swapped_under_a_live_port_and_links_set() {
    if !privileged_environment("qmp_netdev_hotswap") {
        return;
    }
    let dir = TempDir::new("hotswap");
    let ns = Netns::new("hotswap");
    let socket = dir.path("vm0.sock");
    let qmp_path = dir.path("qmp.sock");
    let mut cmd = ns.command(common::daemon::BINARY);
    cmd.args(["--netdev", "tap,id=n0,ifname=vuhs0,script=no,downscript=no"])
        .arg("--port")
        .arg(format!("socket-path={},netdev=n0", socket.display()))
        .arg("--qmp")
        .arg(format!("unix:{}", qmp_path.display()));
    let _daemon = Daemon::start(cmd, 2);
    ns.ip(&["link", "set", "vuhs0", "up"]);
    let mut qmp = Qmp::connect(&qmp_path);

    let netdevs = qmp.execute("query-netdev", json!({})).unwrap();
    assert_eq!(
        netdevs,
        json!([{"id": "n0", "type": "tap", "ifname": "vuhs0", "script": "no", "downscript": "no", "peer-id": "vm0"}])
    );

    let mut guest = TestFrontend::connect(&socket, 1, F_MRG_RXBUF | F_EVENT_IDX);
    let ev = qmp.wait_event("VHOST_USER_PORT_CONNECTED", |_| true);
    assert_eq!(ev["data"], json!({"port-id": "vm0", "netdev-id": "n0"}));
    let tap0 = ns
        .spawn(|| PacketSocket::bind("vuhs0", Duration::from_secs(5)).unwrap())
        .join()
        .unwrap();
    guest.send(0, 0, &tagged(1));
    guest.wait_used(1, 1);
    assert_eq!(next_tagged(&tap0), 1, "frame reached the first tap");

    // Delete the netdev: the port stays, frames are dropped and the queue keeps going.
    qmp.execute("netdev_del", json!({"id": "n0"})).unwrap();
    assert_eq!(qmp.execute("query-netdev", json!({})).unwrap(), json!([]));
    guest.send(0, 1, &tagged(2));
    assert_eq!(
        guest.wait_used(1, 1),
        vec![(1, 0)],
        "chain returned while no backend is bound"
    );
    let stats = qmp.execute("x-query-port-stats", json!({})).unwrap();
    let port = &stats[0];
    assert_eq!(
        (
            port["port-id"].as_str(),
            port["connected"].as_bool(),
            port["link-up"].as_bool()
        ),
        (Some("vm0"), Some(true), Some(false))
    );
    let pair = &port["queue-pairs"][0];
    assert!(pair["tx-frames"].as_u64().unwrap() >= 1, "{pair}");
    assert!(
        pair["tx-dropped-link-down"].as_u64().unwrap() >= 1,
        "{pair}"
    );
    assert!(pair["kicks"].as_u64().unwrap() >= 2, "{pair}");

    // A new tap under the same id: bound live, no reconnect.
    let add =
        json!({"type": "tap", "id": "n0", "ifname": "vuhs1", "script": "no", "downscript": "no"});
    qmp.execute("netdev_add", add.clone()).unwrap();
    ns.ip(&["link", "set", "vuhs1", "up"]);
    let tap1 = ns
        .spawn(|| PacketSocket::bind("vuhs1", Duration::from_secs(5)).unwrap())
        .join()
        .unwrap();
    guest.send(0, 2, &tagged(3));
    guest.wait_used(1, 1);
    assert_eq!(next_tagged(&tap1), 3, "frame reached the new tap");

    // set_link by port name: down drops, up resumes.
    qmp.execute("set_link", json!({"name": "vm0", "up": false}))
        .unwrap();
    guest.send(0, 3, &tagged(4));
    guest.wait_used(1, 1);
    qmp.execute("set_link", json!({"name": "n0", "up": true}))
        .unwrap();
    guest.send(0, 4, &tagged(5));
    guest.wait_used(1, 1);
    assert_eq!(
        next_tagged(&tap1),
        5,
        "the frame sent while the link was down was dropped"
    );

    // rx through the new tap.
    guest.rings[0].post_buffers(&guest.ram, 0, 8, 2048, true);
    guest.kick(0);
    tap1.send(&tagged(6)).unwrap();
    // The host kernel may send its own frames (IPv6 MLD/ND) on the new tap first: skip them.
    let mut got = Vec::new();
    'frames: for _ in 0..8 {
        for (id, _) in guest.wait_used(0, 1) {
            let f = guest
                .ram
                .read(guest.rings[0].buffer_addr(id as u16, 2048) + 12, 64);
            if f[12..14] == ETHERTYPE {
                got = f;
                break 'frames;
            }
        }
    }
    assert_eq!(got, tagged(6), "host → guest through the swapped-in tap");

    // The guest's MAC is learned from its frames (each tagged frame has its own): the filter
    // change is reported once, then again only after query-rx-filter.
    let ev = qmp.wait_event("NIC_RX_FILTER_CHANGED", |_| true);
    assert_eq!(ev["data"]["name"], "vm0");
    let filter = qmp
        .execute("query-rx-filter", json!({"name": "vm0"}))
        .unwrap();
    assert_eq!(filter[0]["main-mac"], "52:54:00:00:00:05", "{filter}");
    assert_eq!(filter[0]["promiscuous"], true);
    let repeats = qmp
        .events
        .iter()
        .filter(|e| e["event"] == "NIC_RX_FILTER_CHANGED")
        .count();
    assert_eq!(
        repeats, 0,
        "one event until query-rx-filter, though the MAC changed five times"
    );
    guest.send(0, 6, &tagged(8));
    guest.wait_used(1, 1);
    assert_eq!(next_tagged(&tap1), 8);
    let ev = qmp.wait_event("NIC_RX_FILTER_CHANGED", |_| true);
    assert_eq!(ev["data"]["name"], "vm0", "re-armed by the query");

    // announce-self: two RARPs for the guest's MAC out of the port's tap.
    let schedule =
        json!({"initial": 0, "max": 50, "rounds": 2, "step": 10, "interfaces": ["vm0"], "id": "t"});
    qmp.execute("announce-self", schedule).unwrap();
    for _ in 0..2 {
        let rarp = loop {
            let f = tap1.recv_incoming().expect("RARP on the tap");
            if f.get(12..14) == Some(&[0x80, 0x35][..]) {
                break f;
            }
        };
        assert_eq!(
            &rarp[6..12],
            &[0x52, 0x54, 0, 0, 0, 8],
            "announces the learned MAC"
        );
    }

    // Errors, with QEMU's classes and texts.
    let class_desc = |e: serde_json::Value| {
        (
            e["class"].as_str().unwrap().to_string(),
            e["desc"].as_str().unwrap().to_string(),
        )
    };
    let e = qmp
        .execute("query-rx-filter", json!({"name": "nope"}))
        .unwrap_err();
    assert_eq!(
        class_desc(e),
        (
            "GenericError".into(),
            "invalid net client name: nope".into()
        )
    );
    let e = qmp
        .execute(
            "announce-self",
            json!({"initial": 0, "max": 0, "rounds": 5000, "step": 0}),
        )
        .unwrap_err();
    assert!(class_desc(e).1.contains("'rounds'"));
    let e = qmp
        .execute("announce-self", json!({"initial": 0, "max": 0, "step": 0}))
        .unwrap_err();
    assert_eq!(class_desc(e).1, "Parameter 'rounds' is missing");
    let e = qmp
        .execute("netdev_del", json!({"id": "nope"}))
        .unwrap_err();
    assert_eq!(
        class_desc(e),
        ("DeviceNotFound".into(), "Device 'nope' not found".into())
    );
    let e = qmp
        .execute("set_link", json!({"name": "nope", "up": true}))
        .unwrap_err();
    assert_eq!(
        class_desc(e),
        ("DeviceNotFound".into(), "Device 'nope' not found".into())
    );
    let e = qmp.execute("netdev_add", add).unwrap_err();
    assert_eq!(
        class_desc(e),
        ("GenericError".into(), "Duplicate ID 'n0'".into())
    );
    let e = qmp
        .execute("netdev_add", json!({"type": "bogus", "id": "x"}))
        .unwrap_err();
    assert_eq!(
        class_desc(e).1,
        "Parameter 'type' does not accept value 'bogus'"
    );
    let e = qmp
        .execute("netdev_add", json!({"type": "tap"}))
        .unwrap_err();
    assert_eq!(class_desc(e).1, "Parameter 'id' is missing");
    let e = qmp
        .execute(
            "netdev_add",
            json!({"type": "tap", "id": "t9", "queues": "2"}),
        )
        .unwrap_err();
    assert_eq!(class_desc(e).1, "Parameter 'queues' expects uint64");
    let e = qmp
        .execute("set_link", json!({"name": "vm0", "up": "yes"}))
        .unwrap_err();
    assert_eq!(
        class_desc(e).1,
        "Invalid parameter type for 'up', expected: boolean"
    );
    let e = qmp.execute("set_link", json!({"name": "vm0"})).unwrap_err();
    assert_eq!(class_desc(e).1, "Parameter 'up' is missing");
    let e = qmp
        .execute(
            "netdev_add",
            json!({"type": "tap", "id": "t9", "fd": "myfd"}),
        )
        .unwrap_err();
    assert!(class_desc(e).1.contains("myfd"));
    assert_eq!(
        qmp.execute("query-netdev", json!({}))
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1,
        "failed adds left nothing"
    );

    // A tap opened by the management layer, passed with getfd, becomes the port's netdev.
    ns.ip(&["tuntap", "add", "dev", "vuhs2", "mode", "tap", "vnet_hdr"]);
    ns.ip(&["link", "set", "vuhs2", "up"]);
    let tap_fd = ns
        .spawn(|| common::tap::open_tap("vuhs2", false))
        .join()
        .unwrap();
    qmp.execute_with_fd("getfd", json!({"fdname": "tapfd"}), &tap_fd)
        .unwrap();
    drop(tap_fd);
    qmp.execute("netdev_del", json!({"id": "n0"})).unwrap();
    qmp.execute(
        "netdev_add",
        json!({"type": "tap", "id": "n0", "fd": "tapfd"}),
    )
    .unwrap();
    let netdevs = qmp.execute("query-netdev", json!({})).unwrap();
    assert_eq!(netdevs[0]["fd"], "tapfd");
    let tap2 = ns
        .spawn(|| PacketSocket::bind("vuhs2", Duration::from_secs(5)).unwrap())
        .join()
        .unwrap();
    guest.send(0, 5, &tagged(7));
    guest.wait_used(1, 1);
    assert_eq!(
        next_tagged(&tap2),
        7,
        "frame reached the tap passed by descriptor"
    );
    let e = qmp
        .execute(
            "netdev_add",
            json!({"type": "tap", "id": "n9", "fd": "tapfd"}),
        )
        .unwrap_err();
    assert!(
        class_desc(e).1.contains("tapfd"),
        "a named descriptor is consumed once"
    );

    // The frontend goes away: the port says so.
    drop(guest);
    let ev = qmp.wait_event("VHOST_USER_PORT_DISCONNECTED", |_| true);
    assert_eq!(ev["data"]["port-id"], "vm0");
    let stats = qmp.execute("x-query-port-stats", json!({})).unwrap();
    assert_eq!(stats[0]["connected"], false);
}

#[test]
fn qemu_qmp_python_client_drives_every_net_command() {
    if !privileged_environment("qmp_netdev_python") {
        return;
    }
    let dir = TempDir::new("qmp-netdev-py");
    let ns = Netns::new("qmppy");
    let qmp_path = dir.path("qmp.sock");
    let mut cmd = ns.command(common::daemon::BINARY);
    cmd.args(["--netdev", "tap,id=n0,ifname=vupy0,script=no,downscript=no"])
        .arg("--port")
        .arg(format!(
            "socket-path={},netdev=n0",
            dir.path("vm0.sock").display()
        ))
        .arg("--qmp")
        .arg(format!("unix:{}", qmp_path.display()));
    let _daemon = Daemon::start(cmd, 2);
    common::python::run_qmp_script("qmp_netdev_client.py", &qmp_path);
}
