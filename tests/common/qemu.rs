//! A QEMU guest (TCG) on a vhost-user netdev, with its serial console as a line stream.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::lines::Lines;

/// A running guest; killed on drop.
#[derive(Debug)]
pub struct Guest {
    child: Child,
    pub console: Lines,
}

/// How to attach the guest's NIC.
#[derive(Debug, Clone)]
pub struct NicSpec<'a> {
    pub socket: &'a Path,
    pub queues: u16,
    /// `-chardev socket,reconnect-ms=N` so QEMU reconnects when the backend restarts.
    pub reconnect_ms: Option<u32>,
}

impl Guest {
    pub fn boot(kernel: &Path, initrd: &Path, nic: &NicSpec<'_>, smp: u16) -> Self {
        Self::boot_with_qmp(kernel, initrd, nic, smp, None)
    }

    /// Boots with a QMP socket at `qmp` (if given).
    pub fn boot_with_qmp(
        kernel: &Path,
        initrd: &Path,
        nic: &NicSpec<'_>,
        smp: u16,
        qmp: Option<&Path>,
    ) -> Self {
        let mut chardev = format!("socket,id=c0,path={}", nic.socket.display());
        if let Some(ms) = nic.reconnect_ms {
            chardev.push_str(&format!(",reconnect-ms={ms}"));
        }
        let mut device = "virtio-net-pci,netdev=v0,mac=52:54:00:12:34:56".to_string();
        if nic.queues > 1 {
            device.push_str(&format!(",mq=on,vectors={}", 2 * nic.queues + 2));
        }
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-m", "256", "-smp", &smp.to_string()])
            .args([
                "-object",
                "memory-backend-memfd,id=mem,size=256M,share=on",
                "-machine",
                "memory-backend=mem",
            ])
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .args(["-chardev", &chardev])
            .args([
                "-netdev",
                &format!("vhost-user,id=v0,chardev=c0,queues={}", nic.queues),
            ])
            .args(["-device", &device])
            .args([
                "-display",
                "none",
                "-serial",
                "stdio",
                "-monitor",
                "none",
                "-no-reboot",
                "-nodefaults",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(path) = qmp {
            cmd.arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", path.display()));
        }
        let mut child = cmd.spawn().expect("spawn qemu");
        let console = Lines::spawn(child.stdout.take().expect("stdout"), "guest", true);
        Guest { child, console }
    }

    /// Waits for QEMU to exit (the guest powers off at the end of its script).
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            // Process exit has no waitable event short of a blocking wait; poll briefly.
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
