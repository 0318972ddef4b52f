//! The reference the tap backend is measured against: a thread doing nothing but `writev` or
//! `readv` on a tap with a 12-byte vnet header, one frame per system call, on the core the daemon
//! gets; and the tap's own kernel counters, which both measurements read.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{cpu_seconds, pin_to_core};
use crate::netns::Netns;

/// What one measurement saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Measure {
    pub frames: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// CPU seconds the measured side used.
    pub cpu: f64,
}

impl Measure {
    pub fn frames_per_second(&self) -> f64 {
        self.frames as f64 / self.seconds
    }
    /// Frames per second of the measured side's CPU: its capacity if it had the core to itself.
    pub fn frames_per_cpu_second(&self) -> f64 {
        self.frames as f64 / self.cpu.max(1e-3)
    }
    pub fn gbits(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e9
    }
    pub fn cpu_percent(&self) -> f64 {
        self.cpu / self.seconds * 100.0
    }
}

/// A tap's kernel counters (`ip -s -j link`): frames the kernel received from the tap's reader
/// side (`rx_*`: written into the tap) and sent to it (`tx_*`: read from the tap).
#[derive(Clone, Copy, Debug, Default)]
pub struct TapStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

pub fn tap_stats(ns: &Netns, ifname: &str) -> TapStats {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "-s", "-j", "link", "show", "dev", ifname])
        .output()
        .expect("ip link show");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let s = &v[0]["stats64"];
    let n = |dir: &str, what: &str| s[dir][what].as_u64().unwrap_or(0);
    TapStats {
        rx_packets: n("rx", "packets"),
        rx_bytes: n("rx", "bytes"),
        tx_packets: n("tx", "packets"),
        tx_bytes: n("tx", "bytes"),
    }
}

const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

/// Opens tap `ifname` in the calling thread's namespace with a 12-byte vnet header, up, with a
/// queue of 10 000 frames.
pub fn open_reference_tap(ns: &str, ifname: &str) -> OwnedFd {
    let fd = crate::tap::open_tap(ifname, false);
    let len: libc::c_int = 12;
    // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, valid for the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &len) };
    assert_eq!(ret, 0, "TUNSETVNETHDRSZ");
    let up = Command::new("ip")
        .args(["-n", ns, "link", "set", ifname, "txqueuelen", "10000", "up"])
        .status()
        .expect("ip link set");
    assert!(up.success(), "set {ifname} up");
    fd
}

/// `writev` of `[header, frame]` in a loop for `window` on core 0, inside `ns`.
pub fn raw_tx(ns: &Netns, ifname: &str, frame: Vec<u8>, window: Duration) -> Measure {
    let name = ifname.to_string();
    let ns_name = ns.name.clone();
    ns.spawn(move || {
        pin_to_core(0);
        let fd = open_reference_tap(&ns_name, &name);
        let hdr = [0u8; 12];
        let iov = crate::frames::iovecs(&hdr, &frame);
        let cpu0 = cpu_seconds("/proc/thread-self/stat");
        let start = Instant::now();
        let mut m = Measure::default();
        loop {
            for _ in 0..256 {
                // SAFETY: both iovecs point at live buffers of the lengths given.
                let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), 2) };
                if n > 0 {
                    m.frames += 1;
                    m.bytes += frame.len() as u64;
                }
            }
            if start.elapsed() >= window {
                break;
            }
        }
        m.seconds = start.elapsed().as_secs_f64();
        m.cpu = cpu_seconds("/proc/thread-self/stat") - cpu0;
        m
    })
    .join()
    .expect("raw tx thread")
}

/// `readv` into `[header, 64 KiB]` in a loop on core 0 inside `ns` while `source` (started once
/// the tap exists) feeds the tap; counts for `window` after a one-second warm-up.
pub fn raw_rx<S>(
    ns: &Netns,
    ifname: &str,
    window: Duration,
    source: impl FnOnce() -> S,
) -> Measure {
    let name = ifname.to_string();
    let ns_name = ns.name.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = ns.spawn(move || {
        pin_to_core(0);
        let fd = open_reference_tap(&ns_name, &name);
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        ready_tx.send(()).unwrap();
        let mut hdr = [0u8; 12];
        let mut buf = vec![0u8; 65_536];
        let iov = [
            libc::iovec {
                iov_base: hdr.as_mut_ptr().cast(),
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            },
        ];
        let read_for = |until: Instant, m: &mut Measure| {
            while Instant::now() < until {
                // SAFETY: both iovecs point at live, writable buffers of the lengths given.
                let n = unsafe { libc::readv(fd.as_raw_fd(), iov.as_ptr(), 2) };
                if n > 0 {
                    m.frames += 1;
                    m.bytes += n as u64 - 12;
                } else {
                    let mut p = libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut p, 1, 10) };
                }
            }
        };
        read_for(
            Instant::now() + Duration::from_secs(1),
            &mut Measure::default(),
        );
        let cpu0 = cpu_seconds("/proc/thread-self/stat");
        let start = Instant::now();
        let mut m = Measure::default();
        read_for(start + window, &mut m);
        m.seconds = start.elapsed().as_secs_f64();
        m.cpu = cpu_seconds("/proc/thread-self/stat") - cpu0;
        m
    });
    ready_rx.recv().expect("reference tap ready");
    let running = source();
    let m = reader.join().expect("raw rx thread");
    drop(running);
    m
}
