//! The tun/tap character device's ioctls (`linux/if_tun.h`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::sys::check;
use crate::Offloads;

pub const IFF_TAP: i16 = 0x0002;
pub const IFF_NO_PI: i16 = 0x1000;
pub const IFF_VNET_HDR: i16 = 0x4000;
pub const IFF_MULTI_QUEUE: i16 = 0x0100;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNGETFEATURES: libc::c_ulong = 0x8004_54cf;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETSNDBUF: libc::c_ulong = 0x4004_54d4;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
const TUN_F_UFO: libc::c_uint = 0x10;

/// Interface names are at most 15 bytes plus NUL.
pub const IFNAMSIZ: usize = 16;

/// `struct ifreq` with the `ifr_flags` member of the union (the rest is padding).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

impl IfReq {
    /// An ifreq for `name` (may be empty: the kernel picks `tapN`) with `flags`.
    pub fn new(name: &str, flags: i16) -> io::Result<Self> {
        let bytes = name.as_bytes();
        if bytes.len() >= IFNAMSIZ || bytes.contains(&0) || bytes.contains(&b'/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("interface name '{name}' is not valid (1-15 bytes, no '/')"),
            ));
        }
        let mut req = IfReq {
            flags,
            ..Default::default()
        };
        req.name[..bytes.len()].copy_from_slice(bytes);
        Ok(req)
    }

    /// The interface name the kernel returned.
    pub fn name(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }

    /// The `IFF_*` flags.
    pub fn flags(&self) -> i16 {
        self.flags
    }
}

fn ioctl_ptr<T>(fd: BorrowedFd<'_>, request: libc::c_ulong, arg: *mut T) -> io::Result<()> {
    // SAFETY: every request used here reads or writes exactly one object of type T, which `arg`
    // points at and which outlives the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) })?;
    Ok(())
}

/// Attaches the tun fd to interface `req` (creating it if needed).
pub fn set_iff(fd: BorrowedFd<'_>, req: &mut IfReq) -> io::Result<()> {
    ioctl_ptr(fd, TUNSETIFF, req)
}

/// The interface an attached tun fd belongs to, with its flags.
pub fn get_iff(fd: BorrowedFd<'_>) -> io::Result<IfReq> {
    let mut req = IfReq::default();
    ioctl_ptr(fd, TUNGETIFF, &mut req)?;
    Ok(req)
}

/// The `IFF_*` flags this kernel's tun driver supports.
pub fn features(fd: BorrowedFd<'_>) -> io::Result<libc::c_uint> {
    let mut features: libc::c_uint = 0;
    ioctl_ptr(fd, TUNGETFEATURES, &mut features)?;
    Ok(features)
}

/// Sets the vnet header size.
pub fn set_vnet_hdr_size(fd: BorrowedFd<'_>, size: libc::c_int) -> io::Result<()> {
    let mut size = size;
    ioctl_ptr(fd, TUNSETVNETHDRSZ, &mut size)
}

/// Sets the socket send buffer limit.
pub fn set_sndbuf(fd: BorrowedFd<'_>, bytes: libc::c_int) -> io::Result<()> {
    let mut bytes = bytes;
    ioctl_ptr(fd, TUNSETSNDBUF, &mut bytes)
}

/// Tells the tap which offloads the reader accepts (`TUNSETOFFLOAD` takes the value itself).
pub fn set_offload(fd: BorrowedFd<'_>, offloads: Offloads) -> io::Result<()> {
    let mut flags = 0;
    if offloads.csum {
        flags |= TUN_F_CSUM;
        if offloads.tso4 {
            flags |= TUN_F_TSO4;
        }
        if offloads.tso6 {
            flags |= TUN_F_TSO6;
        }
        if offloads.ecn && (offloads.tso4 || offloads.tso6) {
            flags |= TUN_F_TSO_ECN;
        }
        if offloads.ufo {
            flags |= TUN_F_UFO;
        }
    }
    // SAFETY: TUNSETOFFLOAD takes its argument by value, no pointer is dereferenced.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) })?;
    Ok(())
}
