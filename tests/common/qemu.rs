//! A QEMU guest (TCG) on a vhost-user netdev, with its serial console as a line stream.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::lines::Lines;
use super::netns::Netns;

/// A running guest; killed on drop.
#[derive(Debug)]
pub struct Guest {
    child: Child,
    pub console: Lines,
}

/// Which QEMU runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QemuVersion {
    /// The installed one (10.0 from bookworm-backports).
    Installed,
    /// 7.2 from plain bookworm, unpacked into `tests/.work/qemu-7.2` by the install script.
    /// It segfaults with vhost-user + MSI-X under TCG, so its NIC uses INTx (`vectors=0`).
    Bookworm72,
}

/// Root of the unpacked QEMU 7.2.
pub fn qemu_72_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/.work/qemu-7.2")
}

/// How to attach the guest's NIC.
#[derive(Debug, Clone)]
pub struct NicSpec<'a> {
    pub socket: &'a Path,
    pub queues: u16,
    /// `-chardev socket,reconnect-ms=N` so QEMU reconnects when the backend restarts.
    pub reconnect_ms: Option<u32>,
    /// QEMU listens (`server=on,wait=off`) and the daemon connects with `--client`.
    pub qemu_is_server: bool,
}

/// QEMU arguments for one vhost-user NIC (`c0`/`v0`) on the socket `chardev` describes (a
/// bare path is taken as `path=`), with `queues` queue pairs and `mac`.
pub fn vhost_user_nic(
    version: QemuVersion,
    chardev: String,
    queues: u16,
    mac: &str,
) -> Vec<String> {
    vhost_user_nic_at(version, 0, chardev, queues, mac)
}

/// As [`vhost_user_nic`], for the guest's NIC number `index` (`c<index>`/`v<index>`).
pub fn vhost_user_nic_at(
    version: QemuVersion,
    index: usize,
    chardev: String,
    queues: u16,
    mac: &str,
) -> Vec<String> {
    let chardev = if chardev.starts_with("socket,") {
        chardev
    } else {
        format!("socket,id=c{index},path={chardev}")
    };
    let mut device = format!("virtio-net-pci,netdev=v{index},mac={mac},romfile=");
    if queues > 1 {
        device.push_str(",mq=on");
    }
    device.push_str(&virtio_vectors(version, queues));
    vec![
        "-chardev".to_string(),
        chardev,
        "-netdev".into(),
        format!("vhost-user,id=v{index},chardev=c{index},queues={queues}"),
        "-device".into(),
        device,
    ]
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
        Self::boot_version(QemuVersion::Installed, kernel, initrd, nic, smp, qmp)
    }

    /// Boots on a given QEMU.
    pub fn boot_version(
        version: QemuVersion,
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
        if nic.qemu_is_server {
            chardev.push_str(",server=on,wait=off");
        }
        let mut args = vhost_user_nic(version, chardev, nic.queues, "52:54:00:12:34:56");
        if let Some(path) = qmp {
            args.push("-qmp".into());
            args.push(format!("unix:{},server=on,wait=off", path.display()));
        }
        Self::boot_in(None, version, kernel, initrd, smp, &args)
    }

    /// Boots with the NICs (and anything else) given as QEMU arguments, inside a network
    /// namespace if one is given. Guest memory is a shared memfd, as vhost-user needs.
    pub fn boot_in(
        netns: Option<&Netns>,
        version: QemuVersion,
        kernel: &Path,
        initrd: &Path,
        smp: u16,
        args: &[String],
    ) -> Self {
        Self::boot_passing(netns, version, kernel, initrd, smp, args, Vec::new())
    }

    /// As [`Self::boot_in`], QEMU starting with our descriptors `(from, to)` at numbers `to`
    /// (for `-chardev socket,fd=N`).
    pub fn boot_passing(
        netns: Option<&Netns>,
        version: QemuVersion,
        kernel: &Path,
        initrd: &Path,
        smp: u16,
        args: &[String],
        fds: Vec<(i32, i32)>,
    ) -> Self {
        let program = match version {
            QemuVersion::Installed => std::path::PathBuf::from("qemu-system-x86_64"),
            QemuVersion::Bookworm72 => qemu_72_root().join("usr/bin/qemu-system-x86_64"),
        };
        let program = program.to_str().expect("utf-8 path").to_string();
        let mut cmd = match netns {
            Some(ns) => ns.command(&program),
            None => Command::new(&program),
        };
        match version {
            QemuVersion::Installed => {}
            QemuVersion::Bookworm72 => {
                let root = qemu_72_root();
                let c = &mut cmd;
                c.env(
                    "QEMU_MODULE_DIR",
                    root.join("usr/lib/x86_64-linux-gnu/qemu"),
                );
                c.args(["-L", "/usr/share/seabios", "-L", "/usr/share/qemu"]);
            }
        }
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
            .args(args)
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
        if !fds.is_empty() {
            super::process::pass_fds(&mut cmd, fds);
        }
        let mut child = cmd.spawn().expect("spawn qemu");
        let console = Lines::spawn(child.stdout.take().expect("stdout"), "guest", true);
        Guest { child, console }
    }

    /// QEMU's exit status if it has exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
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

/// The `vectors=` a vhost-user virtio-net NIC needs on this QEMU: 7.2 segfaults with MSI-X under
/// TCG, so it gets INTx.
pub fn virtio_vectors(version: QemuVersion, queues: u16) -> String {
    match version {
        QemuVersion::Installed => format!(",vectors={}", 2 * queues + 2),
        QemuVersion::Bookworm72 => ",vectors=0".into(),
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
