//! The in-repo vhost-user driver (`tests/common/frontend.rs`) on its own thread, as a bench's
//! frontend where testpmd does not fit: testpmd's `txonly` cannot mark frames for TSO, and its
//! busy-polling `rxonly` lcore starves a frame source that has to share its core.
//!
//! Sending, it keeps its tx ring full of one frame and polls for completions like testpmd (so
//! the daemon is what is measured); receiving, it posts 256 buffers of 64 KiB and sleeps until
//! called. Either way it kicks only when the daemon asked (`EVENT_IDX`) and counts what its rx
//! ring received.

#![allow(dead_code)] // each bench uses a different subset

use std::num::Wrapping;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::common::pin_to_core;
use crate::frontend::{TestFrontend, QUEUE_SIZE};

const RX: usize = 0;
const TX: usize = 1;
/// A whole 64 KiB frame with its 12-byte header.
pub const BIG_BUF: u64 = 65_562;

/// The running driver; stops on drop.
pub struct Driver {
    stop: Arc<AtomicBool>,
    frames: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Driver {
    /// Connects to `socket` on `core` wanting `features` (all of `required` must be acked) and,
    /// with `tx_frame` (virtio-net header included), keeps the tx ring full of it; without, drains
    /// rx. Returns once the rings are up.
    pub fn start(
        socket: &Path,
        features: u64,
        required: u64,
        tx_frame: Option<Vec<u8>>,
        core: usize,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (flag, f, b) = (stop.clone(), frames.clone(), bytes.clone());
        let socket = socket.to_path_buf();
        let thread = std::thread::spawn(move || {
            pin_to_core(core);
            let mut fe = TestFrontend::connect(&socket, 1, features);
            assert_eq!(fe.acked & required, required, "features the bench needs");
            fe.rings[RX].post_buffers(&fe.ram, 0, QUEUE_SIZE, BIG_BUF as u32, true);
            fe.kick(RX);
            if let Some(data) = &tx_frame {
                for slot in 0..QUEUE_SIZE {
                    fe.rings[TX].post_tx(&fe.ram, slot, data, BIG_BUF);
                }
                fe.kick(TX);
            }
            ready_tx.send(()).unwrap();
            let ring = if tx_frame.is_some() { TX } else { RX };
            let mut avail = Wrapping(QUEUE_SIZE);
            let mut heads = Vec::with_capacity(usize::from(QUEUE_SIZE));
            while !flag.load(Ordering::Relaxed) {
                let used = fe.rings[ring].take_used(&fe.ram);
                if used.is_empty() {
                    if ring == RX {
                        let call = &fe.calls[RX];
                        let _ = vhost_user_netd_backends::sys::poll_one(call, libc::POLLIN, 100);
                        let _ = call.read();
                    } else {
                        std::hint::spin_loop();
                    }
                    continue;
                }
                heads.clear();
                for &(id, len) in &used {
                    heads.push(id as u16);
                    if ring == RX {
                        f.fetch_add(1, Ordering::Relaxed);
                        b.fetch_add(u64::from(len.saturating_sub(12)), Ordering::Relaxed);
                    }
                }
                let old = avail;
                avail += Wrapping(heads.len() as u16);
                fe.rings[ring].make_available(&fe.ram, &heads);
                std::sync::atomic::fence(Ordering::SeqCst);
                let event = Wrapping(fe.rings[ring].avail_event(&fe.ram));
                if (avail - event - Wrapping(1)) < (avail - old) {
                    fe.kick(ring);
                }
            }
        });
        ready_rx.recv().expect("frontend connected");
        Driver {
            stop,
            frames,
            bytes,
            thread: Some(thread),
        }
    }

    /// Frames and bytes (without the header) received so far.
    pub fn received(&self) -> (u64, u64) {
        (
            self.frames.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
