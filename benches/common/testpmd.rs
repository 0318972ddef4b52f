//! `dpdk-testpmd` command lines: the EAL arguments every run shares (no hugepages, no PCI, its
//! own file prefix, forwarding lcore 1 unless `main_lcore` is 1).

use std::process::{Command, Stdio};

/// testpmd on cores 0 and 1 with `main_lcore` as its main lcore (the other one forwards).
pub fn command(prefix: &str, main_lcore: u8) -> Command {
    let mut c = Command::new("dpdk-testpmd");
    c.args(["-l", "0,1", "--main-lcore", &main_lcore.to_string()])
        .args(["--no-huge", "-m", "512", "--no-pci", "--no-shconf"])
        .args(["--log-level", "error", "--file-prefix", prefix])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// A `net_virtio_user` port on `socket` with `queues` pairs of 256 entries.
pub fn virtio_user(index: usize, socket: &std::path::Path, queues: u16) -> String {
    format!(
        "net_virtio_user{index},path={},queues={queues},queue_size=256",
        socket.display()
    )
}
