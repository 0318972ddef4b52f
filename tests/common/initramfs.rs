//! A busybox initramfs with the virtio-net modules and a test script, written as a newc cpio.

use std::io::Write;
use std::path::Path;

/// Modules in load order (see shared/TESTING-NOTES.md).
const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in MODULES; do insmod /lib/modules/$m.ko || echo "GUEST-ERROR insmod $m"; done
sh /test.sh
echo "GUEST-DONE rc=$?"
poweroff -f
"#;

struct Cpio<W: Write> {
    out: W,
    ino: u32,
}

impl<W: Write> Cpio<W> {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let header =
            format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino, mode, 0, 0, 1, 0, data.len(), 0, 0, 0, 0, namesize, 0
        );
        self.out.write_all(header.as_bytes()).unwrap();
        self.out.write_all(name.as_bytes()).unwrap();
        self.out.write_all(&[0]).unwrap();
        self.pad(110 + namesize);
        self.out.write_all(data).unwrap();
        self.pad(data.len());
    }

    fn pad(&mut self, len: usize) {
        let pad = (4 - len % 4) % 4;
        self.out.write_all(&[0u8; 3][..pad]).unwrap();
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, data);
    }
}

/// Writes an initramfs to `out` that runs `script` as /test.sh and powers off.
pub fn build(out: &Path, modules_dir: &Path, script: &str) {
    let file = std::fs::File::create(out).expect("create initramfs");
    let mut cpio = Cpio {
        out: std::io::BufWriter::new(file),
        ino: 0,
    };
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "etc",
        "etc/udhcpc",
        "lib",
        "lib/modules",
    ] {
        cpio.dir(d);
    }
    cpio.file(
        "bin/busybox",
        0o755,
        &std::fs::read("/bin/busybox").expect("read busybox"),
    );
    for m in MODULES {
        let path = find_module(modules_dir, m).unwrap_or_else(|| panic!("module {m} not found"));
        cpio.file(
            &format!("lib/modules/{m}.ko"),
            0o644,
            &std::fs::read(path).expect("read module"),
        );
    }
    cpio.file(
        "init",
        0o755,
        INIT.replace("MODULES", &MODULES.join(" ")).as_bytes(),
    );
    cpio.file("test.sh", 0o755, script.as_bytes());
    cpio.entry("TRAILER!!!", 0, &[]);
    cpio.out.flush().unwrap();
}

fn find_module(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_module(&path, name) {
                return Some(found);
            }
        } else if path.file_name()?.to_str()? == format!("{name}.ko") {
            return Some(path);
        }
    }
    None
}
