//! The daemon under a service manager (`Type=notify`): a `NOTIFY_SOCKET` the test binds gets
//! `READY=1` once the port listens, a `STATUS=` line as a frontend comes and goes, `WATCHDOG=1`
//! while `WATCHDOG_USEC` is set and the queue workers answer, and `STOPPING=1` at SIGTERM.
//! Socket activation (`systemd-socket-activate`: a port and the QMP listener by name) and a
//! socketpair end from QEMU (`--fd`, served once), each with a guest pinging through it.

#![allow(clippy::unwrap_used, clippy::cast_possible_wrap)]

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::TempDir;

/// The next notification containing `needle` (others are skipped), within `timeout`.
fn expect(socket: &UnixDatagram, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
        let Ok(n) = socket.recv(&mut buf) else { break };
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        if text.contains(needle) {
            return text;
        }
        seen.push(text);
    }
    panic!("no notification with {needle:?}; got {seen:?}");
}

#[test]
fn ready_status_watchdog_and_stopping_reach_the_notify_socket() {
    let dir = TempDir::new("notify");
    let notify_path = dir.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let socket = dir.path("vm.sock");
    let mut cmd = Daemon::command(&["--workers", "1", "--netdev", "user,id=u0"]);
    cmd.arg("--socket-path")
        .arg(&socket)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000");
    let mut daemon = Daemon::start(cmd, 1);

    let ready = expect(&notify, "READY=1", Duration::from_secs(10));
    assert!(
        ready.contains("STATUS=1 port(s), 0 frontend(s) connected"),
        "{ready}"
    );
    // A connection is a frontend as soon as it is accepted; gone when it closes.
    let frontend = UnixStream::connect(&socket).unwrap();
    expect(
        &notify,
        "STATUS=1 port(s), 1 frontend(s) connected",
        Duration::from_secs(10),
    );
    drop(frontend);
    expect(
        &notify,
        "STATUS=1 port(s), 0 frontend(s) connected",
        Duration::from_secs(10),
    );
    // WATCHDOG_USEC=200 ms: a ping every 100 ms while the shared worker answers.
    for _ in 0..3 {
        expect(&notify, "WATCHDOG=1", Duration::from_secs(2));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGTERM) };
    expect(&notify, "STOPPING=1", Duration::from_secs(10));
    assert!(daemon.child.wait().unwrap().success());
}

/// The guest's part: a static address on the user stack's network, then the gateway (which the
/// stack answers from the host's loopback).
const PING_GATEWAY: &str = r#"
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
if ping -c 3 -W 5 10.0.2.2 | grep -q " 0% packet loss"; then echo "RESULT ping-gateway ok"; else echo "RESULT ping-gateway fail"; fi
"#;

fn guest_pings_gateway(guest: &mut common::qemu::Guest) {
    let line = guest
        .console
        .wait_for("RESULT ping-gateway", Duration::from_secs(180));
    assert!(line.ends_with(" ok"), "{line}");
    guest
        .console
        .wait_for("GUEST-DONE", Duration::from_secs(60));
    assert!(
        guest.wait_exit(Duration::from_secs(30)),
        "guest did not power off"
    );
}

#[test]
fn socket_activation_a_named_port_and_qmp_and_a_guest_pinging_through_it() {
    if !common::privileged_environment("socket_activation") {
        return;
    }
    let (kernel, modules) = common::guest_kernel().expect("kernel");
    let dir = TempDir::new("sockact");
    let initrd = dir.path("initrd.cpio");
    common::initramfs::build(&initrd, &modules, PING_GATEWAY);
    let (socket, qmp) = (dir.path("vm.sock"), dir.path("qmp.sock"));
    // systemd-socket-activate listens on both, and starts the daemon at the first connection
    // with LISTEN_FDS=2, LISTEN_FDNAMES=vm0:qmp. No --socket-path: the sockets are the ports.
    let mut cmd = std::process::Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(&socket)
        .arg("-l")
        .arg(&qmp)
        .arg("--fdname=vm0:qmp")
        .args(["-E", "RUST_LOG=info", common::daemon::BINARY]);
    let daemon = Daemon::start(cmd, 0);
    let nic = common::qemu::NicSpec {
        socket: &socket,
        queues: 1,
        reconnect_ms: None,
        qemu_is_server: false,
    };
    let mut guest = common::qemu::Guest::boot(&kernel, &initrd, &nic, 1);
    daemon
        .log
        .wait_for("port vm0: listening on Fd(3)", Duration::from_secs(60));
    daemon
        .log
        .wait_for("QMP listening on inherited fd 4", Duration::from_secs(10));
    let mut client = common::qmp::Qmp::connect(&qmp);
    let netdevs = client
        .execute("query-netdev", serde_json::json!({}))
        .unwrap();
    assert_eq!(netdevs[0]["peer-id"], "vm0", "{netdevs}");
    guest_pings_gateway(&mut guest);
}

/// One end of a socketpair as `--fd` (what QEMU's `-netdev passt` and libvirt's launchers hand
/// a backend): served as one connection, frames cross both ways, and the daemon exits cleanly
/// when it closes. (QEMU 10.0's own `-chardev socket,fd=` refuses descriptor passing on such a
/// socket, so the in-repo frontend drives it.)
#[test]
fn a_connected_fd_is_served_once_and_the_daemon_then_exits() {
    use common::frontend::{frame, TestFrontend, F_EVENT_IDX};
    let wire = common::wire::Wire::new();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut cmd = Daemon::command(&["--fd", "3", "--netdev", &wire.netdev("n0")]);
    common::process::pass_fds(&mut cmd, vec![(theirs.as_raw_fd(), 3)]);
    let mut daemon = Daemon::start_until(cmd, "serving the frontend connected on fd 3", 1);
    drop(theirs);
    let mut guest = TestFrontend::over(ours, 1, F_EVENT_IDX);
    guest.rings[0].post_buffers(&guest.ram, 0, 8, common::frontend::BUF_LEN as u32, true);
    guest.kick(0);
    let sent = frame(80, 7);
    guest.send(0, 0, &sent);
    guest.wait_used(1, 1);
    let mut buf = [0u8; 2048];
    let n = wire
        .sock
        .recv(&mut buf)
        .expect("the guest's frame on the wire");
    assert_eq!(&buf[..n], &sent[..]);
    wire.sock.send_to(&sent, wire.daemon).unwrap();
    let (_, len) = guest.wait_used(0, 1)[0];
    assert_eq!(len as usize, 12 + sent.len(), "frame to the guest");
    drop(guest);
    // The connection is gone: the daemon ends on its own, cleanly.
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("daemon still running after its frontend left");
    assert!(status.success(), "{status}");
}
