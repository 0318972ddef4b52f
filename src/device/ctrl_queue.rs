//! The control virtqueue (vring `2 × queue pairs`), for frontends that hand it to the backend
//! with `VIRTIO_NET_F_CTRL_VQ` (QEMU keeps it and never sets this vring up). Each command chain
//! is a request (class, command, data) followed by a one-byte reply; accepted commands update the
//! [`RxFilter`], which every pair's rx path then applies. Its own small worker thread sleeps in
//! `epoll_wait` on the kick.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use log::{debug, error, warn};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::counters::{Counts, RateLimitedLog, SharedCounters};
use super::queue_pair::{MacWatch, PairHandle, QueuePair};
use super::role_filters::Role;
use super::rx_filter::{CtrlFeatures, RxFilter, CLASS_MAC, CLASS_RX, CLASS_VLAN};
use super::worker::WorkerFilter;
use crate::mac::MacAddr;
use vhost_user_netd_ring::dirty_log::DirtyLog;
use vhost_user_netd_ring::guest_iov::{Direction, GuestIov};
use vhost_user_netd_ring::vring::Vring;

/// `VIRTIO_NET_OK` / `VIRTIO_NET_ERR`.
const ACK_OK: u8 = 0;
const ACK_ERR: u8 = 1;
/// Largest request accepted (a full MAC table of both kinds is under 1 KiB).
const MAX_REQUEST: usize = 4096;

const EVENT_STOP: u64 = 0;
const EVENT_KICK: u64 = 1;

/// The control queue's state.
#[derive(Debug)]
pub struct CtrlQueue {
    pub ring: Vring,
    epoll: Arc<Epoll>,
    /// What the driver negotiated; `None` until it acked `CTRL_VQ`.
    features: Option<CtrlFeatures>,
    /// Whether indirect descriptors were negotiated.
    indirect: bool,
    filter: RxFilter,
    /// Whether any command changed the filter since reset (until then nothing is filtered).
    filtering: bool,
    /// The device MAC from config space (restored at reset).
    config_mac: MacAddr,
    pairs: Vec<Arc<Mutex<QueuePair>>>,
    counters: Arc<SharedCounters>,
    counts: Counts,
    watch: Option<MacWatch>,
    iov: GuestIov,
    request: Vec<u8>,
    log: RateLimitedLog,
    /// The frontend's dirty bitmap, and whether writes are logged now (`VHOST_F_LOG_ALL`).
    pub dirty_log: Option<Arc<DirtyLog>>,
    pub log_all: bool,
}

impl CtrlQueue {
    /// A stopped queue with the reset filter; `pairs` get the filter its commands set.
    fn new(
        config_mac: MacAddr,
        pairs: Vec<Arc<Mutex<QueuePair>>>,
        counters: Arc<SharedCounters>,
        epoll: Arc<Epoll>,
    ) -> Self {
        CtrlQueue {
            ring: Vring::default(),
            epoll,
            features: None,
            indirect: false,
            filter: RxFilter::new(config_mac, false),
            filtering: false,
            config_mac,
            pairs,
            counters,
            counts: Counts::default(),
            watch: None,
            iov: GuestIov::default(),
            request: Vec::new(),
            log: RateLimitedLog::default(),
            dirty_log: None,
            log_all: false,
        }
    }

    /// Negotiated features changed: `None` without `CTRL_VQ`.
    /// The filter starts over only when these change: `SET_FEATURES` also comes to toggle
    /// `LOG_ALL` around a migration, which must not undo the guest's filter.
    pub fn set_features(&mut self, features: Option<CtrlFeatures>, indirect: bool) {
        self.indirect = indirect;
        if features != self.features {
            self.features = features;
            self.reset_filter();
        }
    }

    /// Tells `watch` when a command changes the filter (`NIC_RX_FILTER_CHANGED`).
    pub fn set_watch(&mut self, watch: MacWatch) {
        self.watch = Some(watch);
    }

    /// The filter as the guest set it, if its control queue is ours and it set anything.
    pub fn filter(&self) -> Option<&RxFilter> {
        self.filtering.then_some(&self.filter)
    }

    /// Starts the ring (`SET_VRING_KICK`).
    pub fn set_kick(&mut self, kick: EventFd) -> io::Result<()> {
        self.unregister_kick();
        vhost_user_netd_backends::sys::set_nonblocking(kick.as_raw_fd(), true)?;
        self.epoll.ctl(
            ControlOperation::Add,
            kick.as_raw_fd(),
            EpollEvent::new(EventSet::IN, EVENT_KICK),
        )?;
        // Whatever the driver queued before we listened.
        let _ = kick.write(1);
        self.ring.kick = Some(kick);
        self.ring.started = true;
        Ok(())
    }

    /// Stops the ring (`GET_VRING_BASE`); returns the next avail index.
    pub fn stop(&mut self) -> u16 {
        self.unregister_kick();
        self.ring.started = false;
        self.ring.next_avail()
    }

    /// Back to the state after device reset.
    pub fn reset(&mut self) {
        self.stop();
        self.ring.reset();
        self.features = None;
        self.reset_filter();
    }

    fn unregister_kick(&mut self) {
        if let Some(old) = self.ring.kick.take() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                old.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    fn reset_filter(&mut self) {
        let vlan = self.features.is_some_and(|f| f.vlan);
        self.filter = RxFilter::new(self.config_mac, vlan);
        self.filtering = false;
        self.push_filter(None);
    }

    fn push_filter(&self, filter: Option<Arc<RxFilter>>) {
        for pair in &self.pairs {
            pair.lock().unwrap_or_else(|p| p.into_inner()).rx.filter = filter.clone();
        }
    }

    /// Handles every queued command.
    fn process(&mut self, mem: &GuestMemoryMmap) {
        if !self.ring.is_running() || !self.ring.enabled {
            return;
        }
        loop {
            self.ring.disable_notification(mem);
            loop {
                match self.ring.pop_head(mem) {
                    Ok(Some(head)) => self.command(mem, head),
                    Ok(None) => break,
                    Err(e) => {
                        self.counts.ring_errors += 1;
                        self.log.warn(|| format!("control queue: {e}; stopped"));
                        self.finish(mem);
                        return;
                    }
                }
            }
            self.finish(mem);
            match self.ring.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => return,
                Err(e) => {
                    self.counts.ring_errors += 1;
                    self.log.warn(|| format!("control queue: {e}; stopped"));
                    self.ring.broken = true;
                    return;
                }
            }
        }
    }

    fn logging(&self) -> Option<&DirtyLog> {
        self.dirty_log.as_deref().filter(|_| self.log_all)
    }

    fn finish(&mut self, mem: &GuestMemoryMmap) {
        if let (Some(log), Some((gpa, len))) = (self.logging(), self.ring.used_ring_range()) {
            log.mark(gpa, len);
        }
        // Count what the guest is about to see first: a stats query after a reply agrees.
        self.counters.add(&self.counts);
        self.counts = Counts::default();
        if self.ring.publish_and_notify(mem) {
            self.counts.interrupts += 1;
            self.counters.add(&self.counts);
            self.counts = Counts::default();
        }
    }

    /// One command chain: request, then the reply byte.
    fn command(&mut self, mem: &GuestMemoryMmap, head: u16) {
        self.iov.clear();
        let walked = self.iov.push_chain(
            mem,
            self.ring.desc_table(mem),
            head,
            Direction::DeviceReadsThenWrites,
            self.indirect,
            MAX_REQUEST + 1,
        );
        let total = match walked {
            Ok(n) => n,
            Err(e) => {
                self.counts.chain_error(e);
                self.log
                    .warn(|| format!("control queue: command chain refused: {e}"));
                self.ring.push_used(mem, head, 0);
                return;
            }
        };
        let readable = self.iov.readable_len();
        if total == readable {
            // No room for the reply: nothing can be said back.
            self.counts.ctrl_errors += 1;
            self.log
                .warn(|| "control queue: command without a reply byte".to_string());
            self.ring.push_used(mem, head, 0);
            return;
        }
        self.request.resize(readable, 0);
        let ack = if readable < 2 || !self.iov.read_at(0, &mut self.request) {
            self.counts.ctrl_errors += 1;
            self.log
                .warn(|| format!("control queue: {readable}-byte command is too short"));
            ACK_ERR
        } else {
            self.apply()
        };
        self.iov.write_at(readable, &[ack]);
        if let Some(log) = self.logging() {
            // The reply byte: the first byte of the writable part.
            let mut at = 0usize;
            for &(gpa, len) in self.iov.guest_ranges() {
                if readable < at + len as usize {
                    log.mark(gpa + (readable - at) as u64, 1);
                    break;
                }
                at += len as usize;
            }
        }
        self.ring.push_used(mem, head, 1);
    }

    fn apply(&mut self) -> u8 {
        let Some(features) = self.features else {
            self.counts.ctrl_errors += 1;
            return ACK_ERR;
        };
        let (class, cmd) = (self.request[0], self.request[1]);
        match self.filter.apply(&features, class, cmd, &self.request[2..]) {
            Ok(changed) => {
                self.counts.ctrl_commands += 1;
                if changed || !self.filtering {
                    self.filtering = true;
                    self.push_filter(Some(Arc::new(self.filter.clone())));
                }
                // As QEMU: every accepted rx-mode, MAC or VLAN command is a filter change
                // (`NIC_RX_FILTER_CHANGED`, rate-limited by the port); MQ and announce are not.
                let filter_class = matches!(class, CLASS_RX | CLASS_MAC | CLASS_VLAN);
                if let (true, Some(watch)) = (filter_class, &self.watch) {
                    (watch.0)(self.filter.mac);
                }
                ACK_OK
            }
            Err(e) => {
                self.counts.ctrl_errors += 1;
                self.log.warn(|| format!("control queue: {e}"));
                ACK_ERR
            }
        }
    }
}

/// A control queue without its worker, for fuzz targets: commands are handled on the caller's
/// thread. Only built with the `fuzzing` feature.
#[cfg(feature = "fuzzing")]
impl CtrlQueue {
    /// A queue for a device whose config-space MAC is `config_mac`, with no queue pairs.
    pub fn standalone(config_mac: MacAddr) -> io::Result<Self> {
        Ok(CtrlQueue::new(
            config_mac,
            Vec::new(),
            Arc::default(),
            Arc::new(Epoll::new()?),
        ))
    }

    /// Handles every queued command, as the worker does on a kick.
    pub fn process_now(&mut self, mem: &GuestMemoryMmap) {
        self.process(mem);
    }
}

/// The control queue with its worker thread.
#[derive(Debug)]
pub struct CtrlHandle {
    state: Arc<Mutex<CtrlQueue>>,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl CtrlHandle {
    /// Creates the queue for `pairs` (their rx paths apply its filter); counters go to the first
    /// pair's. Its thread puts itself under the queue workers' seccomp `filter` if it is set.
    pub fn spawn(
        pairs: &[PairHandle],
        config_mac: MacAddr,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        filter: WorkerFilter,
    ) -> io::Result<Self> {
        let epoll = Arc::new(Epoll::new()?);
        let stop = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, EVENT_STOP),
        )?;
        let counters = pairs
            .first()
            .map(|p| p.counters.clone())
            .unwrap_or_default();
        let state = Arc::new(Mutex::new(CtrlQueue::new(
            config_mac,
            pairs.iter().map(PairHandle::state).collect(),
            counters,
            epoll.clone(),
        )));
        let worker = state.clone();
        let thread = std::thread::Builder::new()
            .name("vq-ctrl".into())
            .spawn(move || {
                filter.confine_this_thread(Role::Queue);
                run_worker(worker, epoll, mem)
            })?;
        Ok(CtrlHandle {
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// Locks the queue's state.
    pub fn lock(&self) -> MutexGuard<'_, CtrlQueue> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for CtrlHandle {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                error!("control queue worker panicked");
            }
        }
    }
}

fn run_worker(
    state: Arc<Mutex<CtrlQueue>>,
    epoll: Arc<Epoll>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
) {
    let mut events = vec![EpollEvent::default(); 4];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                error!("control queue epoll_wait: {e}");
                return;
            }
        };
        let guard = mem.memory();
        let mut ctrl = state.lock().unwrap_or_else(|p| p.into_inner());
        for ev in &events[..n] {
            if ev.data() == EVENT_STOP {
                debug!("control queue worker stopping");
                return;
            }
            if let Some(Err(e)) = ctrl.ring.kick.as_ref().map(EventFd::read) {
                if e.kind() != io::ErrorKind::WouldBlock {
                    // Not an eventfd after all: it would stay ready and spin this thread.
                    warn!("control queue: kick descriptor unreadable ({e}); dropped");
                    ctrl.unregister_kick();
                    ctrl.counts.ring_errors += 1;
                }
            }
            ctrl.counts.kicks += 1;
            ctrl.process(&guard);
        }
    }
}
