//! A real QEMU guest (TCG) on vhost-user-netd with an `af-xdp` netdev on one end of a veth pair in
//! a namespace the test creates, host services on the other end: ping both ways and 10 MB over
//! TCP each way with checksums, in skb mode with one queue pair and in native mode with two; and
//! a daemon without any capability on sockets a privileged helper prepared (`inhibit=on`,
//! `sock-fds`), hot-swapped over QMP to a socket passed with `getfd`.

#![cfg(feature = "af-xdp")]
#![allow(clippy::unwrap_used, clippy::cast_possible_wrap)]

mod common;

use common::daemon::Daemon;
use common::guest_traffic::{
    check_ping_and_transfers, guest_done, phase, prepare, tell_guest, HostPeer, Prepared, FLOWS,
    GUEST_IP, HOST_IP, SETUP, STEP,
};
use common::netns::Netns;
use common::privileged_environment;
use common::process::{child_of, status_line};
use common::qemu::{Guest, NicSpec};

/// The daemon's end of the veth pair.
const XDP_IF: &str = "vxsk0";
/// The host's end.
const HOST_IF: &str = "vpeer0";

const JUMBO: &str = r#"
if ping -c 3 -W 5 -s 8000 10.0.0.1 | grep -q " 0% packet loss"; then echo "RESULT ping-jumbo ok"; else echo "RESULT ping-jumbo fail"; fi
"#;

/// The privileged helper that attaches the program and hands out sockets.
const HELPER: &str = env!("CARGO_BIN_EXE_vhost-user-netd-xdp-helper");

/// A veth pair with `queues` queues each way; the host end carries the host's address and
/// finishes its own checksums (AF_XDP has no way to carry a partial one to the guest).
fn veth(ns: &Netns, queues: u16) {
    veth_mtu(ns, queues, 1500);
}

fn veth_mtu(ns: &Netns, queues: u16, mtu: u32) {
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
    for ifname in [XDP_IF, HOST_IF] {
        ns.ip(&["link", "set", ifname, "mtu", &mtu.to_string()]);
    }
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

/// Boots the guest on `socket` with `queues` queue pairs and checks ping and the transfers
/// (with `flows` parallel downloads served, whose thread is returned).
fn boot_and_exchange(
    prepared: &Prepared,
    socket: &std::path::Path,
    queues: u16,
    flows: usize,
) -> (Guest, Option<std::thread::JoinHandle<usize>>) {
    let peer = HostPeer::start(&prepared.ns, flows);
    let nic = NicSpec {
        socket,
        queues,
        reconnect_ms: None,
        qemu_is_server: false,
    };
    let guest = Guest::boot(&prepared.kernel, &prepared.initrd, &nic, queues);
    let flows = check_ping_and_transfers(&guest, &prepared.ns, peer, &prepared.dir, queues);
    (guest, flows)
}

/// Ends the daemon (through its helper, if any) with SIGTERM; no XDP program may be left.
fn stop(daemon: &mut Daemon, ns: &Netns) {
    let status = daemon.terminate();
    assert!(status.success(), "exit on SIGTERM: {status}");
    assert_eq!(xdp_attachment(ns), "none", "program left attached");
}

fn guest_through_af_xdp(tag: &str, queues: u16, mode: &str) {
    let script = if queues > 1 {
        format!("{SETUP}{FLOWS}")
    } else {
        SETUP.to_string()
    };
    let prepared = prepare(tag, &script);
    let (ns, dir) = (&prepared.ns, &prepared.dir);
    veth(ns, queues);
    let socket = dir.path("vm.sock");
    let mut cmd = ns.command(common::daemon::BINARY);
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--netdev")
        .arg(format!(
            "af-xdp,id=n0,ifname={XDP_IF},mode={mode},queues={queues}"
        ));
    let mut daemon = Daemon::start(cmd, 1);
    let attached = xdp_attachment(ns);
    let expected = if mode == "native" {
        "xdp"
    } else {
        "xdpgeneric"
    };
    assert_eq!(attached, expected, "how the program is attached");
    let flows = usize::from(queues > 1) * 16;
    let (mut guest, flows) = boot_and_exchange(&prepared, &socket, queues, flows);
    if let Some(flows) = flows {
        guest.console.wait_for("RESULT flows-done", STEP);
        assert_eq!(flows.join().expect("flows thread"), 16);
    }
    guest_done(&mut guest);
    for pair in 0..queues {
        let (rx, tx) = daemon.pair_frames(pair);
        assert!(rx + tx > 0, "queue pair {pair} carried no frames");
    }
    // libxdp takes its program off the interface with the last socket.
    stop(&mut daemon, ns);
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
    // The loopback device has no driver-mode XDP (and its 64 KiB MTU asks for multi-buffer).
    let (code, err) = run("af-xdp,id=n0,ifname=lo,mode=native");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("failed to attach a multi-buffer XDP program to 'lo' in native mode"),
        "{err}"
    );
    // Without CAP_NET_RAW no AF_XDP socket can be created: the error says what to do instead.
    let out = ns
        .command("setpriv")
        .args([
            "--bounding-set=-all",
            "--inh-caps=-all",
            common::daemon::BINARY,
        ])
        .args(["--socket-path", "/nonexistent/x.sock", "--netdev"])
        .arg(format!("af-xdp,id=n0,ifname={XDP_IF},mode=skb"))
        .output()
        .expect("run daemon");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("needs CAP_NET_RAW"), "{err}");
    let (code, err) = run(&format!("af-xdp,id=n0,ifname={XDP_IF},inhibit=on"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("'inhibit=on' requires 'sock-fds' or 'map-path'"),
        "{err}"
    );
    assert_eq!(xdp_attachment(&ns), "none", "a failed start left a program");
}

#[test]
fn guest_on_af_xdp_without_privileges_sockets_from_a_helper_and_qmp_hot_swap() {
    if !privileged_environment("guest_on_af_xdp_without_privileges") {
        return;
    }
    let prepared = prepare("xdpnp", &format!("{SETUP}{}", phase("swap", 5002)));
    let (ns, dir) = (&prepared.ns, &prepared.dir);
    veth(ns, 1);
    let socket = dir.path("vm.sock");
    let qmp_path = dir.path("qmp.sock");
    // The helper attaches the program and puts a socket in its map; the daemon runs with every
    // capability dropped (root's uid, empty bounding set) on that socket.
    let mut cmd = ns.command(HELPER);
    cmd.args(["--ifname", XDP_IF, "--queues", "1", "--"])
        .args([
            "setpriv",
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--no-new-privs",
        ])
        .arg(common::daemon::BINARY)
        .arg("--socket-path")
        .arg(&socket)
        .arg("--qmp")
        .arg(&qmp_path)
        .arg("--netdev")
        .arg(format!(
            "af-xdp,id=n0,ifname={XDP_IF},inhibit=on,sock-fds={{sock-fds}}"
        ));
    let mut daemon = Daemon::start(cmd, 1);
    let daemon_pid = child_of(daemon.child.id());
    assert_eq!(status_line(daemon_pid, "Name:"), "Name:\tvhost-user-netd");
    assert_eq!(
        status_line(daemon_pid, "CapEff:"),
        "CapEff:\t0000000000000000"
    );
    assert_eq!(
        status_line(daemon_pid, "CapBnd:"),
        "CapBnd:\t0000000000000000"
    );
    assert_eq!(xdp_attachment(ns), "xdp", "the helper's program");

    let (mut guest, _) = boot_and_exchange(&prepared, &socket, 1, 0);

    // Hot-swap over QMP to a socket a second helper run prepares and qemu.qmp passes in.
    guest.console.wait_for("PHASE swap", STEP);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/af_xdp_netdev_add.py");
    let out = ns
        .command(HELPER)
        .args(["--ifname", XDP_IF, "--", "python3"])
        .arg(script)
        .arg(&qmp_path)
        .args([XDP_IF, "{sock-fds}"])
        .output()
        .expect("run the QMP script");
    assert!(
        out.status.success(),
        "af_xdp_netdev_add.py:\n{}\n{}\ndaemon:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        daemon.log.transcript()
    );
    if let Err(e) = tell_guest(ns, 5002, "swapped") {
        panic!(
            "guest unreachable after the swap: {e}\ndaemon:\n{}",
            daemon.log.transcript()
        );
    }
    let line = guest.console.wait_for("RESULT go", STEP);
    assert!(line.ends_with("swapped"), "{line}");
    let line = guest.console.wait_for("RESULT ping-after-swap", STEP);
    assert!(line.ends_with(" ok"), "{line}");
    guest_done(&mut guest);
    // SIGTERM to the helper reaches the daemon; the helper then takes its program off.
    stop(&mut daemon, ns);
}

#[test]
fn guest_on_af_xdp_with_a_9000_byte_mtu() {
    if !privileged_environment("guest_on_af_xdp_jumbo") {
        return;
    }
    let script = format!(
        "ip link set eth0 mtu 9000\n{SETUP}{JUMBO}{}",
        phase("host-ping", 5002)
    );
    let prepared = prepare("xdpjumbo", &script);
    let (ns, dir) = (&prepared.ns, &prepared.dir);
    veth_mtu(ns, 1, 9000);
    let socket = dir.path("vm.sock");
    let mut cmd = ns.command(common::daemon::BINARY);
    cmd.arg("--socket-path")
        .arg(&socket)
        .args(["--mtu", "9000", "--netdev"])
        .arg(format!("af-xdp,id=n0,ifname={XDP_IF},mode=skb"));
    let mut daemon = Daemon::start(cmd, 1);
    assert!(
        !daemon.log.matching("multi-buffer").is_empty(),
        "{}",
        daemon.log.transcript()
    );
    let (mut guest, _) = boot_and_exchange(&prepared, &socket, 1, 0);
    let line = guest.console.wait_for("RESULT ping-jumbo", STEP);
    assert!(line.ends_with(" ok"), "guest → host 8000-byte ping: {line}");
    // The guest waits (listening on 5002) while the host pings it with 8000-byte frames.
    guest.console.wait_for("PHASE host-ping", STEP);
    let out = ns
        .command("ping")
        .args(["-c", "3", "-W", "5", "-s", "8000", "-M", "do", GUEST_IP])
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 0% packet loss"),
        "host → guest 8000-byte ping:\n{text}"
    );
    tell_guest(ns, 5002, "pinged").expect("guest's listener");
    let line = guest.console.wait_for("RESULT ping-after-host-ping", STEP);
    assert!(line.ends_with(" ok"), "{line}");
    guest_done(&mut guest);
    let c = daemon.pair_counts(0);
    assert!(
        c.rx_max_frame > 8000 && c.tx_max_frame > 8000,
        "frames over one UMEM frame both ways: rx {} tx {}",
        c.rx_max_frame,
        c.tx_max_frame
    );
    stop(&mut daemon, ns);
}
