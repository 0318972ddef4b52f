//! Opening an existing tap from a test, as libvirt does before passing its descriptor.

/// Opens an existing tap (in the calling thread's namespace) with a vnet header.
pub fn open_tap(name: &str, multi_queue: bool) -> std::os::fd::OwnedFd {
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
    let flags = 0x0002 | 0x1000 | 0x4000 | if multi_queue { 0x0100 } else { 0 };
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
