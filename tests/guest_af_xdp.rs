//! A real QEMU guest (TCG) on vhost-user-netd with an `af-xdp` netdev on one end of a veth pair in
//! a namespace the test creates, host services on the other end: ping both ways and 10 MB over
//! TCP each way with checksums, in skb mode with one queue pair and in native mode with two.

#![cfg(feature = "af-xdp")]
#![allow(clippy::unwrap_used, clippy::cast_possible_wrap)]

mod common;

use std::time::Duration;

use common::daemon::Daemon;
use common::guest_traffic::{check_ping_and_transfers, HostPeer, HOST_IP, SETUP, STEP};
use common::netns::Netns;
use common::qemu::{Guest, NicSpec};
use common::{guest_kernel, initramfs, privileged_environment, TempDir};

/// The daemon's end of the veth pair.
const XDP_IF: &str = "vxsk0";
/// The host's end.
const HOST_IF: &str = "vpeer0";

const FLOWS: &str = r#"
i=0
while [ $i -lt 16 ]; do nc 10.0.0.1 5003 < /dev/null > /dev/null & i=$((i+1)); done
wait
echo "RESULT flows-done"
"#;

/// A veth pair with `queues` queues each way; the host end carries the host's address and
/// finishes its own checksums (AF_XDP has no way to carry a partial one to the guest).
fn veth(ns: &Netns, queues: u16) {
    let q = queues.to_string();
    ns.ip(&[
        "link",
        "add",
        XDP_IF,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        HOST_IF,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
    ]);
    ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", HOST_IF]);
    ns.ip(&["link", "set", XDP_IF, "up"]);
    ns.ip(&["link", "set", HOST_IF, "up"]);
    let status = ns
        .command("ethtool")
        .args(["-K", HOST_IF, "tx", "off"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("ethtool");
    assert!(status.success(), "ethtool -K {HOST_IF} tx off");
}

/// The XDP program attached to the daemon's interface, as `ip link` shows it.
fn xdp_attachment(ns: &Netns) -> String {
    let out = ns
        .command("ip")
        .args(["-d", "link", "show", XDP_IF])
        .output()
        .expect("ip link");
    let text = String::from_utf8_lossy(&out.stdout);
    // `xdp` (native), `xdpgeneric` (skb), `xdpmulti` (several), with `/id:N` after one.
    text.split_whitespace()
        .find(|w| w.starts_with("xdp"))
        .map_or("none", |w| w.split('/').next().unwrap_or(w))
        .to_string()
}

fn guest_through_af_xdp(tag: &str, queues: u16, mode: &str) {
    let (kernel, modules) = guest_kernel().expect("kernel");
    let dir = TempDir::new(tag);
    let initrd = dir.path("initrd.cpio");
    let script = if queues > 1 {
        format!("{SETUP}{FLOWS}")
    } else {
        SETUP.to_string()
    };
    initramfs::build(&initrd, &modules, &script);
    let ns = Netns::new(tag);
    veth(&ns, queues);
    let socket = dir.path("vm.sock");
    let mut cmd = ns.command(common::daemon::BINARY);
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--netdev")
        .arg(format!(
            "af-xdp,id=n0,ifname={XDP_IF},mode={mode},queues={queues}"
        ));
    let mut daemon = Daemon::start(cmd, 1);
    let attached = xdp_attachment(&ns);
    let expected = if mode == "native" {
        "xdp"
    } else {
        "xdpgeneric"
    };
    assert_eq!(attached, expected, "how the program is attached");
    let flows = usize::from(queues > 1) * 16;
    let peer = HostPeer::start(&ns, flows);
    let nic = NicSpec {
        socket: &socket,
        queues,
        reconnect_ms: None,
        qemu_is_server: false,
    };
    let mut guest = Guest::boot(&kernel, &initrd, &nic, queues);
    let flows = check_ping_and_transfers(&guest, &ns, peer, &dir, queues);
    if let Some(flows) = flows {
        guest.console.wait_for("RESULT flows-done", STEP);
        assert_eq!(flows.join().expect("flows thread"), 16);
    }
    guest.console.wait_for("GUEST-DONE", STEP);
    assert!(
        guest.wait_exit(Duration::from_secs(30)),
        "guest did not power off"
    );
    for pair in 0..queues {
        let (rx, tx) = daemon.pair_frames(pair);
        assert!(rx + tx > 0, "queue pair {pair} carried no frames");
    }
    let status = daemon.terminate();
    assert!(status.success(), "daemon exit on SIGTERM: {status}");
    // libxdp takes its program off the interface with the last socket.
    assert_eq!(xdp_attachment(&ns), "none", "program left attached");
}

#[test]
fn guest_on_af_xdp_skb_mode_one_queue_pair() {
    if !privileged_environment("guest_on_af_xdp_skb_mode") {
        return;
    }
    guest_through_af_xdp("xdp1", 1, "skb");
}

#[test]
fn guest_on_af_xdp_native_mode_two_queue_pairs() {
    if !privileged_environment("guest_on_af_xdp_native_mode") {
        return;
    }
    guest_through_af_xdp("xdp2", 2, "native");
}

#[test]
fn af_xdp_errors_name_the_option_and_exit_2() {
    if !privileged_environment("af_xdp_errors") {
        return;
    }
    let ns = Netns::new("xdperr");
    veth(&ns, 1);
    let run = |netdev: &str| {
        let out = ns
            .command(common::daemon::BINARY)
            .args(["--socket-path", "/nonexistent/x.sock", "--netdev", netdev])
            .output()
            .expect("run daemon");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run("af-xdp,id=n0,ifname=nosuch0");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("failed to get ifindex for 'nosuch0'"), "{err}");
    let (code, err) = run(&format!("af-xdp,id=n0,ifname={XDP_IF},start-queue=1"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("'start-queue'"), "{err}");
    let (code, err) = run(&format!("af-xdp,id=n0,ifname={XDP_IF},inhibit=on"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("'inhibit=on' requires 'sock-fds' or 'map-path'"),
        "{err}"
    );
    assert_eq!(xdp_attachment(&ns), "none", "a failed start left a program");
}
