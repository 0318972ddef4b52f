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
            "net_virtio_user0,path={},queues=1,queue_size=256",
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
    let (rx, tx) = daemon.pair_frames(0);
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
    let mut cmd = ns.command(common::daemon::BINARY);
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--netdev")
        .arg(format!("tap,id=n0,ifname={TAP},script=no,downscript=no"));
    let daemon = Daemon::start(cmd, 1);
    ns.ip(&["link", "set", TAP, "up"]);
    exchange_through_testpmd(&ns, TAP, &socket, &daemon);
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
