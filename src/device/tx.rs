//! The tx path (guest → host): frames written from guest buffers straight to the backend.
//!
//! Chains are gathered into a batch of up to [`TX_BATCH`] frames and handed to the backend in one
//! [`BackendQueue::send_batch`](vhost_user_netd_backends::BackendQueue::send_batch) call, which a
//! socket backend turns into one `writev`/`sendmmsg`. When the backend is full the chains it did
//! not take go back to the avail ring and tx waits for the backend to become writable: nothing
//! the guest queued is lost or sent twice.

use crate::capture::Toward;
use std::io::{self, IoSlice};
use std::ops::Range;

use vhost_user_netd_backends::MAX_FRAME_LEN;
use vm_memory::GuestMemoryMmap;

use super::queue_pair::QueuePair;
use crate::mac::MacAddr;
use vhost_user_netd_ring::guest_iov::{ChainError, Direction, MAX_SEGMENTS};

/// Used elements written before they are published mid-batch.
const PUBLISH_EVERY: u16 = 64;
/// Frames handed to the backend at once.
pub const TX_BATCH: usize = 32;
/// A batch stops growing past this many host segments (leaving room for one more chain's worth
/// under the kernel's `IOV_MAX` in a single `writev`).
const BATCH_SEGMENTS: usize = MAX_SEGMENTS / 2;

/// One gathered frame of a tx batch.
#[derive(Debug, Clone)]
pub struct TxFrame {
    head: u16,
    /// Its segments in the pair's iov.
    segments: Range<usize>,
    /// Frame bytes (without a virtio-net header).
    len: usize,
}

/// How a batch ended.
enum BatchEnd {
    /// The ring has nothing more.
    RingEmpty,
    /// The backend is full; tx waits for writability.
    Blocked,
    /// The ring is unusable.
    RingError,
    /// More may follow.
    More,
}

impl QueuePair {
    /// Sends what the guest queued until the ring is empty or the backend is full.
    pub(super) fn process_tx(&mut self, mem: &GuestMemoryMmap) {
        if !self.tx.ring.is_running() || self.tx.blocked {
            return;
        }
        if !self.flush_backend() {
            return;
        }
        self.tx.learn_mac = true;
        loop {
            self.tx.ring.disable_notification(mem);
            loop {
                match self.tx_batch(mem) {
                    BatchEnd::More => {}
                    BatchEnd::RingEmpty => break,
                    BatchEnd::Blocked => {
                        self.tx.blocked = true;
                        self.counts.tx_backend_full += 1;
                        self.publish(mem, false);
                        return;
                    }
                    BatchEnd::RingError => {
                        self.publish(mem, false);
                        return;
                    }
                }
                if self.tx.ring.unpublished() >= PUBLISH_EVERY {
                    self.publish(mem, false);
                }
            }
            self.publish(mem, false);
            if !self.flush_backend() {
                return;
            }
            if self.hot {
                // The worker polls the ring for the next frames: no kick needed.
                return;
            }
            match self.tx.ring.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => return,
                Err(e) => {
                    self.ring_failed(false, e);
                    return;
                }
            }
        }
    }

    /// Pushes out what the backend holds back; false (and tx waits for writability) if it still
    /// holds something.
    fn flush_backend(&mut self) -> bool {
        let Some(backend) = self.backend.as_mut() else {
            return true;
        };
        match backend.flush() {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.tx.blocked = true;
                false
            }
            Err(e) => {
                let index = self.index;
                self.log
                    .warn(|| format!("pair {index} tx: backend flush failed: {e}"));
                true
            }
        }
    }

    /// Gathers up to [`TX_BATCH`] chains and sends them.
    fn tx_batch(&mut self, mem: &GuestMemoryMmap) -> BatchEnd {
        self.iov.clear();
        self.tx.frames.clear();
        let mut end = BatchEnd::More;
        let batch = self.params.batching.limit(TX_BATCH);
        self.tx.ring.read_ahead(mem, batch as u16);
        while self.tx.frames.len() < batch && self.iov.segments() < BATCH_SEGMENTS {
            let head = match self.tx.ring.pop_head(mem) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    end = BatchEnd::RingEmpty;
                    break;
                }
                Err(e) => {
                    self.ring_failed(false, e);
                    end = BatchEnd::RingError;
                    break;
                }
            };
            if !self.tx.ring.enabled
                || !self.params.link_up
                || self.backend.is_none()
                || self.backend_closed
            {
                // A disabled ring is drained and discarded; so is everything while the link is
                // down.
                self.tx.ring.push_used(mem, head, 0);
                self.counts.tx_dropped_link_down += 1;
                continue;
            }
            match self.gather_tx_chain(mem, head) {
                Ok(()) => {}
                Err(_) if !self.tx.frames.is_empty() => {
                    // Send the batch first and look at this chain again in the next one: a frame
                    // the backend refuses is rewound with everything after it, and a chain
                    // completed here would be completed twice.
                    self.tx.ring.rewind(1);
                    break;
                }
                Err(e) => {
                    self.tx.ring.push_used(mem, head, 0);
                    self.counts.chain_error(e);
                    let index = self.index;
                    self.log
                        .warn(|| format!("pair {index} tx: refused descriptor chain {head}: {e}"));
                }
            }
        }
        if self.tx.frames.is_empty() {
            return end;
        }
        if self.send_frames(mem) {
            end
        } else {
            BatchEnd::Blocked
        }
    }

    /// Walks one chain onto the batch, dropping the virtio-net header if the backend does not
    /// take it.
    fn gather_tx_chain(&mut self, mem: &GuestMemoryMmap, head: u16) -> Result<(), ChainError> {
        let hdr = self.params.hdr_len;
        let mark = self.iov.mark();
        let first = self.iov.segments();
        let len = self.iov.push_chain(
            mem,
            self.tx.ring.desc_table(mem),
            head,
            Direction::DeviceReads,
            self.params.indirect,
            hdr + MAX_FRAME_LEN,
        )?;
        if len <= hdr {
            self.iov.truncate_to(mark);
            return Err(ChainError::TooShort);
        }
        if !self.params.backend_vnet_hdr {
            self.iov.drop_front_at(first, hdr);
        }
        self.tx.frames.push(TxFrame {
            head,
            segments: first..self.iov.segments(),
            len: len - hdr,
        });
        Ok(())
    }

    /// Sends the gathered frames; false if the backend filled up (the frames it did not take
    /// are back on the avail ring).
    fn send_frames(&mut self, mem: &GuestMemoryMmap) -> bool {
        let mut next = 0;
        let total = self.tx.frames.len();
        while next < total {
            let Some(backend) = self.backend.as_mut() else {
                break;
            };
            let mut refs: [&[IoSlice<'_>]; TX_BATCH] = [&[]; TX_BATCH];
            for (slot, frame) in refs.iter_mut().zip(&self.tx.frames[next..]) {
                *slot = self.iov.segments_in(frame.segments.clone());
                // The guest's core just wrote these frames: start fetching them all now, so the
                // backend's copies do not wait for them one at a time.
                for part in slot.iter().take(2) {
                    vhost_user_netd_ring::prefetch::prefetch(part);
                }
            }
            let taken = backend
                .send_batch(&refs[..total - next])
                .unwrap_or(0)
                .min(total - next);
            self.complete_tx(mem, next..next + taken);
            next += taken;
            if next == total {
                break;
            }
            // Frame `next` was not taken: find out why by sending it alone.
            let frame = self.tx.frames[next].clone();
            let Some(backend) = self.backend.as_mut() else {
                break;
            };
            match backend.send(self.iov.segments_in(frame.segments.clone())) {
                Ok(_) => self.complete_tx(mem, next..next + 1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.tx.ring.rewind((total - next) as u16);
                    return false;
                }
                Err(e) => {
                    self.tx.ring.push_used(mem, frame.head, 0);
                    self.counts.tx_dropped_backend_error += 1;
                    let (index, len) = (self.index, frame.len);
                    self.log.warn(|| {
                        format!("pair {index} tx: backend refused a {len}-byte frame: {e}")
                    });
                }
            }
            next += 1;
        }
        true
    }

    /// Marks frames `range` of the batch as sent.
    fn complete_tx(&mut self, mem: &GuestMemoryMmap, range: Range<usize>) {
        for i in range {
            let (head, len, first) = {
                let f = &self.tx.frames[i];
                (f.head, f.len, f.segments.start)
            };
            if self.tx.learn_mac {
                self.tx.learn_mac = false;
                self.note_source_mac(first);
            }
            self.counts.tx_frames += 1;
            self.counts.tx_bytes += len as u64;
            self.counts.tx_max_frame = self.counts.tx_max_frame.max(len as u64);
            if self.capture.active() {
                self.capture_tx(first, len);
            }
            self.tx.ring.push_used(mem, head, 0);
        }
    }

    /// Gives a sent frame (segments from `first`, `len` bytes after any vnet header) to the
    /// port's captures.
    fn capture_tx(&self, first: usize, len: usize) {
        let offset = if self.params.backend_vnet_hdr {
            self.params.hdr_len
        } else {
            0
        };
        self.capture.each(|c| {
            c.record(Toward::Netdev, len, |buf| {
                let n = buf.len();
                if self.iov.read_from(first, offset, buf) {
                    n
                } else {
                    0
                }
            })
        });
    }

    /// Records the source MAC of the frame whose segments start at `first` (a unicast address),
    /// telling the watcher when it changed.
    fn note_source_mac(&mut self, first: usize) {
        let offset = if self.params.backend_vnet_hdr {
            self.params.hdr_len + 6
        } else {
            6
        };
        let mut mac = [0u8; 6];
        if !self.iov.read_from(first, offset, &mut mac) || mac[0] & 1 != 0 || mac == [0; 6] {
            return;
        }
        let mac = MacAddr(mac);
        if self.tx.guest_mac != Some(mac) {
            self.tx.guest_mac = Some(mac);
            if let Some(watch) = &self.tx.mac_watch {
                (watch.0)(mac);
            }
        }
    }
}
