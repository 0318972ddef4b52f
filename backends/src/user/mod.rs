//! The user-mode network stack (`-netdev user`): the guest gets a network with a gateway, DHCP
//! and DNS, and its connections become ordinary host sockets — no root, no tap.
//!
//! Module map:
//! - [`options`]: `NetdevUserOptions`, QEMU's defaults and checks.
//! - `stack`: the dispatcher from guest frames to the handlers below and back.
//! - `guest_frames`: the queue of frames for the guest and the frame builders.
//! - `neighbors`: ARP, IPv6 neighbour and router advertisements.
//! - `dhcp`: the DHCPv4 server.
//! - `tftp`: the read-only TFTP server (`tftp=ROOT`).
//! - `resolver`: which host resolver the virtual name server relays to.
//! - `tcp_flows` (the stack's own TCP, on `host_stream` and `tcp_frame`), `udp_flows`,
//!   `icmp_echo`: the flows.
//! - `host_stream`: a TCP flow's host socket; data toward the guest stays in it until acknowledged.
//! - `tcp_seq`: sequence-number arithmetic.
//! - `tcp_reassembly`: guest data past a gap, held until the gap is filled (SACK blocks).
//! - `tcp_frame`: TCP frames to the guest, data written straight into its buffers (GSO frames
//!   with partial checksums when it takes them).
//! - `poller`: the one epoll set for all host sockets and the TCP timer.

mod checksum;
mod dhcp;
mod guest_frames;
mod host_stream;
mod icmp_echo;
mod neighbors;
pub mod options;
mod poller;
mod resolver;
mod stack;
mod tcp_flows;
mod tcp_frame;
mod tcp_reassembly;
mod tcp_seq;
mod tftp;
mod udp_flows;

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

pub use options::UserOptions;

use crate::{only_queue_zero, Backend, BackendQueue, Capabilities, Error, Offloads};
use stack::Stack;

/// A `user` netdev: one stack, served by the queue pair's worker.
#[derive(Debug)]
pub struct UserBackend {
    stack: Arc<Mutex<Stack>>,
    description: String,
}

fn lock(stack: &Mutex<Stack>) -> MutexGuard<'_, Stack> {
    stack.lock().unwrap_or_else(|p| p.into_inner())
}

impl UserBackend {
    /// Builds the stack and binds the `hostfwd` sockets (failing like QEMU if one cannot be).
    /// `resolv_conf` is where the virtual name server finds the host's resolvers.
    /// `launcher` starts the `guestfwd` commands.
    pub fn open(
        options: &UserOptions,
        resolv_conf: &std::path::Path,
        launcher: &crate::launcher::Launcher,
    ) -> Result<Self, Error> {
        let mut description = String::from("user");
        if let Some(n) = options.ipv4 {
            description += &format!(" net={}/{} host={}", n.network, n.prefix_len(), n.host);
        }
        if let Some(n) = options.ipv6 {
            description += &format!(" ipv6-prefix={}/{}", n.prefix, n.prefix_len);
        }
        if options.restrict {
            description += " restrict=on";
        }
        let stack = Stack::new(options.clone(), resolv_conf.to_path_buf(), launcher.clone())?;
        Ok(UserBackend {
            stack: Arc::new(Mutex::new(stack)),
            description,
        })
    }
}

impl Backend for UserBackend {
    fn capabilities(&self) -> Capabilities {
        // Frames carry a virtio-net header: TCP goes to the guest as GSO frames with partial
        // checksums when it takes them, and comes from it the same way.
        Capabilities {
            vnet_hdr: true,
            offloads: Offloads {
                csum: true,
                tso4: true,
                tso6: true,
                ecn: false,
                ufo: false,
            },
            queue_pairs: 1,
        }
    }

    fn queue(&self, index: u16) -> Result<Box<dyn BackendQueue>, Error> {
        only_queue_zero(index)?;
        let fd = lock(&self.stack).fd();
        Ok(Box::new(UserQueue {
            stack: Arc::clone(&self.stack),
            fd,
            gather: Vec::new(),
            header_len: crate::VNET_HDR_LEN,
        }))
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn shutdown(&self) {
        lock(&self.stack).shutdown();
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        lock(&self.stack).counter_list()
    }
}

/// The queue pair's handle on the stack.
#[derive(Debug)]
pub struct UserQueue {
    stack: Arc<Mutex<Stack>>,
    fd: RawFd,
    /// Where a frame scattered over several buffers is put together.
    gather: Vec<u8>,
    /// The virtio-net header in front of every frame from the guest.
    header_len: usize,
}

/// Bytes of a scattered frame copied out to find its headers: the virtio-net header,
/// Ethernet, and IP and TCP headers of up to 60 bytes each.
const HEAD_COPY: usize = crate::VNET_HDR_LEN + 14 + 60 + 60;

/// Hands one frame from the guest (a `hdr`-byte virtio-net header first) to the stack. A frame
/// spread over several buffers (a Linux guest's TSO frame: headers, then page fragments) has its
/// headers copied out, and a TCP payload is used where it lies; anything else is put together in
/// `gather`. The header needs no reading: partial checksums are never verified and a TSO frame is
/// one large segment.
fn take(stack: &mut Stack, gather: &mut Vec<u8>, hdr: usize, bufs: &[IoSlice<'_>]) -> usize {
    let total = bufs.iter().map(|b| b.len()).sum();
    match bufs {
        [one] if one.len() >= hdr => stack.guest_frame(&one[hdr..]),
        [head, frame] if head.len() == hdr => stack.guest_frame(frame),
        _ => {
            let mut head = [0u8; HEAD_COPY];
            let n = crate::copy_prefix(bufs, &mut head);
            let head = head.get(hdr..n).unwrap_or_default();
            if !stack.guest_frame_scattered(head, bufs, hdr) {
                gather.clear();
                for b in bufs {
                    gather.extend_from_slice(b);
                }
                stack.guest_frame(gather.get(hdr..).unwrap_or_default());
            }
        }
    }
    total
}

impl BackendQueue for UserQueue {
    fn fd(&self) -> RawFd {
        self.fd
    }

    fn recv(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        lock(&self.stack).next_frame(bufs)
    }

    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut stack = lock(&self.stack);
        let n = take(&mut stack, &mut self.gather, self.header_len, bufs);
        stack.guest_frames_done();
        Ok(n)
    }

    fn send_batch(&mut self, frames: &[&[IoSlice<'_>]]) -> io::Result<usize> {
        let mut stack = lock(&self.stack);
        for frame in frames {
            take(&mut stack, &mut self.gather, self.header_len, frame);
        }
        stack.guest_frames_done();
        Ok(frames.len())
    }

    fn pending_input(&self) -> bool {
        lock(&self.stack).has_output()
    }

    fn set_offloads(&mut self, offloads: Offloads) -> io::Result<()> {
        lock(&self.stack).set_guest_offloads(offloads);
        Ok(())
    }

    fn set_vnet_hdr_len(&mut self, len: usize) -> io::Result<()> {
        self.header_len = len;
        lock(&self.stack).set_guest_header_len(len);
        Ok(())
    }

    /// The stack's TCP work per frame is the bound, and with TSO frames the guest kicks about
    /// once per MB either way (docs/performance.md): its worker sleeps between kicks.
    fn polling_pays(&self) -> bool {
        false
    }
}
