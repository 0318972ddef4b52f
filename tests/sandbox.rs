//! `--sandbox` is real: every thread of the daemon (queue workers started later included) runs
//! with `NoNewPrivs: 1` and `Seccomp: 2` while a frontend moves frames and QMP adds and removes
//! a netdev; a forbidden system call, provoked through the test-only probe, ends the process
//! (`on`) or fails and is logged (`log`).

#![allow(clippy::unwrap_used, clippy::cast_possible_wrap)]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::daemon::Daemon;
use common::frontend::{frame, TestFrontend, BUF_LEN, F_EVENT_IDX};
use common::qmp::Qmp;
use common::wire::Wire;
use common::TempDir;
use serde_json::json;

/// `NoNewPrivs` and `Seccomp` of every thread of `pid`.
fn thread_states(pid: u32) -> Vec<(String, String)> {
    let mut states = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .map(|l| l[key.len()..].trim().to_string())
                .unwrap_or_default()
        };
        states.push((field("NoNewPrivs:"), field("Seccomp:")));
    }
    states
}

#[test]
fn every_thread_is_confined_and_the_daemon_keeps_working() {
    let dir = TempDir::new("sandbox");
    let wire = Wire::new();
    let (socket, qmp_path) = (dir.path("vm.sock"), dir.path("qmp.sock"));
    let mut cmd = Daemon::command(&["--sandbox", "on", "--netdev", &wire.netdev("n0")]);
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--qmp")
        .arg(format!("unix:{}", qmp_path.display()));
    let mut daemon = Daemon::start(cmd, 1);
    daemon.log.wait_for("sandbox On", Duration::from_secs(10));
    let mut qmp = Qmp::connect(&qmp_path);

    // Traffic both ways: the port's worker threads start under the filter.
    let mut guest = TestFrontend::connect(&socket, 1, F_EVENT_IDX);
    guest.rings[0].post_buffers(&guest.ram, 0, 8, BUF_LEN as u32, true);
    guest.kick(0);
    let sent = frame(80, 3);
    guest.send(0, 0, &sent);
    guest.wait_used(1, 1);
    let mut buf = [0u8; 2048];
    let n = wire.sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &sent[..]);
    wire.sock.send_to(&sent, wire.daemon).unwrap();
    assert_eq!(guest.wait_used(0, 1)[0].1 as usize, 12 + sent.len());

    // Netdevs come and go over QMP under the filter.
    let other = Wire::new();
    let mut add: serde_json::Value = json!({"type": "dgram", "id": "n1"});
    let text = other.netdev("n1");
    for kv in text.split(',').skip(2) {
        let (k, v) = kv.split_once('=').unwrap();
        let (outer, inner) = k.split_once('.').unwrap();
        add[outer][inner] = json!(v);
    }
    qmp.execute("netdev_add", add).unwrap();
    qmp.execute("netdev_del", json!({"id": "n1"})).unwrap();

    let states = thread_states(daemon.child.id());
    assert!(states.len() >= 4, "threads: {states:?}");
    for (nnp, seccomp) in &states {
        assert_eq!((nnp.as_str(), seccomp.as_str()), ("1", "2"), "{states:?}");
    }
    drop(guest);
    assert!(daemon.terminate().success(), "clean exit under the sandbox");
}

#[cfg(feature = "sandbox-probe")]
#[test]
fn a_forbidden_call_ends_the_process_or_with_log_fails_and_is_logged() {
    let dir = TempDir::new("sandboxprobe");
    let mut cmd = Daemon::command(&["--sandbox", "on", "--socket-path"]);
    cmd.arg(dir.path("a.sock")).env("VUNETD_SANDBOX_PROBE", "1");
    let mut killed = Daemon::start(cmd, 1);
    let status = killed
        .wait_exit(Duration::from_secs(10))
        .expect("the probe did not end the process");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?}");

    let mut cmd = Daemon::command(&["--sandbox", "log", "--socket-path"]);
    cmd.arg(dir.path("b.sock")).env("VUNETD_SANDBOX_PROBE", "1");
    let mut logged = Daemon::start(cmd, 1);
    let line = logged
        .log
        .wait_for("forbidden system call", Duration::from_secs(10));
    assert!(line.ends_with(&libc::SYS_syslog.to_string()), "{line}");
    logged
        .log
        .wait_for("the forbidden call returned -1", Duration::from_secs(10));
    assert!(logged.terminate().success(), "log mode goes on");
}
