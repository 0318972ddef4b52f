//! The daemon started as a library call, in the test's own process: what `main` does, minus
//! the signal wait. Command-line parsing, netdevs, ports and QMP come up from a `Config`, and
//! shutdown tells QMP clients and removes the sockets.

#![allow(clippy::unwrap_used)]

mod common;

use clap::Parser;
use common::frontend::{TestFrontend, F_EVENT_IDX};
use common::qmp::Qmp;
use common::TempDir;
use serde_json::json;
use vhost_user_netd::cli::Args;
use vhost_user_netd::config::Config;
use vhost_user_netd::daemon::{Daemon, StartError};

#[test]
fn a_daemon_starts_serves_and_shuts_down_in_process() {
    let dir = TempDir::new("in-process");
    let socket = dir.path("vm0.sock");
    let qmp_path = dir.path("qmp.sock");
    let args = Args::parse_from([
        "vhost-user-netd",
        "--netdev",
        "hubport,id=n0,hubid=42",
        "--port",
        &format!("socket-path={},netdev=n0,id=vm0", socket.display()),
        "--qmp",
        &format!("unix:{}", qmp_path.display()),
        "--workers",
        "1",
    ]);
    let config = Config::try_from(args).unwrap();
    let daemon = Daemon::start(&config).unwrap();
    let mut qmp = Qmp::connect(&qmp_path);
    assert_eq!(
        qmp.execute("query-netdev", json!({})).unwrap(),
        json!([{"id": "n0", "type": "hubport", "hubid": 42, "peer-id": "vm0"}])
    );
    let guest = TestFrontend::connect(&socket, 1, F_EVENT_IDX);
    qmp.wait_event("VHOST_USER_PORT_CONNECTED", |d| d["port-id"] == "vm0");
    let stats = qmp.execute("x-query-port-stats", json!({})).unwrap();
    assert_eq!(stats[0]["connected"], true);
    drop(guest);
    qmp.wait_event("VHOST_USER_PORT_DISCONNECTED", |d| d["port-id"] == "vm0");

    daemon.shutdown();
    let ev = qmp.wait_event("SHUTDOWN", |_| true);
    assert_eq!(ev["data"], json!({"guest": false, "reason": "host-signal"}));
    assert!(!socket.exists() && !qmp_path.exists(), "sockets removed");
}

#[test]
fn start_errors_say_whether_the_input_or_the_host_is_at_fault() {
    let dir = TempDir::new("in-process-errors");
    let port = |netdev: &str| {
        let args = Args::parse_from([
            "vhost-user-netd",
            "--netdev",
            netdev,
            "--port",
            &format!("socket-path={},netdev=n0", dir.path("a.sock").display()),
        ]);
        Config::try_from(args).map(|c| Daemon::start(&c))
    };
    // A socket path in a directory that does not exist: the host refuses.
    let args = Args::parse_from([
        "vhost-user-netd",
        "--netdev",
        "hubport,id=n0,hubid=1",
        "--socket-path",
        "/nonexistent/dir/a.sock",
    ]);
    let err = Daemon::start(&Config::try_from(args).unwrap()).unwrap_err();
    assert!(matches!(err, StartError::Runtime(_)), "{err}");
    assert!(err.to_string().contains("/nonexistent/dir/a.sock"), "{err}");
    // An fd= naming no descriptor: bad input.
    match port("stream,id=n0,addr.type=fd,addr.str=999") {
        Ok(Err(e)) => assert!(matches!(e, StartError::Usage(_)), "{e}"),
        other => panic!("expected a usage error, got {other:?}"),
    }
}
