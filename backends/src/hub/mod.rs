//! `hubport` netdevs: ports on the same hub (`hubid`) exchange frames inside the daemon, with no
//! system call per frame: VM-to-VM switching in one process, no tap, no root.
//!
//! A hub learns which port each source MAC sits behind; a unicast frame to a known MAC goes to
//! that port only, broadcast, multicast and unknown unicast to every other port (QEMU's hub
//! floods everything). Frames go guest memory to guest memory: the sender writes each straight
//! into a destination guest's rx buffers (one copy) when that port's worker is idle and nothing
//! older waits for it. Otherwise it goes through the port's inbox: a bounded queue of reused
//! buffers and an eventfd that is its queue's descriptor, signalled once per batch; the
//! destination's worker copies the frames into its guest's memory. A full inbox drops the frame
//! and counts it: a slow guest cannot stall the others.

pub mod dump;
pub mod options;
pub mod uplink;

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

pub use options::HubPortOptions;

use crate::{only_queue_zero, sys, Backend, BackendQueue, Capabilities, Error, RxWaker};

/// Frames an inbox holds before it drops.
const INBOX_FRAMES: usize = 1024;
/// Spare buffers an inbox keeps for reuse.
const INBOX_SPARE: usize = 256;
/// Source MACs a hub remembers; when full it forgets them all and learns again.
const MAC_TABLE_LIMIT: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The hubs of a daemon, by `hubid`; a hub lives while it has ports. Clones share the hubs.
#[derive(Debug, Clone, Default)]
pub struct Hubs(Arc<Mutex<HashMap<i32, Weak<Hub>>>>);

/// Frames waiting for one port's guest.
#[derive(Debug)]
struct Inbox {
    frames: Mutex<InboxFrames>,
    /// An eventfd, readable while frames wait (the port's queue descriptor).
    event: OwnedFd,
    /// Delivers to the port's guest on the sender's thread (set by the device).
    waker: Mutex<Option<RxWaker>>,
    /// Set before `event` is signalled: the receiver reads (clears) the eventfd only when this
    /// says it may be readable, not with a system call every time the inbox runs empty.
    signalled: AtomicBool,
    dropped_full: AtomicU64,
}

#[derive(Debug, Default)]
struct InboxFrames {
    queued: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
}

impl Inbox {
    fn new() -> io::Result<Self> {
        Ok(Inbox {
            frames: Mutex::new(InboxFrames::default()),
            event: sys::eventfd()?,
            waker: Mutex::new(None),
            signalled: AtomicBool::new(false),
            dropped_full: AtomicU64::new(0),
        })
    }

    /// Queues a copy of the frame in `bufs` (the caller holds the inbox's lock, across a run of
    /// frames to this port); false if the inbox is full.
    fn push_locked(&self, f: &mut InboxFrames, bufs: &[IoSlice<'_>]) -> bool {
        if f.queued.len() >= INBOX_FRAMES {
            self.dropped_full.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let mut buf = f.spare.pop().unwrap_or_default();
        buf.clear();
        for b in bufs {
            buf.extend_from_slice(b);
        }
        f.queued.push_back(buf);
        true
    }

    /// Writes `frames` straight into the port's guest if it can take them now; how many it took.
    fn deliver_direct(&self, frames: &[&[IoSlice<'_>]]) -> usize {
        let waker = lock(&self.waker).clone();
        waker.map_or(0, |w| (w.deliver)(frames))
    }

    /// Gets the frames to the guest: delivered right here if the port's worker is idle, else the
    /// worker is woken. Frames the guest could not take yet leave the inbox readable.
    fn deliver(&self) {
        let waker = lock(&self.waker).clone();
        if let Some(w) = waker {
            if (w.wake)() && lock(&self.frames).queued.is_empty() {
                return;
            }
        }
        // A saturated counter still reads as "something waits".
        self.signalled.store(true, Ordering::Release);
        sys::eventfd_signal(self.event.as_raw_fd());
    }
}

/// One port of a hub.
#[derive(Debug)]
struct Member {
    key: u64,
    inbox: Arc<Inbox>,
    /// Gets a copy of every frame any other member sends, unicast included (a `dump`).
    mirror: bool,
}

/// Hashes a MAC with one multiply: the table is looked up per frame, and its keys come from the
/// guests, which can only fill it (bounded, then cleared), not make lookups slow.
#[derive(Debug, Default)]
struct MacHasher(u64);

impl std::hash::Hasher for MacHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

type MacTable = HashMap<[u8; 6], u64, std::hash::BuildHasherDefault<MacHasher>>;

#[derive(Debug, Default)]
struct HubState {
    members: Vec<Member>,
    /// Source MAC → member key.
    macs: MacTable,
    next_key: u64,
}

/// A hub: the ports with the same `hubid`.
#[derive(Debug)]
pub struct Hub {
    id: i32,
    state: Mutex<HubState>,
    /// Frames that went to exactly one port (a learned MAC).
    unicast: AtomicU64,
    /// Frames that went to every other port.
    flooded: AtomicU64,
    /// Frames written straight into a destination guest's buffers, not queued (a flooded frame
    /// counts once per port it reached that way).
    direct: AtomicU64,
}

impl Hub {
    /// The hub `id` of `hubs`, created if no port has it yet.
    fn get(hubs: &Hubs, id: i32) -> Arc<Hub> {
        let mut all = lock(&hubs.0);
        if let Some(hub) = all.get(&id).and_then(Weak::upgrade) {
            return hub;
        }
        let hub = Arc::new(Hub {
            id,
            state: Mutex::new(HubState::default()),
            unicast: AtomicU64::new(0),
            flooded: AtomicU64::new(0),
            direct: AtomicU64::new(0),
        });
        all.retain(|_, h| h.strong_count() > 0);
        all.insert(id, Arc::downgrade(&hub));
        hub
    }

    fn join(&self, inbox: Arc<Inbox>, mirror: bool) -> u64 {
        let mut s = lock(&self.state);
        let key = s.next_key;
        s.next_key += 1;
        s.members.push(Member { key, inbox, mirror });
        key
    }

    fn leave(&self, key: u64) {
        let mut s = lock(&self.state);
        s.members.retain(|m| m.key != key);
        s.macs.retain(|_, k| *k != key);
    }

    /// Forwards a batch of frames from port `from`. A run of frames to one port is written
    /// straight into that port's guest when it can take them now (one copy); what it cannot take
    /// is queued in its inbox (after the hub's lock is released: delivery runs the destination's
    /// rx path). `scratch` is the caller's, kept across batches: no allocation per batch.
    fn forward(&self, from: u64, frames: &[&[IoSlice<'_>]], scratch: &mut Forwarding) {
        scratch.routes.clear();
        scratch.ports.clear();
        self.route(from, frames, scratch);
        let mut signal: u64 = 0; // bit i: port i got something queued (beyond 64 ports: all)
        let mut i = 0;
        while i < frames.len() {
            let route = scratch.routes[i];
            let end = i + scratch.routes[i..]
                .iter()
                .take_while(|r| **r == route)
                .count();
            let run = &frames[i..end];
            match route {
                Route::Nowhere => {}
                Route::To(p) => signal |= self.hand_over(&scratch.ports[p].1, run) << p.min(63),
                Route::Flood => {
                    for (p, (key, inbox, mirror)) in scratch.ports.iter().enumerate() {
                        if *key != from && !mirror {
                            signal |= self.hand_over(inbox, run) << p.min(63);
                        }
                    }
                }
            }
            i = end;
        }
        // Mirrors get the whole batch, whatever its routes.
        for (p, (key, inbox, mirror)) in scratch.ports.iter().enumerate() {
            if *mirror && *key != from {
                signal |= self.hand_over(inbox, frames) << p.min(63);
            }
        }
        for (p, (_, inbox, _)) in scratch.ports.iter().enumerate() {
            if signal & (1 << p.min(63)) != 0 {
                inbox.deliver();
            }
        }
    }

    /// Gets a run of frames to one port: written straight into its guest as far as it can take
    /// them now, the rest queued in its inbox. Returns 1 if something was queued (the inbox must
    /// then be signalled), else 0.
    fn hand_over(&self, inbox: &Inbox, run: &[&[IoSlice<'_>]]) -> u64 {
        let direct = inbox.deliver_direct(run);
        self.direct.fetch_add(direct as u64, Ordering::Relaxed);
        if direct == run.len() {
            return 0;
        }
        let mut queue = lock(&inbox.frames);
        let mut queued = 0;
        for frame in &run[direct..] {
            if inbox.push_locked(&mut queue, frame) {
                queued = 1;
            }
        }
        queued
    }

    /// Learns the frames' source MACs and decides where each goes; `scratch.ports` gets the
    /// hub's ports (the routes index it).
    fn route(&self, from: u64, frames: &[&[IoSlice<'_>]], scratch: &mut Forwarding) {
        let mut s = lock(&self.state);
        let HubState { members, macs, .. } = &mut *s;
        scratch
            .ports
            .extend(members.iter().map(|m| (m.key, m.inbox.clone(), m.mirror)));
        let (mut unicast, mut flooded) = (0, 0);
        // The last frame's addresses and route: a batch is mostly one flow, so most frames skip
        // both table lookups. (Within a batch learning only adds sources behind `from`, which
        // changes no earlier route.)
        let mut last: Option<([u8; 12], Route)> = None;
        for frame in frames {
            let mut header = [0u8; 12];
            crate::copy_prefix(frame, &mut header);
            if let Some((_, route)) = last.filter(|(h, _)| *h == header) {
                match route {
                    Route::To(_) => unicast += 1,
                    Route::Flood => flooded += 1,
                    Route::Nowhere => {}
                }
                scratch.routes.push(route);
                continue;
            }
            let dst: [u8; 6] = header[..6].try_into().unwrap_or_default();
            let src: [u8; 6] = header[6..12].try_into().unwrap_or_default();
            if src[0] & 1 == 0 && macs.get(&src) != Some(&from) {
                if macs.len() >= MAC_TABLE_LIMIT {
                    macs.clear();
                }
                macs.insert(src, from);
            }
            let target = (dst[0] & 1 == 0).then(|| macs.get(&dst).copied()).flatten();
            let route = match target {
                Some(key) if key == from => Route::Nowhere, // behind the sender itself
                Some(key) => match members.iter().position(|m| m.key == key) {
                    Some(p) => {
                        unicast += 1;
                        Route::To(p)
                    }
                    None => Route::Nowhere,
                },
                None => {
                    flooded += 1;
                    Route::Flood
                }
            };
            scratch.routes.push(route);
            last = Some((header, route));
        }
        self.unicast.fetch_add(unicast, Ordering::Relaxed);
        self.flooded.fetch_add(flooded, Ordering::Relaxed);
    }
}

/// Where one frame of a batch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Nowhere (its destination is behind the sender).
    Nowhere,
    /// To port `.0` of the batch's port list only.
    To(usize),
    /// To every port but the sender.
    Flood,
}

/// A sender's reusable scratch for [`Hub::forward`].
#[derive(Debug, Default)]
struct Forwarding {
    routes: Vec<Route>,
    /// Each member's key, inbox and whether it is a mirror.
    ports: Vec<(u64, Arc<Inbox>, bool)>,
}

/// A `hubport` netdev: one port of hub `hubid`.
#[derive(Debug)]
pub struct HubPortBackend {
    hub: Arc<Hub>,
    key: u64,
    inbox: Arc<Inbox>,
}

impl HubPortBackend {
    /// Joins hub `hubid` (creating it).
    pub fn open(options: &HubPortOptions, hubs: &Hubs) -> Result<Self, Error> {
        Self::join(options.hubid, hubs, false)
    }

    /// Joins hub `hubid` as a mirror: every frame another member sends comes here too.
    pub fn open_mirror(hubid: i32, hubs: &Hubs) -> Result<Self, Error> {
        Self::join(hubid, hubs, true)
    }

    fn join(hubid: i32, hubs: &Hubs, mirror: bool) -> Result<Self, Error> {
        let inbox = Arc::new(Inbox::new().map_err(|e| Error::io("eventfd", e))?);
        let hub = Hub::get(hubs, hubid);
        let key = hub.join(inbox.clone(), mirror);
        Ok(HubPortBackend { hub, key, inbox })
    }
}

impl Drop for HubPortBackend {
    fn drop(&mut self) {
        self.hub.leave(self.key);
    }
}

impl Backend for HubPortBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities::PLAIN_ONE_QUEUE
    }

    fn queue(&self, index: u16) -> Result<Box<dyn BackendQueue>, Error> {
        only_queue_zero(index)?;
        Ok(Box::new(HubQueue {
            hub: self.hub.clone(),
            key: self.key,
            inbox: self.inbox.clone(),
            scratch: Forwarding::default(),
            taken: InboxFrames::default(),
        }))
    }

    fn describe(&self) -> String {
        format!("hubport hubid={}", self.hub.id)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let (members, macs) = {
            let s = lock(&self.hub.state);
            (s.members.len() as u64, s.macs.len() as u64)
        };
        vec![
            ("hub-ports", members),
            ("hub-macs-learned", macs),
            ("hub-unicast", self.hub.unicast.load(Ordering::Relaxed)),
            ("hub-flooded", self.hub.flooded.load(Ordering::Relaxed)),
            ("hub-direct", self.hub.direct.load(Ordering::Relaxed)),
            (
                "rx-dropped-inbox-full",
                self.inbox.dropped_full.load(Ordering::Relaxed),
            ),
        ]
    }
}

/// The port's queue: sends go through the hub, receives come from the inbox.
#[derive(Debug)]
pub struct HubQueue {
    hub: Arc<Hub>,
    key: u64,
    inbox: Arc<Inbox>,
    /// Scratch for forwarding a batch (reused).
    scratch: Forwarding,
    /// Frames taken from the inbox in one go (one lock per batch, not per frame), and the
    /// buffers they leave, handed back to the inbox's spares at the next take.
    taken: InboxFrames,
}

impl HubQueue {
    /// Moves everything queued in the inbox to `taken` (returning spent buffers); false if the
    /// inbox was empty, with its signal cleared.
    fn take_queued(&mut self) -> bool {
        let mut f = lock(&self.inbox.frames);
        while f.spare.len() < INBOX_SPARE {
            let Some(b) = self.taken.spare.pop() else {
                break;
            };
            f.spare.push(b);
        }
        self.taken.spare.clear();
        if f.queued.is_empty() {
            // Clear the signal (if one was sent), then look again: a sender pushes before it
            // signals, so a frame queued meanwhile is either seen now or leaves the descriptor
            // readable.
            if self.inbox.signalled.swap(false, Ordering::Acquire) {
                let _ = sys::read(self.inbox.event.as_raw_fd(), &mut [0u8; 8]);
            }
            if f.queued.is_empty() {
                return false;
            }
        }
        std::mem::swap(&mut f.queued, &mut self.taken.queued);
        true
    }
}

impl BackendQueue for HubQueue {
    fn fd(&self) -> RawFd {
        self.inbox.event.as_raw_fd()
    }

    fn recv(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        if self.taken.queued.is_empty() && !self.take_queued() {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        let frame = self.taken.queued.pop_front().unwrap_or_default();
        let n = crate::copy_frame(&frame, bufs);
        self.taken.spare.push(frame);
        Ok(n)
    }

    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.hub.forward(self.key, &[bufs], &mut self.scratch);
        Ok(bufs.iter().map(|b| b.len()).sum())
    }

    fn send_batch(&mut self, frames: &[&[IoSlice<'_>]]) -> io::Result<usize> {
        self.hub.forward(self.key, frames, &mut self.scratch);
        Ok(frames.len())
    }

    fn pending_input(&self) -> bool {
        !self.taken.queued.is_empty() || !lock(&self.inbox.frames).queued.is_empty()
    }

    fn set_rx_waker(&mut self, waker: RxWaker) {
        *lock(&self.inbox.waker) = Some(waker);
    }

    fn set_offloads(&mut self, _offloads: crate::Offloads) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst: [u8; 6], src: [u8; 6], tag: u8) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x88, 0xb5, tag]);
        f
    }

    fn recv(q: &mut Box<dyn BackendQueue>) -> Option<Vec<u8>> {
        let mut buf = [0u8; 64];
        let n = q.recv(&mut [IoSliceMut::new(&mut buf)]).ok()?;
        Some(buf[..n].to_vec())
    }

    const A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xa];
    const B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xb];
    const C: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xc];

    #[test]
    fn floods_until_it_learns_then_switches_unicast() {
        let hubs = Hubs::default();
        let opts = HubPortOptions {
            hubid: 7001,
            netdev: None,
        };
        let (a, b, c) = (
            HubPortBackend::open(&opts, &hubs).unwrap(),
            HubPortBackend::open(&opts, &hubs).unwrap(),
            HubPortBackend::open(&opts, &hubs).unwrap(),
        );
        let other = HubPortBackend::open(
            &HubPortOptions {
                hubid: 7002,
                netdev: None,
            },
            &hubs,
        )
        .unwrap();
        let (mut qa, mut qb, mut qc, mut qo) = (
            a.queue(0).unwrap(),
            b.queue(0).unwrap(),
            c.queue(0).unwrap(),
            other.queue(0).unwrap(),
        );
        // A to B, unknown yet: flooded to B and C, not back to A, not to another hub.
        let f1 = frame(B, A, 1);
        qa.send(&[IoSlice::new(&f1)]).unwrap();
        assert!(qb.pending_input());
        assert_eq!(recv(&mut qb), Some(f1.clone()));
        assert_eq!(recv(&mut qc), Some(f1));
        assert_eq!(recv(&mut qa), None);
        assert_eq!(recv(&mut qo), None);
        // B answers A: A was learned, so only A gets it.
        let f2 = frame(A, B, 2);
        qb.send_batch(&[&[IoSlice::new(&f2)]]).unwrap();
        assert_eq!(recv(&mut qa), Some(f2));
        assert_eq!(recv(&mut qc), None);
        // Now B is known too.
        let f3 = frame(B, A, 3);
        qa.send(&[IoSlice::new(&f3)]).unwrap();
        assert_eq!(recv(&mut qb), Some(f3));
        assert_eq!(recv(&mut qc), None);
        // Broadcast goes everywhere else.
        let f4 = frame([0xff; 6], C, 4);
        qc.send(&[IoSlice::new(&f4)]).unwrap();
        assert_eq!(recv(&mut qa), Some(f4.clone()));
        assert_eq!(recv(&mut qb), Some(f4));
        let counters: HashMap<_, _> = a.counters().into_iter().collect();
        assert_eq!(counters["hub-ports"], 3);
        assert_eq!(counters["hub-unicast"], 2);
        assert_eq!(counters["hub-flooded"], 2);
        // A port that leaves is forgotten: frames to its MAC are flooded again.
        drop(qb);
        drop(b);
        let f5 = frame(B, A, 5);
        qa.send(&[IoSlice::new(&f5)]).unwrap();
        assert_eq!(recv(&mut qc), Some(f5));
    }

    #[test]
    fn a_full_inbox_drops_and_counts_without_blocking_the_sender() {
        let hubs = Hubs::default();
        let opts = HubPortOptions {
            hubid: 7003,
            netdev: None,
        };
        let (a, b) = (
            HubPortBackend::open(&opts, &hubs).unwrap(),
            HubPortBackend::open(&opts, &hubs).unwrap(),
        );
        let mut qa = a.queue(0).unwrap();
        let f = frame([0xff; 6], A, 0);
        for _ in 0..INBOX_FRAMES + 10 {
            qa.send(&[IoSlice::new(&f)]).unwrap();
        }
        let counters: HashMap<_, _> = b.counters().into_iter().collect();
        assert_eq!(counters["rx-dropped-inbox-full"], 10);
        let mut qb = b.queue(0).unwrap();
        let mut n = 0;
        while recv(&mut qb).is_some() {
            n += 1;
        }
        assert_eq!(n, INBOX_FRAMES);
        // Drained: the descriptor is no longer readable.
        assert_eq!(
            crate::sys::poll_one(&queue_fd(&*qb), libc::POLLIN, 0).unwrap(),
            0
        );
    }

    fn queue_fd(q: &dyn BackendQueue) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the descriptor belongs to the queue, which outlives the borrow.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(q.fd()) }
    }
}
