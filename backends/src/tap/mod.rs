//! The Linux tap backend (`-netdev tap`).
//!
//! One tap file descriptor per queue pair (`IFF_MULTI_QUEUE` when there are several), non-blocking,
//! with `IFF_VNET_HDR` and a 12-byte header so that virtio-net headers cross unchanged and GSO
//! frames of up to 64 KiB are neither segmented nor checksummed on the way.
//!
//! One frame per `writev`/`readv`: a tap has no multi-frame read or write from user space, and
//! submitting a batch of writes through `io_uring` measured no faster than plain `writev` here
//! (docs/performance.md): the per-frame cost is the tap's skb work, not the system call.

pub mod bridge;
mod ioctl;
pub mod options;

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use log::{info, warn};

pub use bridge::BridgeOptions;
pub use options::TapOptions;

use crate::fd_source::FdSource;
use crate::launcher::Launcher;
use crate::sys;
use crate::{Backend, BackendQueue, Capabilities, Error, Offloads, VNET_HDR_LEN};

/// An open tap interface with one descriptor per queue pair.
#[derive(Debug)]
pub struct TapBackend {
    ifname: String,
    queues: Vec<OwnedFd>,
    vnet_hdr: bool,
    offloads: Offloads,
    downscript: std::sync::Mutex<Option<String>>,
    /// Who runs the scripts (the daemon, or its launcher process under the sandbox).
    launcher: Launcher,
}

impl TapBackend {
    /// Opens (or adopts) the tap described by `opts`.
    pub fn open(
        opts: &TapOptions,
        fds: &mut dyn FdSource,
        launcher: &Launcher,
    ) -> Result<Self, Error> {
        let (queues, ran_script_for) = if let Some(fd) = &opts.fd {
            (vec![fds.take_fd(fd)?], None)
        } else if let Some(list) = &opts.fds {
            let mut v = Vec::new();
            for name in list.split(':') {
                v.push(fds.take_fd(name)?);
            }
            (v, None)
        } else if let Some(helper) = &opts.helper {
            let br = opts.br.as_deref().unwrap_or(options::DEFAULT_BRIDGE);
            let fd = launcher
                .open_with_helper(helper, br)
                .map_err(|e| Error::io("tap helper", e))?;
            (vec![fd], None)
        } else {
            let want_vnet = opts.vnet_hdr.unwrap_or(true);
            let queues = open_queues(
                opts.ifname.as_deref().unwrap_or(""),
                opts.queue_count(),
                want_vnet,
            )?;
            (queues, Some(()))
        };

        let first = queues[0].as_fd();
        let req = ioctl::get_iff(first).map_err(|e| Error::io("TUNGETIFF (is fd a tap?)", e))?;
        if req.flags() & ioctl::IFF_TAP == 0 {
            return Err(Error::io(
                "tap",
                io::Error::other("descriptor is a tun, not a tap"),
            ));
        }
        let ifname = req.name();
        let vnet_hdr = req.flags() & ioctl::IFF_VNET_HDR != 0;
        if opts.vnet_hdr == Some(true) && !vnet_hdr {
            return Err(Error::io(
                "vnet_hdr=on",
                io::Error::other("tap lacks IFF_VNET_HDR"),
            ));
        }
        for fd in &queues {
            sys::set_nonblocking(fd.as_raw_fd(), true).map_err(|e| Error::io("O_NONBLOCK", e))?;
            if vnet_hdr {
                ioctl::set_vnet_hdr_size(
                    fd.as_fd(),
                    libc::c_int::try_from(VNET_HDR_LEN).unwrap_or(12),
                )
                .map_err(|e| Error::io("TUNSETVNETHDRSZ", e))?;
            }
            if let Some(sndbuf) = opts.sndbuf {
                let bytes = libc::c_int::try_from(sndbuf).unwrap_or(libc::c_int::MAX);
                ioctl::set_sndbuf(fd.as_fd(), bytes).map_err(|e| Error::io("TUNSETSNDBUF", e))?;
            }
        }
        let offloads = if vnet_hdr {
            probe_offloads(first)
        } else {
            Offloads::default()
        };

        let mut downscript = None;
        if ran_script_for.is_some() {
            if let Some(s) = pick_script(opts.script.as_deref(), options::DEFAULT_SCRIPT) {
                launcher
                    .run_script(&s, &ifname)
                    .map_err(|e| Error::io("script", e))?;
            }
            downscript = pick_script(opts.downscript.as_deref(), options::DEFAULT_DOWNSCRIPT);
        }
        info!(
            "tap {ifname}: {} queue(s), vnet_hdr={vnet_hdr}, offloads {offloads:?}",
            queues.len()
        );
        Ok(TapBackend {
            ifname,
            queues,
            vnet_hdr,
            offloads,
            downscript: std::sync::Mutex::new(downscript),
            launcher: launcher.clone(),
        })
    }

    /// The interface's name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }
}

/// `no` or an empty string disables a script; the default runs only where it exists (QEMU would
/// fail without it; a missing default here just means no set-up is wanted).
fn pick_script(given: Option<&str>, default: &str) -> Option<String> {
    match given {
        Some("no") | Some("") => None,
        Some(s) => Some(s.to_string()),
        None if Path::new(default).exists() => Some(default.to_string()),
        None => None,
    }
}

fn open_queues(ifname: &str, count: u32, vnet_hdr: bool) -> Result<Vec<OwnedFd>, Error> {
    let mut flags = ioctl::IFF_TAP | ioctl::IFF_NO_PI;
    if vnet_hdr {
        flags |= ioctl::IFF_VNET_HDR;
    }
    if count > 1 {
        flags |= ioctl::IFF_MULTI_QUEUE;
    }
    let mut name = ifname.to_string();
    let mut queues = Vec::new();
    for _ in 0..count {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| Error::io("open /dev/net/tun", e))?;
        let fd: OwnedFd = file.into();
        if vnet_hdr && queues.is_empty() {
            let features =
                ioctl::features(fd.as_fd()).map_err(|e| Error::io("TUNGETFEATURES", e))?;
            if features & (ioctl::IFF_VNET_HDR as u16 as libc::c_uint) == 0 {
                return Err(Error::io(
                    "vnet_hdr",
                    io::Error::other("kernel tap lacks IFF_VNET_HDR"),
                ));
            }
        }
        let mut req = ioctl::IfReq::new(&name, flags).map_err(|e| Error::io("ifname", e))?;
        ioctl::set_iff(fd.as_fd(), &mut req)
            .map_err(|e| Error::io(format!("could not configure tap '{name}' (TUNSETIFF)"), e))?;
        name = req.name();
        queues.push(fd);
    }
    Ok(queues)
}

/// Which offloads this tap accepts: all of them, or all but UFO on kernels without it.
fn probe_offloads(fd: std::os::fd::BorrowedFd<'_>) -> Offloads {
    let candidates = [
        Offloads::ALL,
        Offloads {
            ufo: false,
            ..Offloads::ALL
        },
        Offloads::default(),
    ];
    let found = candidates
        .into_iter()
        .find(|o| ioctl::set_offload(fd, *o).is_ok())
        .unwrap_or_default();
    // Until the guest acks offloads, the tap must not hand us partial checksums or GSO frames.
    if let Err(e) = ioctl::set_offload(fd, Offloads::default()) {
        warn!("TUNSETOFFLOAD(0) failed: {e}");
    }
    found
}

impl Backend for TapBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            vnet_hdr: self.vnet_hdr,
            offloads: self.offloads,
            queue_pairs: self.queues.len() as u16,
        }
    }

    fn queue(&self, index: u16) -> Result<Box<dyn BackendQueue>, Error> {
        let fd = self
            .queues
            .get(usize::from(index))
            .ok_or(Error::NoSuchQueue(index))?;
        let fd = sys::dup_cloexec(fd.as_raw_fd()).map_err(|e| Error::io("dup tap fd", e))?;
        Ok(Box::new(TapQueue { fd }))
    }

    fn describe(&self) -> String {
        format!(
            "tap ifname={} queues={} vnet_hdr={}",
            self.ifname,
            self.queues.len(),
            self.vnet_hdr
        )
    }

    fn shutdown(&self) {
        self.run_downscript();
    }
}

impl TapBackend {
    fn run_downscript(&self) {
        let script = self
            .downscript
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(s) = script {
            if let Err(e) = self.launcher.run_script(&s, &self.ifname) {
                warn!("tap {}: {e}", self.ifname);
            }
        }
    }
}

impl Drop for TapBackend {
    fn drop(&mut self) {
        self.run_downscript();
    }
}

/// One queue of a tap.
#[derive(Debug)]
pub struct TapQueue {
    fd: OwnedFd,
}

impl BackendQueue for TapQueue {
    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn recv(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        sys::readv(self.fd.as_raw_fd(), bufs)
    }

    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        sys::writev(self.fd.as_raw_fd(), bufs)
    }

    fn set_offloads(&mut self, offloads: Offloads) -> io::Result<()> {
        ioctl::set_offload(self.fd.as_fd(), offloads)
    }

    fn set_vnet_hdr_len(&mut self, len: usize) -> io::Result<()> {
        let len =
            libc::c_int::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        ioctl::set_vnet_hdr_size(self.fd.as_fd(), len)
    }
}
