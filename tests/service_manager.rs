//! The daemon under a service manager (`Type=notify`): a `NOTIFY_SOCKET` the test binds gets
//! `READY=1` once the port listens, a `STATUS=` line as a frontend comes and goes, `WATCHDOG=1`
//! while `WATCHDOG_USEC` is set and the queue workers answer, and `STOPPING=1` at SIGTERM.

#![allow(clippy::unwrap_used, clippy::cast_possible_wrap)]

mod common;

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
