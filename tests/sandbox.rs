//! `--sandbox` is real: every thread of the daemon (queue workers started later included) runs
//! with `NoNewPrivs: 1`, `Seccomp: 2` and only the capabilities `--keep-caps` leaves while a
//! frontend moves frames and QMP adds and removes a netdev; a forbidden system call, provoked
//! through the test-only probe, ends the process (`on`) or fails and is logged (`log`); tap
//! scripts run in the launcher process with the daemon's first privileges, and only those the
//! policy names; `--user` switches every thread.

#![allow(clippy::unwrap_used, clippy::cast_possible_wrap)]

mod common;

#[cfg(feature = "sandbox-probe")]
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::daemon::Daemon;
use common::frontend::{frame, TestFrontend, BUF_LEN, F_EVENT_IDX};
use common::netns::Netns;
use common::packet::PacketSocket;
use common::process::{child_of, status_line};
use common::qmp::Qmp;
use common::wire::Wire;
use common::TempDir;
use serde_json::json;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `NoNewPrivs`, `Seccomp`, `CapEff`, `CapBnd` and `Uid` of every thread of `pid`.
fn thread_states(pid: u32) -> Vec<[String; 5]> {
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
        states.push([
            field("NoNewPrivs:"),
            field("Seccomp:"),
            field("CapEff:"),
            field("CapBnd:"),
            field("Uid:"),
        ]);
    }
    states
}

/// A frontend on `socket` sends a frame to `wire` and gets one back through the daemon.
fn frames_both_ways(socket: &std::path::Path, wire: &Wire, seed: u8) -> TestFrontend {
    let mut guest = TestFrontend::connect(socket, 1, F_EVENT_IDX);
    guest.rings[0].post_buffers(&guest.ram, 0, 8, BUF_LEN as u32, true);
    guest.kick(0);
    let sent = frame(80, seed);
    guest.send(0, 0, &sent);
    guest.wait_used(1, 1);
    let mut buf = [0u8; 2048];
    let n = wire.sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &sent[..]);
    wire.sock.send_to(&sent, wire.daemon).unwrap();
    assert_eq!(guest.wait_used(0, 1)[0].1 as usize, 12 + sent.len());
    guest
}

/// Each thread's name and how many seccomp filters it is under.
fn filters_by_thread(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        out.push((field("Name:"), field("Seccomp_filters:")));
    }
    out
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
    daemon
        .log
        .wait_for("their own seccomp filters on top", Duration::from_secs(10));
    let mut qmp = Qmp::connect(&qmp_path);

    // Traffic both ways: the port's worker threads start under the filter.
    let guest = frames_both_ways(&socket, &wire, 3);

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

    // With a QMP listener, `--keep-caps=auto` keeps what netdev_add needs: CAP_NET_ADMIN (12),
    // CAP_NET_RAW (13) and CAP_BPF (39), if the daemon had them; nothing else, bounding set too.
    let kept = if is_root() {
        "0000008000003000"
    } else {
        "0000000000000000"
    };
    // The thread serving the frontend stacks its own filter on the process's, and the queue
    // threads it started (workers, control queue) one more; other threads have the one.
    let filters = filters_by_thread(daemon.child.id());
    for role in ["port-", "vq-pair", "vq-ctrl"] {
        assert!(
            filters.iter().any(|(name, _)| name.starts_with(role)),
            "{filters:?}"
        );
    }
    for (name, count) in &filters {
        let expected = if name.starts_with("vq-") {
            "3"
        } else if name.starts_with("port-") {
            "2"
        } else {
            "1"
        };
        assert_eq!(count, expected, "{filters:?}");
    }

    let states = thread_states(daemon.child.id());
    assert!(states.len() >= 4, "threads: {states:?}");
    for [nnp, seccomp, eff, bnd, _] in &states {
        assert_eq!((nnp.as_str(), seccomp.as_str()), ("1", "2"), "{states:?}");
        assert_eq!(eff, kept, "{states:?}");
        if is_root() {
            assert_eq!(bnd, kept, "{states:?}");
        }
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

/// Waits until process `pid` is gone (reaped by its parent, or a zombie no longer listed).
fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat) if stat.split_whitespace().nth(2) == Some("Z") => return true,
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}

#[test]
fn scripts_run_in_the_launcher_and_only_those_its_policy_names() {
    if !common::privileged_environment("sandbox scripts") {
        return;
    }
    let dir = TempDir::new("sandboxscripts");
    let log = dir.path("scripts.log");
    let script = |name: &str, word: &str| {
        let path = dir.path(name);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"{word} $1 $PPID $(grep CapEff /proc/self/status | cut -f2)\" >> {}\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        path.display().to_string()
    };
    let (up, down, extra) = (
        script("up.sh", "up"),
        script("down.sh", "down"),
        script("extra.sh", "extra"),
    );
    let qmp_path = dir.path("qmp.sock");
    let mut cmd = Daemon::command(&["--allow-spawn", &extra, "--netdev"]);
    cmd.arg(format!(
        "tap,id=n0,ifname=vusbx0,script={up},downscript={down}"
    ))
    .arg("--socket-path")
    .arg(dir.path("vm.sock"))
    .arg("--qmp")
    .arg(format!("unix:{}", qmp_path.display()));
    let mut daemon = Daemon::start(cmd, 1);
    daemon.log.wait_for("sandbox On", Duration::from_secs(10));
    let daemon_pid = daemon.child.id();
    let launcher = child_of(daemon_pid);
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{launcher}/comm"))
            .unwrap()
            .trim(),
        "vunetd-launcher"
    );
    assert_eq!(status_line(launcher, "Seccomp:"), "Seccomp:\t0");
    let daemon_caps = status_line(daemon_pid, "CapEff:");
    let launcher_caps = status_line(launcher, "CapEff:");
    assert_ne!(
        daemon_caps, launcher_caps,
        "the launcher keeps the first privileges"
    );

    // The script ran as the launcher's child, with the launcher's capabilities.
    let lines = |log: &std::path::Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let first = lines(&log);
    assert_eq!(first.len(), 1, "{first:?}");
    let caps = launcher_caps.split('\t').nth(1).unwrap();
    assert_eq!(first[0], format!("up vusbx0 {launcher} {caps}"));

    // QMP: a script the policy does not name is refused, one --allow-spawn names runs.
    let mut qmp = Qmp::connect(&qmp_path);
    let refused = qmp
        .execute(
            "netdev_add",
            json!({"type": "tap", "id": "n1", "ifname": "vusbx1", "script": "/bin/true",
                   "downscript": "no"}),
        )
        .unwrap_err();
    assert_eq!(refused["class"], "GenericError", "{refused}");
    let desc = refused["desc"].as_str().unwrap();
    assert!(
        desc.contains("'/bin/true'") && desc.contains("--allow-spawn"),
        "{desc}"
    );
    qmp.execute(
        "netdev_add",
        json!({"type": "tap", "id": "n2", "ifname": "vusbx2", "script": extra,
               "downscript": "no"}),
    )
    .unwrap();
    assert_eq!(lines(&log)[1], format!("extra vusbx2 {launcher} {caps}"));
    qmp.execute("netdev_del", json!({"id": "n2"})).unwrap();

    // At the end the downscript runs through the launcher, which then ends too.
    daemon.stop_cleanly();
    assert_eq!(lines(&log)[2], format!("down vusbx0 {launcher} {caps}"));
    assert!(
        wait_gone(launcher, Duration::from_secs(5)),
        "launcher left running"
    );
}

#[test]
fn user_and_group_switch_every_thread_and_drop_every_capability() {
    if !is_root() {
        eprintln!("--user needs root: SKIPPED");
        return;
    }
    let dir = TempDir::new("sandboxuser");
    // The daemon removes its socket file at exit as that user: the directory lets it.
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let wire = Wire::new();
    let socket = dir.path("vm.sock");
    let mut cmd = Daemon::command(&["--user", "65534", "--group", "65534", "--netdev"]);
    cmd.arg(wire.netdev("n0")).arg("--socket-path").arg(&socket);
    let mut daemon = Daemon::start(cmd, 1);
    daemon
        .log
        .wait_for("running as uid 65534 gid 65534", Duration::from_secs(10));

    let guest = frames_both_ways(&socket, &wire, 5);

    let states = thread_states(daemon.child.id());
    for [nnp, seccomp, eff, bnd, uid] in &states {
        assert_eq!((nnp.as_str(), seccomp.as_str()), ("1", "2"), "{states:?}");
        // No QMP listener: nothing is kept.
        assert_eq!(
            (eff.as_str(), bnd.as_str()),
            ("0000000000000000", "0000000000000000")
        );
        assert_eq!(uid, "65534\t65534\t65534\t65534", "{states:?}");
    }
    assert_eq!(
        status_line(daemon.child.id(), "Gid:"),
        "Gid:\t65534\t65534\t65534\t65534"
    );
    assert_eq!(
        status_line(daemon.child.id(), "Groups:").trim_end(),
        "Groups:\t65534"
    );
    drop(guest);
    daemon.stop_cleanly();
    assert!(!socket.exists(), "socket file removed as the new user");
}

#[test]
fn bad_sandbox_options_exit_2_naming_the_option() {
    for (args, needle) in [
        (&["--user", "no-such-user-here"][..], "--user"),
        (&["--keep-caps", "net_admin,flying"][..], "--keep-caps"),
        (&["--group", "0"][..], "--user"),
    ] {
        let out = Daemon::command(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn sockets_only_go_where_landlock_allows() {
    let (dir, other, allowed) = (
        TempDir::new("sandboxfs"),
        TempDir::new("sandboxfsother"),
        TempDir::new("sandboxfsallowed"),
    );
    let qmp_path = dir.path("qmp.sock");
    let mut cmd = Daemon::command(&["--socket-path"]);
    cmd.arg(dir.path("vm.sock"))
        .arg("--qmp")
        .arg(format!("unix:{}", qmp_path.display()))
        .arg("--allow-path")
        .arg(&allowed.0);
    let mut daemon = Daemon::start(cmd, 1);
    let line = daemon.log.wait_for("sandbox On", Duration::from_secs(10));
    if line.contains("landlock: not in this kernel") {
        eprintln!("no Landlock in this kernel: SKIPPED");
        return;
    }
    assert!(line.contains("landlock: "), "{line}");
    let mut qmp = Qmp::connect(&qmp_path);
    let server = |id: &str, path: &std::path::Path| {
        json!({"type": "stream", "id": id, "server": true,
               "addr": {"type": "unix", "path": path}})
    };
    // Outside the socket directories and --allow-path: refused, and nothing is created.
    let refused = qmp
        .execute("netdev_add", server("s1", &other.path("s1.sock")))
        .unwrap_err();
    assert_eq!(refused["class"], "GenericError", "{refused}");
    assert!(
        refused["desc"]
            .as_str()
            .unwrap()
            .contains("Permission denied"),
        "{refused}"
    );
    assert!(!other.path("s1.sock").exists());
    // Next to the daemon's own sockets, and in --allow-path: created, and removed again.
    for (id, path) in [("s2", dir.path("s2.sock")), ("s3", allowed.path("s3.sock"))] {
        qmp.execute("netdev_add", server(id, &path)).unwrap();
        assert!(path.exists(), "{}", path.display());
        qmp.execute("netdev_del", json!({"id": id})).unwrap();
    }
    daemon.stop_cleanly();

    // The same request without the sandbox succeeds: the refusal was Landlock's.
    let qmp_path = dir.path("qmp2.sock");
    let mut cmd = Daemon::command(&["--sandbox", "off", "--socket-path"]);
    cmd.arg(dir.path("vm2.sock"))
        .arg("--qmp")
        .arg(format!("unix:{}", qmp_path.display()));
    let mut daemon = Daemon::start(cmd, 1);
    daemon.log.wait_for("sandbox Off", Duration::from_secs(10));
    let mut qmp = Qmp::connect(&qmp_path);
    qmp.execute("netdev_add", server("s1", &other.path("s1.sock")))
        .unwrap();
    assert!(other.path("s1.sock").exists());
    qmp.execute("netdev_del", json!({"id": "s1"})).unwrap();
    daemon.stop_cleanly();
}

#[cfg(feature = "sandbox-probe")]
#[test]
fn a_call_the_process_may_make_but_a_queue_worker_may_not_is_refused_on_the_worker() {
    for (mode, tag, line) in [("on", "a", "sandbox On"), ("log", "b", "sandbox Log")] {
        let dir = TempDir::new("sandboxworker");
        let socket = dir.path(&format!("{tag}.sock"));
        let mut cmd = Daemon::command(&["--sandbox", mode, "--socket-path"]);
        cmd.arg(&socket).env("VUNETD_SANDBOX_PROBE", "worker");
        let mut daemon = Daemon::start(cmd, 1);
        daemon.log.wait_for(line, Duration::from_secs(10));
        daemon
            .log
            .wait_for("their own seccomp filters on top", Duration::from_secs(10));
        // The main thread made the same call without harm: only workers are refused it.
        // A frontend starts the port's queue worker, which then makes the call.
        // With `on` the process ends during the handshake, which fails the connect: expected.
        let guest = std::panic::catch_unwind(|| TestFrontend::connect(&socket, 1, F_EVENT_IDX));
        if mode == "on" {
            let status = daemon
                .wait_exit(Duration::from_secs(10))
                .expect("the worker's call did not end the process");
            assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?}");
        } else {
            let line = daemon
                .log
                .wait_for("forbidden system call", Duration::from_secs(10));
            assert!(line.ends_with(&libc::SYS_umask.to_string()), "{line}");
            daemon.log.wait_for(
                "the call forbidden to queue workers returned -1",
                Duration::from_secs(10),
            );
            drop(guest);
            daemon.stop_cleanly();
        }
    }
}

#[test]
fn bridge_netdevs_run_the_helper_in_the_launcher_and_their_taps_carry_frames() {
    if !common::privileged_environment("sandbox bridge helper") {
        return;
    }
    const HELPER: &str = "/usr/lib/qemu/qemu-bridge-helper";
    assert!(
        std::path::Path::new(HELPER).exists(),
        "{HELPER} (qemu-system-common)"
    );
    let dir = TempDir::new("sandboxhelper");
    let ns = Netns::new("sbhelper");
    ns.ip(&["link", "add", "vubr0", "type", "bridge"]);
    ns.ip(&["link", "set", "vubr0", "up"]);
    // The helper reads /etc/qemu/bridge.conf: the daemon gets one in its own mount namespace
    // (`ip netns exec` makes one), over an overlay of /etc, leaving the machine's alone.
    let (upper, work) = (dir.path("etc-upper"), dir.path("etc-work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let socket = dir.path("vm.sock");
    let qmp_path = dir.path("qmp.sock");
    let mut cmd = ns.command("sh");
    cmd.arg("-c")
        .arg(format!(
            "mount -t overlay overlay -o lowerdir=/etc,upperdir={},workdir={} /etc && \
             mkdir -p /etc/qemu && echo 'allow vubr0' > /etc/qemu/bridge.conf && \
             exec \"$0\" \"$@\"",
            upper.display(),
            work.display()
        ))
        .arg(env!("CARGO_BIN_EXE_vhost-user-netd"))
        .args(["--netdev", "bridge,id=n0,br=vubr0", "--socket-path"])
        .arg(&socket)
        .arg("--qmp")
        .arg(format!("unix:{}", qmp_path.display()));
    let mut daemon = Daemon::start(cmd, 1);
    daemon.log.wait_for("sandbox On", Duration::from_secs(10));
    let launcher = child_of(daemon.child.id());

    // The helper's tap is on the bridge, up.
    let links = ns
        .command("ip")
        .args(["-o", "link", "show", "master", "vubr0"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout).to_string();
    assert!(links.contains("tap") && links.contains(",UP"), "{links}");

    let bridge = ns
        .spawn(|| PacketSocket::bind("vubr0", Duration::from_secs(5)).unwrap())
        .join()
        .unwrap();
    let mut guest = TestFrontend::connect(&socket, 1, F_EVENT_IDX);
    let sent = frame(120, 9);
    guest.send(0, 0, &sent);
    guest.wait_used(1, 1);
    loop {
        let got = bridge
            .recv_incoming()
            .expect("the frame reached the bridge");
        if got == sent {
            break;
        }
    }
    drop(guest);
    daemon.stop_cleanly();
    assert!(
        wait_gone(launcher, Duration::from_secs(5)),
        "launcher left running"
    );
}
