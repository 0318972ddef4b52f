//! Running the Python `qemu.qmp` checks in `tests/python/` against a daemon's QMP socket.

use std::path::Path;

/// Runs `tests/python/SCRIPT SOCKET`; panics with its output if it fails. Returns false (skip)
/// only outside the full suite when python3 has no `qemu.qmp`.
pub fn run_qmp_script(script: &str, socket: &Path) -> bool {
    run_qmp_script_with(script, socket, &[])
}

/// As [`run_qmp_script`], with more arguments after the socket.
pub fn run_qmp_script_with(script: &str, socket: &Path, args: &[&str]) -> bool {
    let available = std::process::Command::new("python3")
        .args(["-c", "import qemu.qmp"])
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        if std::env::var_os("VUNETD_FULL_SUITE").is_some() || std::env::var_os("CI").is_some() {
            panic!("python3 with qemu.qmp is required (scripts/install-test-deps.sh installs it)");
        }
        eprintln!("{script}: SKIPPED, no python3 qemu.qmp");
        return false;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = std::process::Command::new("python3")
        .arg(path)
        .arg(socket)
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}
