//! Opening an existing tap from a test, as libvirt does before passing its descriptor.

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const IFF_MULTI_QUEUE: i16 = 0x0100;

/// Opens an existing tap (in the calling thread's namespace) with a vnet header.
pub fn open_tap(name: &str, multi_queue: bool) -> std::os::fd::OwnedFd {
    let mq = if multi_queue { IFF_MULTI_QUEUE } else { 0 };
    tunsetiff(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | mq)
}

/// Opens (creating it if needed) a tap without a vnet header: bare Ethernet frames, as QEMU's
/// tap netdev uses it when its peer has no offloads.
pub fn open_plain_tap(name: &str) -> std::os::fd::OwnedFd {
    tunsetiff(name, IFF_TAP | IFF_NO_PI)
}

/// Opens (creating it if needed) a tap whose frames carry a 12-byte virtio-net header with
/// checksum and TSO offloads on, as a virtio-net guest's frames do.
pub fn open_offload_tap(name: &str) -> std::os::fd::OwnedFd {
    const TUN_F_CSUM_TSO4_TSO6: libc::c_uint = 0x01 | 0x02 | 0x04;
    open_vnet_tap(name, TUN_F_CSUM_TSO4_TSO6)
}

/// Opens (creating it if needed) a tap whose frames carry a 12-byte virtio-net header, with
/// the `TUN_F_*` offloads in `offloads` (what the kernel may hand us: partial checksums, GSO).
pub fn open_vnet_tap(name: &str, offloads: libc::c_uint) -> std::os::fd::OwnedFd {
    use std::os::fd::AsRawFd;
    const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
    const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
    let fd = tunsetiff(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
    let hdr_len: libc::c_int = 12;
    // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which is valid for the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) };
    assert_eq!(
        ret,
        0,
        "TUNSETVNETHDRSZ: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, offloads) };
    assert_eq!(ret, 0, "TUNSETOFFLOAD: {}", std::io::Error::last_os_error());
    fd
}

fn tunsetiff(name: &str, flags: i16) -> std::os::fd::OwnedFd {
    use std::os::fd::AsRawFd;
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: i16,
        pad: [u8; 22],
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    let mut req = IfReq {
        name: [0; 16],
        flags,
        pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is laid out as.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
    assert_eq!(
        ret,
        0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    file.into()
}
