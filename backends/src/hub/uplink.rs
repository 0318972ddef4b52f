//! `hubport,netdev=X`: a hub joined to a host netdev instead of a guest (QEMU: "used to connect
//! hub to a netdev instead of a device"), so that several VMs on the hub share one tap, user
//! stack or datagram link. A thread of its own moves frames between the hub port's queue and the
//! netdev's first queue: what the hub floods or switches to the port goes out on the netdev,
//! what the netdev receives enters the hub. Frames cross as plain Ethernet (the netdev's
//! offloads stay off; a virtio-net header, where the netdev has one, is zero on the way out and
//! dropped on the way in). A frame the netdev cannot take at once is dropped and counted, as a
//! full inbox is: the hub never waits for it. A stream netdev must be connected when the uplink
//! starts; its reconnections are not followed.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use log::warn;

use crate::{sys, Backend, BackendQueue, Error, Offloads, MAX_FRAME_LEN, VNET_HDR_LEN};

/// Frames moved each way per wake-up before the other direction gets its turn.
const BATCH: usize = 64;

/// What an uplink counted.
#[derive(Debug, Default)]
pub struct UplinkCounters {
    /// Frames from the hub sent on the netdev.
    pub to_netdev: AtomicU64,
    /// Frames from the netdev sent into the hub.
    pub to_hub: AtomicU64,
    /// Frames from the hub the netdev could not take (dropped).
    pub dropped: AtomicU64,
}

/// A running uplink; the thread stops when this is dropped.
#[derive(Debug)]
pub struct Uplink {
    /// The netdev the hub port is joined to.
    pub netdev: String,
    pub counters: Arc<UplinkCounters>,
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Uplink {
    /// Joins `hub_port` (a hub port's backend, named `name`) to `host`'s first queue.
    pub fn start(
        name: &str,
        hub_port: &dyn Backend,
        host: &dyn Backend,
        host_id: &str,
    ) -> Result<Uplink, Error> {
        let hub = hub_port.queue(0)?;
        let mut netdev = host.queue(0)?;
        netdev
            .set_offloads(Offloads::default())
            .map_err(|e| Error::io("uplink offloads", e))?;
        let header = if host.capabilities().vnet_hdr {
            VNET_HDR_LEN
        } else {
            0
        };
        let stop = sys::eventfd().map_err(|e| Error::io("eventfd", e))?;
        let stop_fd = stop.as_raw_fd();
        let counters = Arc::new(UplinkCounters::default());
        let mut pump = Pump {
            hub,
            netdev,
            header,
            buf: vec![0; VNET_HDR_LEN + MAX_FRAME_LEN],
            counters: counters.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("uplink-{name}"))
            .spawn(move || pump.run(stop_fd))
            .map_err(|e| Error::io("uplink thread", e))?;
        Ok(Uplink {
            netdev: host_id.to_string(),
            counters,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        sys::eventfd_signal(self.stop.as_raw_fd());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread's side.
struct Pump {
    hub: Box<dyn BackendQueue>,
    netdev: Box<dyn BackendQueue>,
    /// Bytes of virtio-net header the netdev's frames carry.
    header: usize,
    buf: Vec<u8>,
    counters: Arc<UplinkCounters>,
}

impl Pump {
    fn run(&mut self, stop: std::os::fd::RawFd) {
        loop {
            let busy = self.hub.pending_input() || self.netdev.pending_input();
            let mut fds = [
                libc::pollfd {
                    fd: stop,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.hub.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.netdev.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            if let Err(e) = sys::poll(&mut fds, if busy { 0 } else { -1 }) {
                warn!("uplink: poll: {e}");
                return;
            }
            if fds[0].revents != 0 {
                // What the hub already handed over still goes out (a dump's last records).
                self.hub_to_netdev();
                return;
            }
            let hub_ready = fds[1].revents != 0 || self.hub.pending_input();
            let netdev_ready = fds[2].revents != 0 || self.netdev.pending_input();
            if hub_ready {
                self.hub_to_netdev();
            }
            if netdev_ready && !self.netdev_to_hub() {
                return;
            }
        }
    }

    fn hub_to_netdev(&mut self) {
        let header = self.header;
        for _ in 0..BATCH {
            let n = match self
                .hub
                .recv(&mut [IoSliceMut::new(&mut self.buf[header..])])
            {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("uplink: from the hub: {e}");
                    return;
                }
            };
            self.buf[..header].fill(0);
            match self.netdev.send(&[IoSlice::new(&self.buf[..header + n])]) {
                Ok(_) => self.counters.to_netdev.fetch_add(1, Ordering::Relaxed),
                Err(_) => self.counters.dropped.fetch_add(1, Ordering::Relaxed),
            };
        }
    }

    /// False once the netdev is gone for good.
    fn netdev_to_hub(&mut self) -> bool {
        let header = self.header;
        for _ in 0..BATCH {
            let n = match self.netdev.recv(&mut [IoSliceMut::new(&mut self.buf)]) {
                Ok(0) if self.netdev.is_closed() => return false,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) => {
                    warn!("uplink: from the netdev: {e}");
                    return !self.netdev.is_closed();
                }
            };
            if n <= header {
                continue;
            }
            if self.hub.send(&[IoSlice::new(&self.buf[header..n])]).is_ok() {
                self.counters.to_hub.fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{HubPortBackend, HubPortOptions, Hubs};
    use crate::socketpair::SocketpairBackend;

    fn frame(dst: [u8; 6], src: [u8; 6], tag: u8) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x88, 0xb5, tag]);
        f.resize(60, tag);
        f
    }

    fn recv_blocking(q: &mut Box<dyn BackendQueue>) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        for _ in 0..2000 {
            let mut fds = [libc::pollfd {
                fd: q.fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            sys::poll(&mut fds, 10).unwrap();
            match q.recv(&mut [IoSliceMut::new(&mut buf)]) {
                Ok(n) => return buf[..n].to_vec(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("no frame");
    }

    #[test]
    fn frames_cross_between_a_hub_and_a_netdev_both_ways() {
        let hubs = Hubs::default();
        let open = |hubs: &Hubs| {
            HubPortBackend::open(
                &HubPortOptions {
                    hubid: 7,
                    netdev: None,
                },
                hubs,
            )
            .unwrap()
        };
        let (guest_port, uplink_port) = (open(&hubs), open(&hubs));
        // The netdev carries a virtio-net header: zero on the way out, dropped on the way in.
        let (host, mut wire) = SocketpairBackend::new(1, true).unwrap();
        let wire = wire.remove(0);
        let uplink = Uplink::start("h1", &uplink_port, &host, "t0").unwrap();
        let mut guest = guest_port.queue(0).unwrap();

        let out = frame([0xff; 6], [2, 0, 0, 0, 0, 1], 1);
        guest.send(&[IoSlice::new(&out)]).unwrap();
        let mut buf = [0u8; 2048];
        let n = sys::read(wire.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
        assert_eq!(&buf[VNET_HDR_LEN..n], &out[..]);

        let back = frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 9], 2);
        let mut with_header = vec![0u8; VNET_HDR_LEN];
        with_header.extend_from_slice(&back);
        sys::write(wire.as_raw_fd(), &with_header).unwrap();
        assert_eq!(recv_blocking(&mut guest), back);
        // Stopped (the thread joined), the counters are final.
        let counters = uplink.counters.clone();
        drop(uplink);
        assert_eq!(counters.to_netdev.load(Ordering::Relaxed), 1);
        assert_eq!(counters.to_hub.load(Ordering::Relaxed), 1);
    }
}
