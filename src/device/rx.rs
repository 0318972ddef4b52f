//! The rx path (host → guest): frames read from the backend straight into guest buffers.
//!
//! Buffers for a worst-case frame are gathered first (one chain, or several with MRG_RXBUF), the
//! backend reads directly into them, and the chains the frame did not need go back to the avail
//! ring. Only when the guest has too little buffer space posted does a frame go through a bounce
//! buffer, where it waits for more buffers instead of being lost.

use crate::capture::Toward;
use std::io::{self, IoSlice, IoSliceMut};

use vhost_user_netd_backends::MAX_FRAME_LEN;
use vm_memory::GuestMemoryMmap;

use super::features::HDR_LEN;
use super::queue_pair::QueuePair;
use crate::mac::MacAddr;
use vhost_user_netd_ring::guest_iov::{ChainError, Direction};
use vhost_user_netd_ring::vring::READ_AHEAD;

/// Frames handled per wake-up before the worker looks at its other events.
const RX_BATCH: usize = 256;
/// Used elements written before they are published mid-batch.
const PUBLISH_EVERY: u16 = 64;
/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

enum RxStep {
    Delivered,
    /// The backend has nothing more to read (or failed; logged).
    BackendEmpty,
    /// The guest has no (or not enough) buffers posted.
    NoBuffers,
    /// The ring is unusable.
    RingError,
}

impl QueuePair {
    /// Moves frames from the backend to the guest until one side runs dry or the batch ends.
    pub(super) fn process_rx(&mut self, mem: &GuestMemoryMmap) {
        if self.backend.is_none() || self.backend_closed {
            return;
        }
        if !self.params.link_up {
            self.drain_backend_link_down();
            return;
        }
        if !self.rx_deliverable() {
            return;
        }
        // The guest's kicks after each refill are wasted work on both sides while it has
        // buffers posted: they are asked for again only when it runs out.
        self.rx.ring.disable_notification(mem);
        let mut frames = 0;
        self.rx.ring.read_ahead(mem, READ_AHEAD as u16);
        while frames < RX_BATCH {
            match self.rx_one(mem, None) {
                RxStep::Delivered => frames += 1,
                RxStep::BackendEmpty | RxStep::RingError => break,
                RxStep::NoBuffers => {
                    self.publish(mem, true);
                    if self.hot {
                        // The worker polls the ring for new buffers: no kick needed.
                        self.rx.starved = true;
                        self.counts.rx_no_buffer += 1;
                        break;
                    }
                    match self.rx.ring.enable_notification(mem) {
                        Ok(true) => continue,
                        Ok(false) => {
                            self.rx.starved = true;
                            self.counts.rx_no_buffer += 1;
                        }
                        Err(e) => self.ring_failed(true, e),
                    }
                    break;
                }
            }
            if self.rx.ring.unpublished() >= PUBLISH_EVERY {
                self.publish(mem, true);
            }
        }
        self.publish(mem, true);
    }

    /// Writes frames another port of the daemon hands over (the hub) straight into the guest's
    /// buffers, if the pair can take them now: rx running, link up, and nothing older waiting
    /// in its backend or bounce buffer (so frames stay in order). Returns how many it took from
    /// the front; the caller queues the rest in the backend, whose wake-up then handles a guest
    /// out of buffers as usual.
    pub(super) fn deliver_frames(
        &mut self,
        mem: &GuestMemoryMmap,
        frames: &[&[IoSlice<'_>]],
    ) -> usize {
        if !self.rx_deliverable()
            || !self.params.link_up
            || self.params.backend_vnet_hdr
            || self.rx.bounce_len > 0
            || self.backend.as_ref().is_none_or(|b| b.pending_input())
        {
            return 0;
        }
        self.rx.ring.disable_notification(mem);
        self.rx
            .ring
            .read_ahead(mem, frames.len().min(READ_AHEAD) as u16);
        let mut taken = 0;
        for frame in frames {
            if !matches!(self.rx_one(mem, Some(frame)), RxStep::Delivered) {
                break;
            }
            taken += 1;
            if self.rx.ring.unpublished() >= PUBLISH_EVERY {
                self.publish(mem, true);
            }
        }
        if taken > 0 {
            // The guest had buffers after all (its kick may still be on its way).
            self.rx.starved = false;
        }
        self.publish(mem, true);
        taken
    }

    pub(super) fn ring_failed(&mut self, rx: bool, e: impl std::fmt::Display) {
        self.counts.ring_errors += 1;
        let (index, which) = (self.index, if rx { "rx" } else { "tx" });
        self.log
            .warn(|| format!("pair {index} {which}: ring unusable: {e}"));
    }

    fn chain_refused(&mut self, head: u16, e: ChainError, rx: bool) {
        self.counts.chain_error(e);
        let (index, which) = (self.index, if rx { "rx" } else { "tx" });
        self.log
            .warn(|| format!("pair {index} {which}: refused descriptor chain {head}: {e}"));
    }

    /// Gathers guest buffers for one frame into `self.iov`/`self.rx.heads`; returns the capacity.
    fn gather_rx_buffers(&mut self, mem: &GuestMemoryMmap, need: usize) -> Result<usize, RxStep> {
        let hdr = self.params.hdr_len;
        let mrg = self.params.mrg_rxbuf;
        // Without MRG_RXBUF each chain must hold a whole frame (virtio 5.1.6.3.1).
        let min_chain = if mrg { 1 } else { self.params.max_rx_frame };
        self.iov.clear();
        self.rx.heads.clear();
        let mut capacity = 0;
        loop {
            let head = match self.rx.ring.pop_head(mem) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    self.ring_failed(true, e);
                    self.rx.ring.rewind(self.rx.heads.len() as u16);
                    return Err(RxStep::RingError);
                }
            };
            let mark = self.iov.mark();
            let result = self
                .iov
                .push_chain(
                    mem,
                    self.rx.ring.desc_table(mem),
                    head,
                    Direction::DeviceWrites,
                    self.params.indirect,
                    u32::MAX as usize,
                )
                .and_then(|len| {
                    let first = self.rx.heads.is_empty();
                    if len < min_chain || (first && len < hdr) {
                        Err(ChainError::TooShort)
                    } else {
                        Ok(len)
                    }
                });
            match result {
                Ok(len) => {
                    self.rx.heads.push((head, len, mark.2));
                    capacity += len;
                }
                Err(e) if self.rx.heads.is_empty() => {
                    // Nothing gathered yet: give the bad chain back empty and go on.
                    self.iov.truncate_to(mark);
                    self.rx.ring.push_used(mem, head, 0);
                    self.chain_refused(head, e, true);
                    continue;
                }
                Err(_) => {
                    // Deliver into what we have; the bad chain is refused on the next pass.
                    self.iov.truncate_to(mark);
                    self.rx.ring.rewind(1);
                    break;
                }
            }
            if !mrg || capacity >= need {
                break;
            }
        }
        if self.rx.heads.is_empty() {
            Err(RxStep::NoBuffers)
        } else {
            Ok(capacity)
        }
    }

    /// Delivers one frame: the backend's next, or `handed` (a frame without a virtio-net header
    /// that another port of the daemon hands over; never through the bounce buffer).
    fn rx_one(&mut self, mem: &GuestMemoryMmap, handed: Option<&[IoSlice<'_>]>) -> RxStep {
        let hdr = self.params.hdr_len;
        let need = match handed {
            Some(frame) => hdr + frame.iter().map(|b| b.len()).sum::<usize>(),
            None if self.rx.bounce_len > 0 => self.rx.bounce_len,
            None => self.params.max_rx_frame,
        };
        let capacity = match self.gather_rx_buffers(mem, need) {
            Ok(c) => c,
            Err(step) => return step,
        };
        if capacity < need {
            if handed.is_some() {
                self.rx.ring.rewind(self.rx.heads.len() as u16);
                return RxStep::NoBuffers;
            }
            return self.rx_through_bounce(mem, capacity);
        }
        if let Some(frame) = handed {
            // The header, then the frame, straight into the buffers. The frame fills every
            // chain gathered for it (gathering stopped once they held it), so `num_buffers` is
            // known now.
            let mut header = [0u8; HDR_LEN];
            if self.params.mrg_rxbuf {
                header[NUM_BUFFERS_OFFSET..]
                    .copy_from_slice(&(self.rx.heads.len() as u16).to_le_bytes());
            }
            self.iov.write_at(0, &header[..hdr]);
            let mut at = hdr;
            for part in frame {
                self.iov.write_at(at, part);
                at += part.len();
            }
            return self.deliver_filled(mem, at, true);
        }
        let vnet = self.params.backend_vnet_hdr;
        if !vnet {
            self.iov.split_front(hdr, &mut self.rx.hdr_iov);
        }
        let Some(backend) = self.backend.as_mut() else {
            return RxStep::BackendEmpty;
        };
        let result = backend.recv(self.iov.as_io_slices_mut());
        let len = match result {
            Ok(0) if backend.is_closed() => {
                self.rx.ring.rewind(self.rx.heads.len() as u16);
                self.backend_closed = true;
                return RxStep::BackendEmpty;
            }
            Ok(n) => {
                if vnet {
                    n
                } else {
                    self.rx.hdr_iov.write_at(0, &[0u8; HDR_LEN][..hdr]);
                    n + hdr
                }
            }
            Err(e) => {
                self.rx.ring.rewind(self.rx.heads.len() as u16);
                if e.kind() != io::ErrorKind::WouldBlock {
                    let index = self.index;
                    self.log.warn(|| format!("pair {index}: backend recv: {e}"));
                }
                return RxStep::BackendEmpty;
            }
        };
        self.deliver_filled(mem, len, vnet)
    }

    /// Completes a frame of `len` bytes (header included) now in the gathered buffers, unless
    /// the guest's filter refuses it. `vnet`: the header is in the buffers too (from the backend,
    /// or written there), else it was split off into `hdr_iov`.
    fn deliver_filled(&mut self, mem: &GuestMemoryMmap, len: usize, vnet: bool) -> RxStep {
        let hdr = self.params.hdr_len;
        if len < hdr {
            // A backend frame shorter than its own header: nothing to deliver.
            self.rx.ring.rewind(self.rx.heads.len() as u16);
            return RxStep::Delivered;
        }
        if self.rx.filter.is_some() {
            let mut start = [0u8; 16];
            let offset = if vnet { hdr } else { 0 };
            let n = (len - hdr).min(start.len());
            if !self.iov.read_at(offset, &mut start[..n]) || !self.wanted(&start[..n]) {
                self.rx.ring.rewind(self.rx.heads.len() as u16);
                self.counts.rx_dropped_filtered += 1;
                return RxStep::Delivered;
            }
        }
        self.complete_rx(mem, len, !vnet);
        RxStep::Delivered
    }

    /// Whether the guest's receive filter lets a frame starting with `start` in. Its own MAC
    /// as seen in its frames always passes (a driver without `VIRTIO_NET_F_MAC` picked one we
    /// were never told).
    fn wanted(&self, start: &[u8]) -> bool {
        let Some(filter) = &self.rx.filter else {
            return true;
        };
        filter.accepts(start)
            || (self.tx.guest_mac.is_some() && MacAddr::destination_of(start) == self.tx.guest_mac)
    }

    /// Not enough guest buffer space for a worst-case frame: read the frame aside and deliver it
    /// once it fits.
    fn rx_through_bounce(&mut self, mem: &GuestMemoryMmap, capacity: usize) -> RxStep {
        let hdr = self.params.hdr_len;
        if self.rx.bounce_len == 0 {
            match self.recv_into_bounce() {
                Ok(n) => self.rx.bounce_len = n,
                Err(_) => {
                    self.rx.ring.rewind(self.rx.heads.len() as u16);
                    return RxStep::BackendEmpty;
                }
            }
            if self.rx.bounce_len < hdr {
                self.rx.bounce_len = 0;
                self.rx.ring.rewind(self.rx.heads.len() as u16);
                return RxStep::Delivered;
            }
        }
        let len = self.rx.bounce_len;
        if !self.wanted(&self.rx.bounce[hdr..len]) {
            self.rx.bounce_len = 0;
            self.rx.ring.rewind(self.rx.heads.len() as u16);
            self.counts.rx_dropped_filtered += 1;
            return RxStep::Delivered;
        }
        if capacity >= len {
            self.iov.write_at(0, &self.rx.bounce[..len]);
            self.rx.bounce_len = 0;
            self.complete_rx(mem, len, false);
            return RxStep::Delivered;
        }
        let all_posted = self.rx.heads.len() >= usize::from(self.rx.ring.size());
        self.rx.ring.rewind(self.rx.heads.len() as u16);
        if all_posted {
            // Even the whole ring cannot hold this frame: it can never be delivered.
            self.counts.rx_dropped_too_big += 1;
            self.rx.bounce_len = 0;
            let index = self.index;
            self.log.warn(|| {
                format!("pair {index}: rx frame of {len} bytes exceeds all guest buffers")
            });
            return RxStep::Delivered;
        }
        RxStep::NoBuffers
    }

    /// Reads one frame (with a virtio-net header in front) into the bounce buffer.
    fn recv_into_bounce(&mut self) -> io::Result<usize> {
        let hdr = self.params.hdr_len;
        let vnet = self.params.backend_vnet_hdr;
        if self.rx.bounce.is_empty() {
            self.rx.bounce = vec![0u8; hdr.max(12) + MAX_FRAME_LEN];
        }
        let backend = self
            .backend
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        if vnet {
            backend.recv(&mut [IoSliceMut::new(&mut self.rx.bounce[..])])
        } else {
            self.rx.bounce[..hdr].fill(0);
            let n = backend.recv(&mut [IoSliceMut::new(&mut self.rx.bounce[hdr..])])?;
            Ok(n + hdr)
        }
    }

    /// Drops frames from the backend while the link is down (counted).
    fn drain_backend_link_down(&mut self) {
        for _ in 0..RX_BATCH {
            match self.recv_into_bounce() {
                Ok(_) => self.counts.rx_dropped_link_down += 1,
                Err(_) => break,
            }
        }
        self.rx.bounce_len = 0;
    }

    /// Marks the chains a frame of `len` bytes (header included) filled as used, gives the rest
    /// back, and writes `num_buffers`.
    fn complete_rx(&mut self, mem: &GuestMemoryMmap, len: usize, header_split: bool) {
        let mut remaining = len;
        let mut used = 0u16;
        for &(head, cap, _) in &self.rx.heads {
            if remaining == 0 {
                break;
            }
            let take = cap.min(remaining);
            self.rx.ring.push_used(mem, head, take as u32);
            remaining -= take;
            used += 1;
        }
        if let Some(log) = self.logging() {
            // Every buffer of the chains the frame went into (whole buffers: over-marking only
            // makes the migration copy a page again).
            let end = self
                .rx
                .heads
                .get(usize::from(used))
                .map_or(self.iov.guest_ranges().len(), |h| h.2);
            for &(gpa, len) in &self.iov.guest_ranges()[..end] {
                log.mark(gpa, u64::from(len));
            }
        }
        self.rx.ring.rewind(self.rx.heads.len() as u16 - used);
        if self.params.mrg_rxbuf {
            let target = if header_split {
                &self.rx.hdr_iov
            } else {
                &self.iov
            };
            target.write_at(NUM_BUFFERS_OFFSET, &used.to_le_bytes());
        }
        let frame = (len - self.params.hdr_len) as u64;
        if self.capture.active() {
            let offset = if header_split { 0 } else { self.params.hdr_len };
            self.capture.each(|c| {
                c.record(Toward::Guest, frame as usize, |buf| {
                    let n = buf.len();
                    if self.iov.read_at(offset, buf) {
                        n
                    } else {
                        0
                    }
                })
            });
        }
        self.counts.rx_frames += 1;
        self.counts.rx_bytes += frame;
        self.counts.rx_max_frame = self.counts.rx_max_frame.max(frame);
    }
}
