//! A frame source on the kernel side of a tap: an `AF_PACKET` socket bound to it that sends the
//! same frame in batches of 64 (`sendmmsg`, `PACKET_QDISC_BYPASS`), as fast as it can, from a
//! thread inside the tap's namespace pinned to one core. The tap's queue drops what its reader
//! does not take (the tap's `tx_dropped`), so the source never waits for the reader.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vhost_user_netd_backends::sys;

use crate::common::pin_to_core;
use crate::frames;
use crate::netns::Netns;
use crate::packet::PacketSocket;

const BATCH: usize = 64;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const PACKET_VNET_HDR: libc::c_int = 15;

/// The running source; stops on drop.
pub struct Generator {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A packet socket that only sends, on interface `ifname`, past the qdisc, with a virtio-net
/// header in front of each frame if `vnet_hdr`.
fn sending_socket(ifname: &str, vnet_hdr: bool) -> PacketSocket {
    let sock = PacketSocket::sender(ifname)
        .unwrap_or_else(|e| panic!("AF_PACKET socket on {ifname}: {e}"));
    let mut options = vec![PACKET_QDISC_BYPASS];
    if vnet_hdr {
        options.push(PACKET_VNET_HDR);
    }
    for option in options {
        sys::setsockopt_int(sock.as_raw_fd(), libc::SOL_PACKET, option, 1)
            .unwrap_or_else(|e| panic!("setsockopt {option}: {e}"));
    }
    sock
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
