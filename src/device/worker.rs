//! The event loops that run queue pairs: a thread with one epoll, serving one or several pairs.
//!
//! By default every queue pair gets a worker of its own (`vq-pair-N`), so the pairs of a
//! multiqueue port run in parallel. With `--workers N` the daemon instead starts N shared workers
//! (`vq-worker-N`) and puts each new pair on the least loaded one: the pairs of every port on a
//! worker are served by one thread, so a frame one port hands another (a hub) is delivered by a
//! function call on the same thread instead of a wake-up and a context switch.
//!
//! A pair's descriptors (kick eventfds, backend) are registered in its worker's epoll with the
//! pair's slot in the upper bits of the event data and the [`PairEvent`] in the low byte.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vhost_user_netd_backends::Batching;

use log::{debug, error};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::queue_pair::{PairEvent, QueuePair};
use super::role_filters::{Role, RoleFilters};

/// Event data of the worker's own stop eventfd.
const STOP: u64 = u64::MAX;
/// Event data of the worker's liveness ping (the service manager's watchdog).
const PING: u64 = u64::MAX - 1;
/// Rounds of work on hot rings between two looks at the epoll.
const EPOLL_EVERY: u32 = 8;
/// Empty polling rounds between two yields of the core.
const YIELD_EVERY: u32 = 8;
/// Bits of the event data below the slot.
const SLOT_SHIFT: u32 = 8;

/// A pair served by a worker, and the guest memory it works in.
#[derive(Clone)]
struct Slot {
    pair: Arc<Mutex<QueuePair>>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
}

/// The per-role seccomp filters workers (and the threads they serve) put on themselves.
pub type WorkerFilter = Arc<RoleFilters>;

/// What the worker thread and the pairs' handles share.
struct Shared {
    epoll: Arc<Epoll>,
    slots: Mutex<Vec<Option<Slot>>>,
    /// Written to ask the thread for a sign of life, which it gives by counting `beats`.
    ping: EventFd,
    beats: AtomicU64,
    filter: WorkerFilter,
}

impl Shared {
    fn slot(&self, index: usize) -> Option<Slot> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.get(index).cloned().flatten()
    }
}

/// A worker thread and its epoll; the thread stops when the worker is dropped.
pub struct Worker {
    shared: Arc<Shared>,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("pairs", &self.load())
            .finish()
    }
}

impl Worker {
    /// Starts a worker thread called `name` with no pairs; after work it keeps looking for more
    /// for `poll_budget` before it sleeps.
    /// `filter` is the one the thread puts on itself once it is set.
    pub fn spawn(
        name: String,
        poll_budget: Duration,
        filter: WorkerFilter,
    ) -> io::Result<Arc<Self>> {
        let epoll = Arc::new(Epoll::new()?);
        let stop = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        let ping = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            ping.as_raw_fd(),
            EpollEvent::new(EventSet::IN, PING),
        )?;
        let shared = Arc::new(Shared {
            epoll,
            slots: Mutex::new(Vec::new()),
            ping,
            beats: AtomicU64::new(0),
            filter,
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(&thread_shared, poll_budget))?;
        Ok(Arc::new(Worker {
            shared,
            stop,
            thread: Some(thread),
        }))
    }

    /// Whether the thread answers a ping within `timeout` (it is neither gone nor stuck).
    pub fn answers(&self, timeout: Duration) -> bool {
        if self.thread.as_ref().is_none_or(JoinHandle::is_finished) {
            return false;
        }
        let before = self.shared.beats.load(Ordering::SeqCst);
        if self.shared.ping.write(1).is_err() {
            return false;
        }
        let deadline = Instant::now() + timeout;
        while self.shared.beats.load(Ordering::SeqCst) == before {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Pairs served now.
    pub fn load(&self) -> usize {
        let slots = self.shared.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.iter().filter(|s| s.is_some()).count()
    }

    /// Adds the pair `make` builds (given this worker's epoll and the pair's event-data base).
    pub(super) fn attach(
        &self,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        make: impl FnOnce(Arc<Epoll>, u64) -> QueuePair,
    ) -> (usize, Arc<Mutex<QueuePair>>) {
        let mut slots = self.shared.slots.lock().unwrap_or_else(|p| p.into_inner());
        let index = slots.iter().position(Option::is_none).unwrap_or_else(|| {
            slots.push(None);
            slots.len() - 1
        });
        let token = (index as u64) << SLOT_SHIFT;
        let pair = Arc::new(Mutex::new(make(self.shared.epoll.clone(), token)));
        slots[index] = Some(Slot {
            pair: pair.clone(),
            mem,
        });
        (index, pair)
    }

    /// Removes the pair in `index`: its descriptors leave the epoll, its counts are flushed.
    pub(super) fn detach(&self, index: usize) {
        let slot = {
            let mut slots = self.shared.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.get_mut(index).and_then(Option::take)
        };
        if let Some(slot) = slot {
            let mut pair = slot.pair.lock().unwrap_or_else(|p| p.into_inner());
            pair.leave_epoll();
            pair.flush_counts();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                error!("queue worker panicked");
            }
        }
    }
}

/// The daemon's queue workers: `--workers N` shared ones, or (0) one per queue pair; and how
/// long a worker keeps looking for work before it sleeps (`--poll-us`). Passed down to every
/// device as a value.
#[derive(Debug)]
pub struct Workers {
    shared: Vec<Arc<Worker>>,
    /// Every worker started and not yet dropped (shared ones and those of single pairs).
    all: Mutex<Vec<Weak<Worker>>>,
    poll_budget: Duration,
    /// Whether the pairs they run batch backend system calls (`--no-batching`: one frame each).
    batching: Batching,
    /// The filter every worker puts on itself once it is set (`Workers::confine`).
    filter: WorkerFilter,
}

impl Default for Workers {
    /// A worker per pair, polling 50 µs.
    fn default() -> Self {
        Workers {
            shared: Vec::new(),
            all: Mutex::new(Vec::new()),
            poll_budget: DEFAULT_POLL_BUDGET,
            batching: Batching::ON,
            filter: WorkerFilter::default(),
        }
    }
}

/// `--poll-us` unless set.
pub const DEFAULT_POLL_BUDGET: Duration = Duration::from_micros(50);

impl Workers {
    /// Starts `shared` workers (0: a worker per pair, started with each pair).
    pub fn start(shared: usize, poll_budget: Duration, batching: Batching) -> io::Result<Self> {
        let filter = WorkerFilter::default();
        let shared: Vec<Arc<Worker>> = (0..shared)
            .map(|i| Worker::spawn(format!("vq-worker-{i}"), poll_budget, filter.clone()))
            .collect::<io::Result<_>>()?;
        Ok(Workers {
            all: Mutex::new(shared.iter().map(Arc::downgrade).collect()),
            shared,
            poll_budget,
            batching,
            filter,
        })
    }

    /// The filters threads of each role put on themselves once the daemon is confined.
    pub fn filter(&self) -> WorkerFilter {
        self.filter.clone()
    }

    /// Whether pairs batch backend system calls.
    pub fn batching(&self) -> Batching {
        self.batching
    }

    /// The worker a new pair goes to: the least loaded shared one, or a new one of its own.
    pub(super) fn for_new_pair(&self, index: u16) -> io::Result<Arc<Worker>> {
        match self.shared.iter().min_by_key(|w| w.load()) {
            Some(w) => Ok(w.clone()),
            None => {
                let worker = Worker::spawn(
                    format!("vq-pair-{index}"),
                    self.poll_budget,
                    self.filter.clone(),
                )?;
                let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
                all.retain(|w| w.strong_count() > 0);
                all.push(Arc::downgrade(&worker));
                Ok(worker)
            }
        }
    }

    /// Sets the per-role filters: every queue thread, running or started later, and every
    /// connection served from now on put theirs on; true once every running worker has (each
    /// does when it next wakes, which a ping makes it do).
    pub fn confine(
        &self,
        connection: seccompiler::BpfProgram,
        queue: seccompiler::BpfProgram,
    ) -> bool {
        let _ = self.filter.connection.set(connection);
        let _ = self.filter.queue.set(queue);
        self.all_answer(Duration::from_secs(5))
    }

    /// Whether every running worker answers a ping within `timeout` each (the watchdog's test).
    pub fn all_answer(&self, timeout: Duration) -> bool {
        let live: Vec<Arc<Worker>> = {
            let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
            all.retain(|w| w.strong_count() > 0);
            all.iter().filter_map(Weak::upgrade).collect()
        };
        live.iter().all(|w| w.answers(timeout))
    }
}

/// Runs `f` on the pair in slot `index`, if there still is one, with its memory and lock.
fn with_pair<T>(
    shared: &Shared,
    index: usize,
    f: impl FnOnce(&mut QueuePair, &GuestMemoryMmap) -> T,
) -> Option<T> {
    let slot = shared.slot(index)?;
    let guard = slot.mem.memory();
    let mut pair = slot.pair.lock().unwrap_or_else(|p| p.into_inner());
    pair.map_rings(&guard);
    Some(f(&mut pair, &guard))
}

fn run(shared: &Shared, budget: Duration) {
    confine_this_thread(shared);
    WorkerLoop::new(shared, budget).run();
}

/// Puts this worker thread under the queue threads' filter if it is set and not on yet.
fn confine_this_thread(shared: &Shared) {
    if shared.filter.confine_this_thread(Role::Queue) {
        #[cfg(feature = "sandbox-probe")]
        if std::env::var_os("VUNETD_SANDBOX_PROBE").is_some_and(|v| v == "worker") {
            let ret = crate::sandbox::make_call_forbidden_to_workers();
            log::info!("sandbox probe: the call forbidden to queue workers returned {ret}");
        }
    }
}

/// What happened to one look at the epoll.
enum Look {
    /// `n` events (0 when the epoll was skipped or nothing came).
    Events(usize),
    /// The look was interrupted: look again.
    Again,
    /// The worker must end (stop event or a broken epoll).
    Stop,
}

/// One worker thread's loop and the state it keeps between rounds.
struct WorkerLoop<'a> {
    shared: &'a Shared,
    budget: Duration,
    events: Vec<EpollEvent>,
    /// Pairs whose backend holds frames the guest can take: frames a backend already holds do
    /// not make its descriptor readable, so the worker looks again without sleeping while there
    /// are.
    buffered: Vec<usize>,
    /// Pairs that did work this round.
    touched: Vec<usize>,
    /// After work, keep looking for a short while before sleeping: under load the next frame is
    /// usually microseconds away. Pairs that had work are "hot" meanwhile: the guest is not
    /// asked to kick them, the worker reads their rings itself (pausing between looks, see
    /// `pause`), which saves the guest's kick and our wake-up. Before it sleeps the worker
    /// cools them (kicks asked for again). Idle, the worker sleeps.
    poll_until: Option<Instant>,
    hot: Vec<usize>,
    rounds_without_epoll: u32,
    idle_rounds: u32,
}

impl<'a> WorkerLoop<'a> {
    fn new(shared: &'a Shared, budget: Duration) -> Self {
        WorkerLoop {
            shared,
            budget,
            events: vec![EpollEvent::default(); 32],
            buffered: Vec::new(),
            touched: Vec::new(),
            poll_until: None,
            hot: Vec::new(),
            rounds_without_epoll: 0,
            idle_rounds: 0,
        }
    }

    fn run(&mut self) {
        loop {
            let polling = self.poll_until.is_some_and(|t| Instant::now() < t);
            if !polling && !self.hot.is_empty() && self.cool_hot_pairs() {
                continue;
            }
            let n = match self.look(polling) {
                Look::Events(n) => n,
                Look::Again => continue,
                Look::Stop => return,
            };
            if n == 0 && self.buffered.is_empty() {
                self.idle_round();
                continue;
            }
            if n > 0 && !self.budget.is_zero() {
                self.poll_until = Some(Instant::now() + self.budget);
            }
            // Work came: the next empty look starts with a short pause again.
            self.idle_rounds = 0;
            if !self.handle_events(n) {
                return;
            }
            self.serve_buffered();
            self.settle_touched();
            if self.hot.is_empty() {
                // Nothing that worked is worth polling for: sleep until the next event.
                self.poll_until = None;
            }
        }
    }

    /// The pairs that did work this round: those whose backend still holds frames are served
    /// next round, and they become hot (see [`settle`]).
    fn settle_touched(&mut self) {
        settle(
            self.shared,
            &self.touched,
            self.budget,
            &mut self.buffered,
            &mut self.hot,
        );
    }

    /// The polling window closed: asks for kicks on the hot pairs again. Returns true if work
    /// raced in meanwhile (the worker then stays awake, and those pairs hot, for another window).
    fn cool_hot_pairs(&mut self) -> bool {
        self.touched.clear();
        for index in self.hot.drain(..) {
            if with_pair(self.shared, index, |pair, mem| pair.cool(mem)).unwrap_or(false) {
                self.touched.push(index);
            }
        }
        if self.touched.is_empty() {
            return false;
        }
        self.poll_until = Some(Instant::now() + self.budget);
        self.settle_touched();
        true
    }

    /// Looks at the epoll, without waiting while polling or while backends hold frames. While
    /// polling, the hot rings are looked at directly and the epoll only every few rounds: each
    /// `epoll_wait` (like each yield) is a system call on the path of every frame in flight.
    fn look(&mut self, polling: bool) -> Look {
        let skip_epoll = polling
            && !self.hot.is_empty()
            && self.buffered.is_empty()
            && self.rounds_without_epoll < EPOLL_EVERY;
        if skip_epoll {
            self.rounds_without_epoll += 1;
            return Look::Events(0);
        }
        self.rounds_without_epoll = 0;
        let timeout = if !self.buffered.is_empty() || polling {
            0
        } else {
            -1
        };
        match self.shared.epoll.wait(timeout, &mut self.events) {
            Ok(n) => Look::Events(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Look::Again,
            Err(e) => {
                error!("epoll_wait: {e}");
                Look::Stop
            }
        }
    }

    /// Nothing came from the epoll: the hot rings are read directly; if they had nothing either,
    /// the worker pauses before the next look.
    fn idle_round(&mut self) {
        if poll_hot(self.shared, &self.hot, &mut self.touched) {
            self.idle_rounds = 0;
            self.poll_until = Some(Instant::now() + self.budget);
            self.settle_touched();
        } else {
            self.idle_rounds += 1;
            pause(self.idle_rounds);
        }
    }

    /// Runs each event's pair; false on the stop event.
    fn handle_events(&mut self, n: usize) -> bool {
        self.touched.clear();
        for ev in &self.events[..n] {
            let data = ev.data();
            if data == STOP {
                debug!("queue worker stopping");
                return false;
            }
            if data == PING {
                let _ = self.shared.ping.read();
                confine_this_thread(self.shared);
                self.shared.beats.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            let index = (data >> SLOT_SHIFT) as usize;
            let Some(event) = PairEvent::from_data(data & 0xff) else {
                continue;
            };
            // None: a pair detached after the event was queued.
            if with_pair(self.shared, index, |pair, mem| {
                pair.on_event(mem, event, ev.event_set())
            })
            .is_some()
                && !self.touched.contains(&index)
            {
                self.touched.push(index);
            }
        }
        true
    }

    /// Pairs with frames waiting in their backend get served every round, whatever the other
    /// pairs' events, so a busy neighbour cannot starve them.
    fn serve_buffered(&mut self) {
        for index in self.buffered.drain(..) {
            if self.touched.contains(&index) {
                continue;
            }
            with_pair(self.shared, index, |pair, mem| {
                pair.on_event(mem, PairEvent::Backend, EventSet::IN);
            });
            self.touched.push(index);
        }
    }
}

/// Takes what the guest queued on the hot pairs' rings; `touched` gets the pairs that had some.
fn poll_hot(shared: &Shared, hot: &[usize], touched: &mut Vec<usize>) -> bool {
    touched.clear();
    for &index in hot {
        if with_pair(shared, index, |pair, mem| pair.poll_rings(mem)).unwrap_or(false) {
            touched.push(index);
        }
    }
    !touched.is_empty()
}

/// A polling round found nothing: pause before looking again, longer the longer nothing came
/// (16 pauses, doubling up to 256: each look reads cache lines the guest's core is writing, so
/// looking too often slows the guest down), and give the core away every few rounds (a yield
/// is a system call, and usually nothing else wants the core).
fn pause(idle_rounds: u32) {
    if idle_rounds % YIELD_EVERY == 0 {
        std::thread::yield_now();
        return;
    }
    for _ in 0..16u32 << idle_rounds.saturating_sub(1).min(4) {
        std::hint::spin_loop();
    }
}

/// After pairs did work: those whose backend still holds frames go to `buffered` (served next
/// round), and with a poll budget they become hot (polled without kicks until the worker cools
/// them).
fn settle(
    shared: &Shared,
    worked: &[usize],
    budget: Duration,
    buffered: &mut Vec<usize>,
    hot: &mut Vec<usize>,
) {
    for &index in worked {
        let (still, heat) = with_pair(shared, index, |pair, _| {
            let heat = !budget.is_zero() && !pair.hot && pair.polling_pays();
            if heat {
                pair.hot = true;
            }
            (pair.rx_buffered_in_backend(), heat)
        })
        .unwrap_or((false, false));
        if still && !buffered.contains(&index) {
            buffered.push(index);
        }
        if heat {
            hot.push(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::counters::SharedCounters;

    fn new_pair(
        worker: &Worker,
        mem: &GuestMemoryAtomic<GuestMemoryMmap>,
    ) -> (usize, Arc<Mutex<QueuePair>>, Arc<SharedCounters>) {
        let counters = Arc::new(SharedCounters::default());
        let c = counters.clone();
        let (slot, pair) = worker.attach(mem.clone(), |epoll, token| {
            QueuePair::new(0, epoll, token, c)
        });
        (slot, pair, counters)
    }

    /// A worker with the default polling window, and empty guest memory for its pairs.
    fn test_worker() -> (Arc<Worker>, GuestMemoryAtomic<GuestMemoryMmap>) {
        let worker = Worker::spawn(
            "test-worker".into(),
            DEFAULT_POLL_BUDGET,
            WorkerFilter::default(),
        )
        .unwrap();
        (worker, GuestMemoryAtomic::new(GuestMemoryMmap::new()))
    }

    /// Waits (bounded) until `counters` saw `kicks` kicks.
    fn await_kicks(counters: &SharedCounters, kicks: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while counters.snapshot().kicks < kicks {
            assert!(Instant::now() < deadline, "kick never processed");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_running_worker_answers_its_ping_and_workers_know_every_worker() {
        let workers = Workers::start(2, DEFAULT_POLL_BUDGET, Batching::ON).unwrap();
        assert!(workers.all_answer(Duration::from_secs(5)));
        let own = Workers::start(0, DEFAULT_POLL_BUDGET, Batching::ON).unwrap();
        let pair_worker = own.for_new_pair(0).unwrap();
        assert!(pair_worker.answers(Duration::from_secs(5)));
        assert_eq!(own.all.lock().unwrap().len(), 1);
        drop(pair_worker);
        // A worker that is gone is no longer asked.
        assert!(own.all_answer(Duration::from_secs(5)));
        assert!(own.all.lock().unwrap().is_empty());
    }

    #[test]
    fn pairs_on_one_worker_get_their_own_events_and_leave_cleanly() {
        let (worker, mem) = test_worker();
        let (a, pair_a, count_a) = new_pair(&worker, &mem);
        let (b, pair_b, count_b) = new_pair(&worker, &mem);
        assert_ne!(a, b);
        assert_eq!(worker.load(), 2);

        // A kick on b's eventfd is b's event only (installing a kick signals it once).
        let kick_b = EventFd::new(EFD_NONBLOCK).unwrap();
        lock_pair(&pair_b)
            .set_kick(false, kick_b.try_clone().unwrap())
            .unwrap();
        await_kicks(&count_b, 1);
        kick_b.write(1).unwrap();
        await_kicks(&count_b, 2);
        assert_eq!(count_a.snapshot().kicks, 0, "a saw b's kick");

        // a leaves: its kick leaves the epoll, its slot is reused.
        let kick_a = EventFd::new(EFD_NONBLOCK).unwrap();
        lock_pair(&pair_a)
            .set_kick(true, kick_a.try_clone().unwrap())
            .unwrap();
        await_kicks(&count_a, 1);
        worker.detach(a);
        assert_eq!(worker.load(), 1);
        kick_a.write(1).unwrap();
        kick_b.write(1).unwrap();
        await_kicks(&count_b, 3);
        assert_eq!(count_a.snapshot().kicks, 1, "a detached pair got an event");
        let (c, _, _) = new_pair(&worker, &mem);
        assert_eq!(c, a, "the free slot is reused");
    }

    /// A backend queue with nothing to read, taking every frame, polling as it is told.
    #[derive(Debug)]
    struct Quiet {
        pays: bool,
        never: EventFd,
    }

    impl vhost_user_netd_backends::BackendQueue for Quiet {
        fn fd(&self) -> std::os::fd::RawFd {
            std::os::fd::AsRawFd::as_raw_fd(&self.never)
        }
        fn recv(&mut self, _: &mut [std::io::IoSliceMut<'_>]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
        fn send(&mut self, bufs: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
            Ok(bufs.iter().map(|b| b.len()).sum())
        }
        fn set_offloads(&mut self, _: vhost_user_netd_backends::Offloads) -> io::Result<()> {
            Ok(())
        }
        fn polling_pays(&self) -> bool {
            self.pays
        }
    }

    #[test]
    fn only_pairs_whose_backend_says_polling_pays_get_hot() {
        let (worker, mem) = test_worker();
        let (tap_like, tap_pair, _) = new_pair(&worker, &mem);
        let (user_like, user_pair, _) = new_pair(&worker, &mem);
        let (unbound, _, _) = new_pair(&worker, &mem);
        for (pair, pays) in [(&tap_pair, true), (&user_pair, false)] {
            let never = EventFd::new(EFD_NONBLOCK).unwrap();
            lock_pair(pair).set_backend(Some(Box::new(Quiet { pays, never })));
        }
        let worked = [tap_like, user_like, unbound];
        let (mut buffered, mut hot) = (Vec::new(), Vec::new());
        settle(
            &worker.shared,
            &worked,
            Duration::ZERO,
            &mut buffered,
            &mut hot,
        );
        assert!(hot.is_empty(), "--poll-us 0: nothing polls");
        settle(
            &worker.shared,
            &worked,
            DEFAULT_POLL_BUDGET,
            &mut buffered,
            &mut hot,
        );
        assert_eq!(
            hot,
            [tap_like],
            "only the pair whose backend says polling pays"
        );
        assert!(lock_pair(&tap_pair).hot && !lock_pair(&user_pair).hot);
    }

    fn lock_pair(pair: &Mutex<QueuePair>) -> std::sync::MutexGuard<'_, QueuePair> {
        pair.lock().unwrap_or_else(|p| p.into_inner())
    }
}
