//! One rx/tx queue pair: its state behind its own lock, registered with the worker
//! ([`super::worker`]) whose epoll waits on the pair's kick eventfds and backend descriptor.
//!
//! The vhost-user handler changes a pair's rings under the same lock the worker processes them
//! with, so a ring is never reconfigured mid-batch; pairs never share a lock.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use log::{error, warn};
use vhost_user_netd_backends::{BackendQueue, Batching, RxWaker};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::counters::{Counts, RateLimitedLog, SharedCounters};
use super::worker::{Worker, Workers};
use crate::mac::MacAddr;
use vhost_user_netd_ring::dirty_log::DirtyLog;
use vhost_user_netd_ring::guest_iov::GuestIov;
use vhost_user_netd_ring::vring::{GuestMemoryGuard, Vring};

/// What woke the worker. Stored in the epoll event's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum PairEvent {
    /// The guest added rx buffers.
    RxKick = 1,
    /// The guest added tx frames.
    TxKick = 2,
    /// The backend is readable/writable (or hung up).
    Backend = 3,
}

impl PairEvent {
    /// The event in the low bits of an epoll event's data.
    pub(super) fn from_data(data: u64) -> Option<Self> {
        [PairEvent::RxKick, PairEvent::TxKick, PairEvent::Backend]
            .into_iter()
            .find(|e| *e as u64 == data)
    }
}

/// Called with the guest's MAC when the datapath learns a new one.
#[derive(Clone)]
pub struct MacWatch(pub Arc<dyn Fn(MacAddr) + Send + Sync>);

impl std::fmt::Debug for MacWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacWatch")
    }
}

/// Negotiated parameters the datapath needs, fixed between SET_FEATURES calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatapathParams {
    /// virtio-net header length (10 or 12).
    pub hdr_len: usize,
    /// `VIRTIO_NET_F_MRG_RXBUF` negotiated.
    pub mrg_rxbuf: bool,
    /// `VIRTIO_RING_F_INDIRECT_DESC` negotiated.
    pub indirect: bool,
    /// The backend takes and produces the virtio-net header itself.
    pub backend_vnet_hdr: bool,
    /// Largest rx frame, header included, the guest may have to take.
    pub max_rx_frame: usize,
    /// Link state (`set_link`); down drops frames both ways.
    pub link_up: bool,
    /// `VHOST_F_LOG_ALL`: log every guest page written (live migration in progress).
    pub log_all: bool,
    /// Frames per backend system call: a batch, or one (`--no-batching`).
    pub batching: Batching,
}

impl Default for DatapathParams {
    fn default() -> Self {
        DatapathParams {
            batching: Batching::ON,
            hdr_len: super::features::HDR_LEN,
            mrg_rxbuf: false,
            indirect: false,
            backend_vnet_hdr: false,
            // A header and a full-size tagged Ethernet frame.
            max_rx_frame: super::features::HDR_LEN + 1518,
            link_up: true,
            log_all: false,
        }
    }
}

/// Backend interest currently registered with epoll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Interest {
    read: bool,
    write: bool,
}

/// A queue pair's state.
#[derive(Debug)]
pub struct QueuePair {
    pub index: u16,
    /// Host → guest: the guest's rx ring and what only that path keeps.
    pub rx: RxSide,
    /// Guest → host: the guest's tx ring and what only that path keeps.
    pub tx: TxSide,
    pub params: DatapathParams,
    pub(super) backend: Option<Box<dyn BackendQueue>>,
    pub(super) backend_closed: bool,
    /// The worker's epoll, and this pair's slot in its event data.
    epoll: Arc<Epoll>,
    token: u64,
    registered: Option<Interest>,
    /// The worker is polling this pair's rings (it had work moments ago): the guest is not asked
    /// to kick, the worker looks instead. Only the worker sets it, and it clears it (with
    /// [`Self::cool`]) before it sleeps.
    pub(super) hot: bool,
    pub(super) counts: Counts,
    pub(super) log: RateLimitedLog,
    /// The chains of the frame (rx) or batch (tx) being moved.
    pub(super) iov: GuestIov,
    /// The frontend's dirty bitmap, once it sent one.
    pub dirty_log: Option<Arc<DirtyLog>>,
    shared: Arc<SharedCounters>,
    /// Captures of the port's frames (`filter-dump`); one atomic load per frame while none.
    pub capture: Arc<crate::capture::CaptureSlot>,
}

/// The rx side of a pair: frames from the backend into the guest's buffers.
#[derive(Debug)]
pub struct RxSide {
    pub ring: Vring,
    /// No guest buffer was found; the backend is not polled until the guest kicks.
    pub(super) starved: bool,
    pub(super) hdr_iov: GuestIov,
    /// Chains gathered for one frame: head, capacity, index of its first guest range.
    pub(super) heads: Vec<(u16, usize, usize)>,
    /// The guest's receive filter, once its control queue (ours) set one; `None` passes all.
    pub filter: Option<Arc<super::rx_filter::RxFilter>>,
    /// A frame read from the backend that did not fit the guest's buffers yet.
    pub(super) bounce: Vec<u8>,
    pub(super) bounce_len: usize,
}

/// The tx side of a pair: the guest's frames out to the backend.
#[derive(Debug)]
pub struct TxSide {
    pub ring: Vring,
    /// The backend was full; tx waits for it to become writable.
    pub(super) blocked: bool,
    /// The frames of the batch being sent.
    pub(super) frames: Vec<super::tx::TxFrame>,
    /// Look at the next sent frame's source address.
    pub(super) learn_mac: bool,
    /// The guest's MAC as seen in the source address of its frames (one look per batch).
    pub guest_mac: Option<MacAddr>,
    /// Told when `guest_mac` changes.
    pub mac_watch: Option<MacWatch>,
}

impl QueuePair {
    pub(super) fn new(
        index: u16,
        epoll: Arc<Epoll>,
        token: u64,
        shared: Arc<SharedCounters>,
    ) -> Self {
        QueuePair {
            index,
            rx: RxSide {
                ring: Vring::default(),
                starved: false,
                hdr_iov: GuestIov::default(),
                heads: Vec::with_capacity(64),
                filter: None,
                bounce: Vec::new(),
                bounce_len: 0,
            },
            tx: TxSide {
                ring: Vring::default(),
                blocked: false,
                frames: Vec::with_capacity(super::tx::TX_BATCH),
                learn_mac: false,
                guest_mac: None,
                mac_watch: None,
            },
            params: DatapathParams::default(),
            backend: None,
            backend_closed: false,
            epoll,
            token,
            registered: None,
            hot: false,
            counts: Counts::default(),
            log: RateLimitedLog::default(),
            iov: GuestIov::default(),
            dirty_log: None,
            shared,
            capture: Arc::default(),
        }
    }

    /// Binds (or with `None` unbinds) the backend queue.
    pub fn set_backend(&mut self, backend: Option<Box<dyn BackendQueue>>) {
        if let Some(old) = &self.backend {
            if self.registered.is_some() {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, old.fd(), EpollEvent::default());
            }
        }
        self.registered = None;
        self.backend = backend;
        self.backend_closed = false;
        self.tx.blocked = false;
        self.rx.bounce_len = 0;
        self.update_interest();
    }

    /// Installs a ring's kick eventfd and registers it with the worker's epoll.
    pub fn set_kick(&mut self, rx: bool, kick: EventFd) -> io::Result<()> {
        let event = if rx {
            PairEvent::RxKick
        } else {
            PairEvent::TxKick
        };
        let ring = if rx {
            &mut self.rx.ring
        } else {
            &mut self.tx.ring
        };
        if let Some(old) = ring.kick.take() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                old.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        vhost_user_netd_backends::sys::set_nonblocking(kick.as_raw_fd(), true)?;
        self.epoll.ctl(
            ControlOperation::Add,
            kick.as_raw_fd(),
            EpollEvent::new(EventSet::IN, self.token | event as u64),
        )?;
        // Process whatever the driver queued before we were listening.
        let _ = kick.write(1);
        ring.kick = Some(kick);
        ring.started = true;
        Ok(())
    }

    /// Stops a ring (`GET_VRING_BASE`): no more processing until it is started again.
    pub fn stop_ring(&mut self, rx: bool) -> u16 {
        let ring = if rx {
            &mut self.rx.ring
        } else {
            &mut self.tx.ring
        };
        if let Some(kick) = ring.kick.take() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                kick.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        ring.started = false;
        let base = ring.next_avail();
        if rx {
            self.rx.bounce_len = 0;
        }
        self.update_interest();
        base
    }

    /// Whether rx may deliver frames now (ring running and enabled, backend there).
    pub(super) fn rx_deliverable(&self) -> bool {
        self.rx.ring.is_running()
            && self.rx.ring.enabled
            && self.backend.is_some()
            && !self.backend_closed
    }

    /// Registers exactly the backend events the pair can act on now.
    pub fn update_interest(&mut self) {
        let Some(backend) = &self.backend else { return };
        let want = if self.backend_closed {
            None
        } else {
            Some(Interest {
                // With the link down frames are read and dropped, so the host side never stalls.
                read: (self.rx_deliverable() && !self.rx.starved)
                    || (!self.params.link_up && self.backend.is_some()),
                write: self.tx.blocked,
            })
        };
        if want == self.registered {
            return;
        }
        let fd = backend.fd();
        let result = match (self.registered, want) {
            (Some(_), None) => self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default()),
            (old, Some(w)) => {
                let mut set = EventSet::empty();
                if w.read {
                    set |= EventSet::IN;
                }
                if w.write {
                    set |= EventSet::OUT;
                }
                let op = if old.is_some() {
                    ControlOperation::Modify
                } else {
                    ControlOperation::Add
                };
                let data = self.token | PairEvent::Backend as u64;
                self.epoll.ctl(op, fd, EpollEvent::new(set, data))
            }
            (None, None) => Ok(()),
        };
        match result {
            Ok(()) => self.registered = want,
            Err(e) => error!("pair {}: epoll on backend fd {fd}: {e}", self.index),
        }
    }

    /// Takes the pair's descriptors out of its worker's epoll (the pair is going away).
    pub(super) fn leave_epoll(&mut self) {
        for ring in [&self.rx.ring, &self.tx.ring] {
            if let Some(kick) = &ring.kick {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    kick.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
        }
        if let (Some(backend), Some(_)) = (&self.backend, self.registered) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                backend.fd(),
                EpollEvent::default(),
            );
        }
        self.registered = None;
    }

    /// Takes host pointers to both rings in `mem` (once per memory table).
    pub(super) fn map_rings(&mut self, mem: &GuestMemoryGuard) {
        self.rx.ring.map_in(mem);
        self.tx.ring.map_in(mem);
    }

    /// While hot: takes what the guest queued without kicking. Returns whether there was any.
    pub(super) fn poll_rings(&mut self, mem: &GuestMemoryMmap) -> bool {
        let mut worked = false;
        if self.tx.ring.is_running() && !self.tx.blocked && self.tx.ring.has_avail(mem) {
            self.process_tx(mem);
            worked = true;
        }
        if self.rx.starved && self.rx.ring.is_running() && self.rx.ring.has_avail(mem) {
            self.rx.starved = false;
            self.process_rx(mem);
            worked = true;
        } else if self.rx_buffered_in_backend() {
            // Frames another thread left in the backend (a hub port whose worker was busy): the
            // worker looks at its epoll only every few rounds while polling.
            self.process_rx(mem);
            worked = true;
        }
        if worked {
            self.update_interest();
            self.flush_counts();
        }
        worked
    }

    /// Stops polling: asks the guest to kick again, and processes what it queued meanwhile.
    /// Returns whether there was any (the worker then stays awake).
    pub(super) fn cool(&mut self, mem: &GuestMemoryMmap) -> bool {
        self.hot = false;
        let mut worked = false;
        if self.tx.ring.is_running() && !self.tx.blocked {
            match self.tx.ring.enable_notification(mem) {
                Ok(true) => {
                    self.process_tx(mem);
                    worked = true;
                }
                Ok(false) => {}
                Err(e) => self.ring_failed(false, e),
            }
        }
        if self.rx.starved && self.rx.ring.is_running() {
            match self.rx.ring.enable_notification(mem) {
                Ok(true) => {
                    self.rx.starved = false;
                    self.process_rx(mem);
                    worked = true;
                }
                Ok(false) => {}
                Err(e) => self.ring_failed(true, e),
            }
        }
        self.update_interest();
        self.flush_counts();
        worked
    }

    /// Whether the backend holds frames the guest could take now.
    /// Whether polling its rings after work pays: its backend says (without one there is
    /// nothing to poll for).
    pub(super) fn polling_pays(&self) -> bool {
        self.backend.as_ref().is_some_and(|b| b.polling_pays())
    }

    pub(super) fn rx_buffered_in_backend(&self) -> bool {
        !self.backend_closed
            && !self.rx.starved
            && (self.rx_deliverable() || !self.params.link_up)
            && self.backend.as_ref().is_some_and(|b| b.pending_input())
    }

    /// Adds the batch's counters to the shared ones.
    pub(super) fn flush_counts(&mut self) {
        if self.counts != Counts::default() {
            self.shared.add(&self.counts);
            self.counts = Counts::default();
        }
    }

    /// Reads a ring's kick. A kick that cannot be read (it is not an eventfd after all) would
    /// stay ready for ever and spin the worker: it is dropped, and the ring runs on without
    /// kicks (counted as a ring error).
    fn take_kick(&mut self, rx: bool) {
        let ring = if rx {
            &mut self.rx.ring
        } else {
            &mut self.tx.ring
        };
        let Some(k) = &ring.kick else { return };
        match k.read() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                if let Some(kick) = ring.kick.take() {
                    let _ = self.epoll.ctl(
                        ControlOperation::Delete,
                        kick.as_raw_fd(),
                        EpollEvent::default(),
                    );
                }
                self.counts.ring_errors += 1;
                warn!(
                    "pair {}: kick descriptor unreadable ({e}); dropped",
                    self.index
                );
            }
        }
    }

    pub(super) fn on_event(&mut self, mem: &GuestMemoryMmap, event: PairEvent, set: EventSet) {
        match event {
            PairEvent::RxKick => {
                self.take_kick(true);
                self.counts.kicks += 1;
                self.rx.starved = false;
                self.process_rx(mem);
            }
            PairEvent::TxKick => {
                self.take_kick(false);
                self.counts.kicks += 1;
                self.process_tx(mem);
            }
            PairEvent::Backend => {
                if set.contains(EventSet::OUT) {
                    self.tx.blocked = false;
                    self.process_tx(mem);
                }
                if set.contains(EventSet::IN) {
                    self.process_rx(mem);
                }
                if set.intersects(EventSet::HANG_UP | EventSet::ERROR)
                    && !set.contains(EventSet::IN)
                {
                    warn!("pair {}: backend hung up", self.index);
                    self.backend_closed = true;
                }
            }
        }
        self.finish_round();
    }

    /// After a round of work: logs the used rings while migrating (entries, idx and
    /// notification fields may have been written), registers the backend events the pair can act
    /// on now, and publishes its counts.
    pub(super) fn finish_round(&mut self) {
        if let Some(log) = self.logging() {
            for ring in [&self.rx.ring, &self.tx.ring] {
                if let Some((gpa, len)) = ring.used_ring_range() {
                    log.mark(gpa, len);
                }
            }
        }
        self.update_interest();
        self.flush_counts();
    }

    /// Makes a ring's new used entries visible (logging the used ring first while migrating, so
    /// no entry is seen before its page is marked) and interrupts the guest if it asked.
    pub(super) fn publish(&mut self, mem: &GuestMemoryMmap, rx: bool) {
        let ring = if rx { &self.rx.ring } else { &self.tx.ring };
        if ring.unpublished() == 0 {
            return;
        }
        if let Some(log) = self.logging() {
            if let Some((gpa, len)) = ring.used_ring_range() {
                log.mark(gpa, len);
            }
        }
        // Count what the guest is about to see first: a stats query after a completion agrees.
        self.flush_counts();
        let ring = if rx {
            &mut self.rx.ring
        } else {
            &mut self.tx.ring
        };
        if ring.publish_and_notify(mem) {
            self.counts.interrupts += 1;
        }
    }

    /// The dirty log, while the frontend wants writes logged.
    pub(super) fn logging(&self) -> Option<&DirtyLog> {
        self.dirty_log.as_deref().filter(|_| self.params.log_all)
    }
}

/// A pair as another thread sees it: usable only while its worker is not holding it.
#[derive(Clone)]
struct IdlePair {
    state: std::sync::Weak<Mutex<QueuePair>>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
}

impl IdlePair {
    /// Runs `f` on the pair with its memory (rings mapped) if the pair still exists and its lock
    /// is free right now; never waits.
    fn with<T>(&self, f: impl FnOnce(&mut QueuePair, &GuestMemoryMmap) -> T) -> Option<T> {
        let state = self.state.upgrade()?;
        let mut pair = state.try_lock().ok()?;
        let guard = self.mem.memory();
        pair.map_rings(&guard);
        Some(f(&mut pair, &guard))
    }
}

/// A queue pair on its worker.
#[derive(Debug)]
pub struct PairHandle {
    state: Arc<Mutex<QueuePair>>,
    worker: Arc<Worker>,
    slot: usize,
    pub counters: Arc<SharedCounters>,
}

impl PairHandle {
    /// Creates the pair on a worker (its own, or the least loaded shared one).
    pub fn spawn(
        index: u16,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        workers: &Workers,
    ) -> io::Result<Self> {
        let worker = workers.for_new_pair(index)?;
        let counters = Arc::new(SharedCounters::default());
        let pair_counters = counters.clone();
        let (slot, state) = worker.attach(mem, |epoll, token| {
            QueuePair::new(index, epoll, token, pair_counters)
        });
        Ok(PairHandle {
            state,
            worker,
            slot,
            counters,
        })
    }

    /// The pair's state, shared (the control queue sets its rx filter).
    pub fn state(&self) -> Arc<Mutex<QueuePair>> {
        self.state.clone()
    }

    /// Lets an in-process backend (the hub) run the pair's rx path, or hand it frames, on the
    /// sender's thread when the pair's worker is not busy (the pair's lock is free).
    pub fn rx_waker(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> RxWaker {
        let idle = IdlePair {
            state: Arc::downgrade(&self.state),
            mem,
        };
        let deliver_to = idle.clone();
        RxWaker {
            wake: Arc::new(move || {
                idle.with(|pair, mem| pair.on_event(mem, PairEvent::Backend, EventSet::IN))
                    .is_some()
            }),
            deliver: Arc::new(move |frames| {
                deliver_to
                    .with(|pair, mem| {
                        let taken = pair.deliver_frames(mem, frames);
                        pair.finish_round();
                        taken
                    })
                    .unwrap_or(0)
            }),
        }
    }

    /// Locks the pair's state.
    pub fn lock(&self) -> MutexGuard<'_, QueuePair> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for PairHandle {
    fn drop(&mut self) {
        self.worker.detach(self.slot);
    }
}
