//! Shared pieces of the integration tests: real guests, namespaces and daemons, each cleaned up
//! by the guard that created it.

#![allow(clippy::unwrap_used, clippy::cast_possible_wrap)]
#![allow(dead_code)]

pub mod daemon;
pub mod frontend;
pub mod guest_traffic;
pub mod initramfs;
pub mod lines;
pub mod netns;
pub mod packet;
pub mod process;
pub mod python;
pub mod qemu;
pub mod qmp;
pub mod raw_frontend;
pub mod tap;
pub mod wire;

use std::path::PathBuf;

/// Whether tests needing root, QEMU and the guest kernel can run here. In the full suite
/// (`scripts/test.sh` sets `VUNETD_FULL_SUITE`) and under CI they must: a missing piece fails the
/// test instead of skipping it.
pub fn privileged_environment(test: &str) -> bool {
    let missing = missing_pieces();
    if missing.is_empty() {
        return true;
    }
    let why = missing.join(", ");
    if std::env::var_os("VUNETD_FULL_SUITE").is_some() || std::env::var_os("CI").is_some() {
        panic!("{test}: required under CI but missing: {why} (run scripts/install-test-deps.sh)");
    }
    eprintln!("{test}: SKIPPED, missing: {why}");
    false
}

fn missing_pieces() -> Vec<String> {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for tool in ["qemu-system-x86_64", "ip", "ping"] {
        if which(tool).is_none() {
            missing.push(tool.to_string());
        }
    }
    if guest_kernel().is_none() {
        missing.push("/boot/vmlinuz-* (linux-image-amd64)".to_string());
    }
    if !std::path::Path::new("/bin/busybox").exists() {
        missing.push("/bin/busybox (busybox-static)".to_string());
    }
    missing
}

/// Finds a program on PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(tool))
        .find(|p| p.is_file())
}

/// The newest installed guest kernel and its modules directory.
pub fn guest_kernel() -> Option<(PathBuf, PathBuf)> {
    let mut kernels: Vec<_> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vmlinuz-"))
        .collect();
    kernels.sort();
    let name = kernels.pop()?;
    let version = name.trim_start_matches("vmlinuz-");
    let modules = PathBuf::from("/lib/modules").join(version);
    modules
        .is_dir()
        .then(|| (PathBuf::from("/boot").join(&name), modules))
}

/// A fresh scratch directory under the target dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let base = std::env::temp_dir().join(format!("vunetd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).expect("create temp dir");
        TempDir(base)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
