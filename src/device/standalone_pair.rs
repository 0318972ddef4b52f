//! A queue pair driven by hand, without a worker thread, for fuzz targets: the same rx and tx
//! paths the worker runs, one call at a time. Only built with the `fuzzing` feature.

use std::io;
use std::sync::Arc;

use vhost_user_netd_backends::BackendQueue;
use vhost_user_netd_ring::vring::{GuestMemoryGuard, Vring};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{Epoll, EventSet};

use super::counters::{Counts, SharedCounters};
use super::queue_pair::{DatapathParams, PairEvent, QueuePair};

/// A pair with its own epoll (never waited on) and counters.
#[derive(Debug)]
pub struct StandalonePair {
    pair: QueuePair,
    counters: Arc<SharedCounters>,
}

impl StandalonePair {
    /// A pair with `params`, no backend and unconfigured rings.
    pub fn new(params: DatapathParams) -> io::Result<Self> {
        let counters = Arc::new(SharedCounters::default());
        let mut pair = QueuePair::new(0, Arc::new(Epoll::new()?), 0, counters.clone());
        pair.params = params;
        Ok(StandalonePair { pair, counters })
    }

    /// The guest's rx ring (host → guest) and tx ring.
    pub fn rings(&mut self) -> (&mut Vring, &mut Vring) {
        (&mut self.pair.rx.ring, &mut self.pair.tx.ring)
    }

    pub fn set_backend(&mut self, backend: Box<dyn BackendQueue>) {
        self.pair.set_backend(Some(backend));
    }

    /// What the guest queued on its tx ring goes to the backend (a tx kick).
    pub fn tx(&mut self, mem: &GuestMemoryGuard) {
        self.run(mem, PairEvent::TxKick, EventSet::empty());
    }

    /// What the backend holds goes into the guest's rx buffers (the backend readable).
    pub fn rx(&mut self, mem: &GuestMemoryGuard) {
        self.run(mem, PairEvent::Backend, EventSet::IN);
    }

    fn run(&mut self, mem: &GuestMemoryGuard, event: PairEvent, set: EventSet) {
        self.pair.map_rings(mem);
        let m: &GuestMemoryMmap = mem;
        self.pair.on_event(m, event, set);
    }

    /// The counters so far.
    pub fn counts(&self) -> Counts {
        self.counters.snapshot()
    }
}
