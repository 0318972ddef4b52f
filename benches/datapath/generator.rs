//! A frame source on the kernel side of a tap: an `AF_PACKET` socket bound to it that sends the
//! same frame in batches of 64 (`sendmmsg`, `PACKET_QDISC_BYPASS`), as fast as it can, from a
//! thread inside the tap's namespace pinned to one core. The tap's queue drops what its reader
//! does not take (the tap's `tx_dropped`), so the source never waits for the reader.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::common::pin_to_core;
use crate::frames;
use crate::netns::Netns;

const BATCH: usize = 64;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const PACKET_VNET_HDR: libc::c_int = 15;

/// The running source; stops on drop.
pub struct Generator {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn set_int(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: the option value is one int, valid for the call.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    assert_eq!(
        ret,
        0,
        "setsockopt {name}: {}",
        std::io::Error::last_os_error()
    );
}

/// A packet socket that only sends, on interface `ifname`.
fn sending_socket(ifname: &str, vnet_hdr: bool) -> OwnedFd {
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: `name` is NUL-terminated.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    assert!(ifindex > 0, "no interface {ifname}");
    // SAFETY: plain socket(2); protocol 0 receives nothing.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zero is valid for every field.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex;
    // SAFETY: addr is a valid sockaddr_ll of the size passed.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(
        ret,
        0,
        "bind to {ifname}: {}",
        std::io::Error::last_os_error()
    );
    set_int(&fd, libc::SOL_PACKET, PACKET_QDISC_BYPASS, 1);
    if vnet_hdr {
        set_int(&fd, libc::SOL_PACKET, PACKET_VNET_HDR, 1);
    }
    fd
}

impl Generator {
    /// Sends `frame` (preceded by `vnet_hdr` when given, which the kernel turns into GSO and
    /// checksum state) out of `ifname` in `ns`, on `core`.
    pub fn start(
        ns: &Netns,
        ifname: &str,
        frame: Vec<u8>,
        vnet_hdr: Option<[u8; 10]>,
        core: usize,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ifname = ifname.to_string();
        let thread = ns.spawn(move || {
            pin_to_core(core);
            let fd = sending_socket(&ifname, vnet_hdr.is_some());
            let hdr = vnet_hdr.unwrap_or_default();
            let mut iov = frames::iovecs(&hdr, &frame);
            let (iov_ptr, iov_count) = if vnet_hdr.is_some() {
                (iov.as_mut_ptr(), 2)
            } else {
                // SAFETY: one past the header iovec is the frame's, inside the array.
                (unsafe { iov.as_mut_ptr().add(1) }, 1)
            };
            // SAFETY: mmsghdr is plain data; zero is valid (no address, no control).
            let mut msgs: Vec<libc::mmsghdr> =
                (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
            for m in &mut msgs {
                m.msg_hdr.msg_iov = iov_ptr;
                m.msg_hdr.msg_iovlen = iov_count;
            }
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: the messages point at `iov`, `hdr` and `frame`, alive for the call.
                let n =
                    unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
                if n < 0 {
                    // ENOBUFS and the like: the device is busy; try again.
                    std::thread::yield_now();
                }
            }
        });
        Generator {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
