//! DPDK's testpmd as an independent vhost-user frontend (`net_virtio_user`, no VM): frames the
//! host sends into the tap go to testpmd, which forwards them back (io mode, loop topology); every
//! one must come back out of the tap, in order and intact.

#![allow(clippy::unwrap_used, clippy::cast_possible_wrap)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::daemon::Daemon;
use common::lines::Lines;
use common::netns::Netns;
use common::packet::PacketSocket;
use common::{privileged_environment, which, TempDir};

const TAP: &str = "vudpdk0";
const FRAMES: u32 = 2000;
const WINDOW: u32 = 32;
/// Local experimental ethertype, so the host stack ignores our frames.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

struct Testpmd {
    child: Child,
    out: Lines,
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(200));
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn test_frame(seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[12..14].copy_from_slice(&ETHERTYPE);
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in f[18..].iter_mut().enumerate() {
        *b = (i as u32 ^ seq) as u8;
    }
    f
}

/// Starts testpmd on `socket`, loops `FRAMES` frames through it from the tap `tap` in `ns`, and
/// checks the daemon's counters.
fn exchange_through_testpmd(
    ns: &Netns,
    tap: &'static str,
    socket: &std::path::Path,
    daemon: &Daemon,
) {
    exchange_through_testpmd_queues(ns, tap, socket, daemon, 1)
}

/// As [`exchange_through_testpmd`], with `queues` queue pairs on the testpmd side.
fn exchange_through_testpmd_queues(
    ns: &Netns,
    tap: &'static str,
    socket: &std::path::Path,
    daemon: &Daemon,
    queues: usize,
) {
    let prefix = format!("vunetd-{}-{tap}", std::process::id());
    let mut child = Command::new("dpdk-testpmd")
        .args([
            "-l",
            "0,1",
            "--no-huge",
            "-m",
            "512",
            "--no-pci",
            "--no-shconf",
            "--file-prefix",
            &prefix,
        ])
        .arg("--vdev")
        .arg(format!(
            "net_virtio_user0,path={},queues={queues},queue_size=256",
            socket.display()
        ))
        .args([
            "--",
            "--forward-mode=io",
            "--port-topology=loop",
            "--stats-period",
            "1",
            "--total-num-mbufs",
            "4096",
        ])
        .arg(format!("--rxq={queues}"))
        .arg(format!("--txq={queues}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn testpmd");
    let out = Lines::spawn(child.stdout.take().unwrap(), "testpmd", false);
    let testpmd = Testpmd { child, out };
    testpmd
        .out
        .wait_for("start packet forwarding", Duration::from_secs(60));

    let result = ns
        .spawn(move || {
            let sock = PacketSocket::bind(tap, Duration::from_secs(5)).expect("packet socket");
            let mut next_back = 0u32;
            for seq in 0..FRAMES {
                let len = 60 + (seq as usize * 37) % 1400;
                sock.send(&test_frame(seq, len)).expect("send");
                // Keep at most WINDOW frames in flight; read back the oldest before going on.
                while seq + 1 - next_back > WINDOW || (seq + 1 == FRAMES && next_back < FRAMES) {
                    let f = sock
                        .recv_incoming()
                        .map_err(|e| format!("frame {next_back} never came back: {e}"))?;
                    if f.get(12..14) != Some(&ETHERTYPE[..]) {
                        continue; // IPv6 router solicitations and the like
                    }
                    let got = u32::from_be_bytes(f[14..18].try_into().unwrap());
                    let len = 60 + (got as usize * 37) % 1400;
                    if got != next_back || f != test_frame(got, len) {
                        return Err(format!(
                            "expected frame {next_back} intact, got frame {got} ({} bytes)",
                            f.len()
                        ));
                    }
                    next_back += 1;
                }
            }
            Ok(next_back)
        })
        .join()
        .unwrap();
    assert_eq!(result, Ok(FRAMES));
    drop(testpmd);
    let (rx, tx) = (0..queues as u16)
        .map(|pair| daemon.pair_frames(pair))
        .fold((0, 0), |(r, t), (pr, pt)| (r + pr, t + pt));
    let frames = u64::from(FRAMES);
    assert!(
        rx >= frames && tx >= frames,
        "daemon counted rx {rx}, tx {tx}; {frames} each way expected"
    );
}

#[test]
fn testpmd_virtio_user_exchanges_frames_with_the_tap() {
    if !privileged_environment("testpmd_virtio_user") {
        return;
    }
    assert!(
        which("dpdk-testpmd").is_some(),
        "dpdk-testpmd missing (dpdk-dev)"
    );
    let dir = TempDir::new("testpmd");
    let ns = Netns::new("dpdk");
    let socket = dir.path("dpdk.sock");
    // script/downscript run with the interface name; here they log it and bring the link up.
    let log = dir.path("scripts.log");
    let up = dir.path("ifup.sh");
    let down = dir.path("ifdown.sh");
    std::fs::write(
        &up,
        format!(
            "#!/bin/sh\necho \"up $1\" >> {0}\nip link set \"$1\" up\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::write(
        &down,
        format!("#!/bin/sh\necho \"down $1\" >> {}\n", log.display()),
    )
    .unwrap();
    for f in [&up, &down] {
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let mut cmd = ns.command(common::daemon::BINARY);
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--netdev")
        .arg(format!(
            "tap,id=n0,ifname={TAP},script={},downscript={}",
            up.display(),
            down.display()
        ));
    let mut daemon = Daemon::start(cmd, 1);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!("up {TAP}\n")
    );
    exchange_through_testpmd(&ns, TAP, &socket, &daemon);
    daemon.stop_cleanly();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!("up {TAP}\ndown {TAP}\n")
    );
}

#[test]
fn unprivileged_daemon_attaches_to_a_persistent_tap_it_owns() {
    if !privileged_environment("unprivileged_persistent_tap") {
        return;
    }
    let dir = TempDir::new("usertap");
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let ns = Netns::new("usertap");
    const USER_TAP: &str = "vuowned0";
    ns.ip(&[
        "tuntap", "add", "dev", USER_TAP, "mode", "tap", "user", "nobody", "vnet_hdr",
    ]);
    ns.ip(&["link", "set", USER_TAP, "up"]);
    let socket = dir.path("user.sock");
    // No capabilities at all: the daemon must neither create the tap nor change its flags/MAC.
    let mut cmd = ns.command("setpriv");
    cmd.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ])
    .arg(common::daemon::BINARY)
    .arg("--socket-path")
    .arg(&socket)
    .arg("--netdev")
    .arg(format!(
        "tap,id=n0,ifname={USER_TAP},script=no,downscript=no"
    ));
    let daemon = Daemon::start(cmd, 1);
    exchange_through_testpmd(&ns, USER_TAP, &socket, &daemon);
}

/// The daemon gets its listening socket as fd 3 (`--fd 3`, as systemd passes it) and `queues`
/// open tap descriptors as fds 4.. (`fd=4` or `fds=4:5:...`, as libvirt passes them).
fn inherited_descriptors(tag: &'static str, tap_name: &'static str, queues: usize) {
    use std::os::fd::AsRawFd;
    let dir = TempDir::new(tag);
    let ns = Netns::new(tag);
    let mut add = vec!["tuntap", "add", "dev", tap_name, "mode", "tap", "vnet_hdr"];
    if queues > 1 {
        add.push("multi_queue");
    }
    ns.ip(&add);
    ns.ip(&["link", "set", tap_name, "up"]);
    let socket = dir.path("inherited.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let taps: Vec<_> = (0..queues)
        .map(|_| {
            ns.spawn(move || common::tap::open_tap(tap_name, queues > 1))
                .join()
                .unwrap()
        })
        .collect();
    let numbers: Vec<String> = (0..queues).map(|i| (4 + i).to_string()).collect();
    let option = if queues == 1 {
        format!("fd={}", numbers[0])
    } else {
        format!("fds={}", numbers.join(":"))
    };
    let mut cmd = ns.command(common::daemon::BINARY);
    cmd.args(["--fd", "3", "--netdev", &format!("tap,id=n0,{option}")]);
    let mut moves = vec![(listener.as_raw_fd(), 3)];
    moves.extend(
        taps.iter()
            .enumerate()
            .map(|(i, t)| (t.as_raw_fd(), 4 + i as i32)),
    );
    common::process::pass_fds(&mut cmd, moves);
    let daemon = Daemon::start(cmd, 1);
    drop((listener, taps));
    let opened = daemon.log.matching("netdev n0: tap");
    assert!(
        opened
            .iter()
            .any(|l| l.contains(&format!("queues={queues}"))),
        "{opened:?}"
    );
    exchange_through_testpmd_queues(&ns, tap_name, &socket, &daemon, queues);
}

#[test]
fn inherited_listening_socket_and_tap_fd() {
    if privileged_environment("inherited_fd") {
        inherited_descriptors("inhfd", "vufd0", 1);
    }
}

#[test]
fn inherited_listening_socket_and_multiqueue_tap_fds() {
    if privileged_environment("inherited_fds") {
        inherited_descriptors("inhfds", "vufds0", 2);
    }
}

/// A veth pair `a`–`b` in `ns`, both ends up.
#[cfg(feature = "af-xdp")]
fn veth_pair(ns: &Netns, a: &str, b: &str) {
    ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
    ns.ip(&["link", "set", a, "up"]);
    ns.ip(&["link", "set", b, "up"]);
}

/// The same loop through an `af-xdp` netdev on a veth pair: frames from the peer's packet socket
/// reach testpmd through the AF_XDP socket and come back out of it, in order and intact.
#[cfg(feature = "af-xdp")]
#[test]
fn testpmd_virtio_user_exchanges_frames_through_af_xdp() {
    if !privileged_environment("testpmd_af_xdp") {
        return;
    }
    let dir = TempDir::new("testpmdxdp");
    let ns = Netns::new("dpdkxdp");
    veth_pair(&ns, "vxsk1", "vpeer1");
    let socket = dir.path("dpdk.sock");
    let mut cmd = ns.command(common::daemon::BINARY);
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--netdev")
        .arg("af-xdp,id=n0,ifname=vxsk1");
    let mut daemon = Daemon::start(cmd, 1);
    exchange_through_testpmd(&ns, "vpeer1", &socket, &daemon);
    daemon.stop_cleanly();
}

/// `map-path` for a daemon without CAP_NET_ADMIN: the helper attaches the program and pins its
/// XSK map on a bpf filesystem (mounted in a private mount namespace); the daemon, left with
/// CAP_NET_RAW (its own sockets) and CAP_BPF (the map) only, inserts its socket there.
#[cfg(feature = "af-xdp")]
#[test]
fn testpmd_through_af_xdp_map_path_without_cap_net_admin() {
    use common::process::{child_of, status_line};
    if !privileged_environment("testpmd_af_xdp_map_path") {
        return;
    }
    let dir = TempDir::new("xdpmap");
    let ns = Netns::new("xdpmap");
    veth_pair(&ns, "vxsk2", "vpeer2");
    let bpffs = dir.path("bpf");
    std::fs::create_dir_all(&bpffs).unwrap();
    let map = bpffs.join("xsks");
    let socket = dir.path("dpdk.sock");
    let mut cmd = ns.command("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t bpf bpf "$0" && exec "$@""#)
        .arg(&bpffs)
        .arg(env!("CARGO_BIN_EXE_vhost-user-netd-xdp-helper"))
        .args(["--ifname", "vxsk2", "--no-sockets", "--pin-map"])
        .arg(&map)
        .args([
            "--",
            "setpriv",
            "--bounding-set=-all,+net_raw,+bpf",
            "--inh-caps=-all",
        ])
        .arg(common::daemon::BINARY)
        .arg("--socket-path")
        .arg(&socket)
        .arg("--netdev")
        .arg(format!(
            "af-xdp,id=n0,ifname=vxsk2,inhibit=on,map-path={}",
            map.display()
        ));
    let mut daemon = Daemon::start(cmd, 1);
    let pid = child_of(daemon.child.id());
    assert_eq!(status_line(pid, "Name:"), "Name:\tvhost-user-netd");
    // Started with CAP_NET_RAW (bit 13) and CAP_BPF (39) only, CAP_NET_ADMIN (12) gone; once the
    // map's sockets are set up, the sandbox drops those too (no QMP listener needs them).
    daemon
        .log
        .wait_for("sandbox On", std::time::Duration::from_secs(10));
    assert_eq!(status_line(pid, "CapBnd:"), "CapBnd:\t0000008000002000");
    assert_eq!(status_line(pid, "CapEff:"), "CapEff:\t0000000000000000");
    exchange_through_testpmd(&ns, "vpeer2", &socket, &daemon);
    daemon.stop_cleanly();
}
