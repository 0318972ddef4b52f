//! The systemd units in `contrib/` as systemd's own tools see them: `systemd-analyze verify`
//! accepts the socket and service pair (instantiated for `vm0`, with this build's binary), and
//! `systemd-analyze security` rates the service's exposure "OK" or better (below 5.0);
//! libvirt's schema (`virt-xml-validate`) accepts the example domain; QEMU started by the
//! example command line negotiates with the daemon's port; the cloud-hypervisor example is at
//! least valid shell (cloud-hypervisor is not packaged for these machines).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use std::time::Duration;

use common::daemon::Daemon;
use common::qmp::Qmp;
use common::{which, TempDir};
use serde_json::json;

const BINARY: &str = env!("CARGO_BIN_EXE_vhost-user-netd");

/// Copies the template units into `dir` as instance `vm0`, pointing at this build's binary.
fn instantiate(dir: &TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    let contrib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let service = std::fs::read_to_string(contrib.join("vhost-user-netd@.service")).unwrap();
    let socket = std::fs::read_to_string(contrib.join("vhost-user-netd@.socket")).unwrap();
    assert!(service.contains("/usr/libexec/vhost-user-netd"));
    let service = service.replace("/usr/libexec/vhost-user-netd", BINARY);
    let (s, k) = (
        dir.path("vhost-user-netd@vm0.service"),
        dir.path("vhost-user-netd@vm0.socket"),
    );
    std::fs::write(&s, service).unwrap();
    std::fs::write(&k, socket).unwrap();
    (s, k)
}

fn available() -> bool {
    if which("systemd-analyze").is_some() {
        return true;
    }
    assert!(
        std::env::var_os("VUNETD_FULL_SUITE").is_none(),
        "systemd-analyze missing (Debian's systemd package)"
    );
    false
}

#[test]
fn systemd_analyze_verifies_the_units() {
    if !available() {
        return;
    }
    let dir = TempDir::new("units");
    let (service, socket) = instantiate(&dir);
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&service)
        .arg(&socket)
        .current_dir(dir.path(""))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {err}");
    assert!(
        err.trim().is_empty(),
        "systemd-analyze verify complains: {err}"
    );
}

#[test]
fn the_service_is_rated_ok_or_better_by_systemd_analyze_security() {
    if !available() {
        return;
    }
    let dir = TempDir::new("unitsec");
    let (service, _) = instantiate(&dir);
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&service)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read {line}"));
    eprintln!("{line}");
    assert!(score < 5.0, "{line}");
}

#[test]
fn the_libvirt_domain_validates_against_libvirt_schema() {
    if which("virt-xml-validate").is_none() {
        assert!(
            std::env::var_os("VUNETD_FULL_SUITE").is_none(),
            "virt-xml-validate missing (Debian's libvirt-clients)"
        );
        return;
    }
    let xml = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/libvirt-vm0.xml");
    let ok = Command::new("virt-xml-validate")
        .arg(&xml)
        .arg("domain")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The validator is real: a broken interface type is refused.
    let dir = TempDir::new("libvirt");
    let broken = dir.path("broken.xml");
    let text = std::fs::read_to_string(&xml).unwrap();
    std::fs::write(
        &broken,
        text.replace("type='vhostuser'", "type='vhostuserx'"),
    )
    .unwrap();
    let refused = Command::new("virt-xml-validate")
        .arg(&broken)
        .arg("domain")
        .output()
        .unwrap();
    assert!(!refused.status.success(), "a broken domain validated");
}

#[test]
fn the_qemu_example_connects_to_the_port_with_two_queue_pairs() {
    if !common::privileged_environment("contrib QEMU example") {
        return;
    }
    let contrib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let dir = TempDir::new("contribqemu");
    let socket = dir.path("vm0.sock");
    // The configuration docs/deployment.md gives vm0: a tap with two queue pairs.
    let mut cmd = Daemon::command(&[
        "--netdev",
        "tap,id=n0,ifname=vuqc0,queues=2,script=no,downscript=no",
        "--socket-path",
    ]);
    cmd.arg(&socket);
    let mut daemon = Daemon::start(cmd, 1);
    let qmp_path = dir.path("qemu-qmp.sock");
    let mut qemu = Command::new("sh")
        .arg(contrib.join("qemu-vm0.sh"))
        .args([
            "-S",
            "-display",
            "none",
            "-nodefaults",
            "-no-user-config",
            "-qmp",
        ])
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .env("SOCK", &socket)
        .env("ACCEL", "tcg")
        .env("MEM", "256M")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    daemon
        .log
        .wait_for("frontend connected", Duration::from_secs(30));
    // QEMU answers on its monitor only once its devices are realized: the vhost-user netdev
    // accepted the port's two queue pairs.
    let mut monitor = Qmp::connect(&qmp_path);
    let status = monitor.execute("query-status", json!({})).unwrap();
    assert_eq!(status["status"], "prelaunch", "{status}");
    let _ = monitor.execute("quit", json!({}));
    assert!(qemu.wait().unwrap().success());
    daemon.stop_cleanly();
}

#[test]
fn the_cloud_hypervisor_example_is_valid_shell_with_four_queues() {
    let contrib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let script = contrib.join("cloud-hypervisor-vm0.sh");
    let out = Command::new("sh").arg("-n").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Two queue pairs: cloud-hypervisor counts rx and tx queues.
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.contains("num_queues=4") && text.contains("shared=on"));
}
