//! One queue pair's datapath over an AF_XDP socket: rx copies each frame once, UMEM → guest
//! buffers, and gives the UMEM frames back to the fill ring in batches; tx copies guest buffers
//! into free UMEM frames, submits a batch and kicks the kernel once for it, and takes completed
//! frames back in batches. Nothing is allocated per frame: the free lists are sized once.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::xsk::{
    self, Xsk, FRAME_SIZE, MAX_FRAME_DESCS, MAX_TX_FRAME, RX_FRAMES, TX_FRAMES, XDP_PKT_CONTD,
};
use crate::{BackendQueue, Offloads};

/// Received descriptors taken from the rx ring at once.
const RX_BATCH: u32 = 64;
/// Recycled rx frames gathered before they go back to the fill ring together.
const REFILL_BATCH: usize = 32;

/// Frames the backend refused, shared by its queues (the kernel counts its own drops).
#[derive(Debug, Default)]
pub struct Drops {
    /// Guest frames larger than the socket carries (one UMEM frame, or 16 with multi-buffer).
    pub tx_too_big: AtomicU64,
    /// Received frames larger than the guest's buffers.
    pub rx_too_big: AtomicU64,
    /// Received descriptors pointing outside the UMEM (never from a sane kernel).
    pub rx_bad_desc: AtomicU64,
}

/// A socket with the bookkeeping of its frames; lives in its backend's slot while no device
/// uses the queue, so that rings and frame ownership survive a frontend reconnecting.
#[derive(Debug)]
pub struct QueueState {
    xsk: Xsk,
    /// Rx frames received and copied out, waiting to go back on the fill ring.
    rx_recycled: Vec<u64>,
    /// Tx frames owned by no ring.
    tx_free: Vec<u64>,
    /// Next peeked rx descriptor and how many peeked ones are left.
    rx_next: u32,
    rx_left: u32,
    /// With `map-path`: the map and the slot this socket occupies.
    map_entry: Option<(OwnedFd, u32)>,
    /// Bound with `XDP_USE_SG`: frames span descriptors.
    multi_buffer: bool,
}

impl QueueState {
    /// Takes over a fresh socket: every rx frame goes on the fill ring, every tx frame is free.
    pub fn new(xsk: Xsk, map_entry: Option<(OwnedFd, u32)>, multi_buffer: bool) -> Self {
        let mut rx_recycled = Vec::with_capacity(RX_FRAMES);
        rx_recycled.extend((0..RX_FRAMES as u64).rev().map(|i| i * FRAME_SIZE as u64));
        let mut tx_free = Vec::with_capacity(TX_FRAMES);
        tx_free.extend(
            (RX_FRAMES as u64..(RX_FRAMES + TX_FRAMES) as u64).map(|i| i * FRAME_SIZE as u64),
        );
        let mut state = QueueState {
            xsk,
            rx_recycled,
            tx_free,
            rx_next: 0,
            rx_left: 0,
            map_entry,
            multi_buffer,
        };
        state.refill();
        state
    }

    /// The socket's descriptor.
    pub fn fd(&self) -> RawFd {
        self.xsk.fd()
    }

    fn refill(&mut self) {
        if self.rx_recycled.is_empty() {
            return;
        }
        self.xsk.fill(&mut self.rx_recycled);
        if self.xsk.fill_needs_wakeup() {
            self.xsk.kick_rx();
        }
    }

    fn release_rx(&mut self, addr: u64) {
        self.xsk.rx_release(1);
        // Aligned mode: the descriptor points past the headroom; the fill ring takes the frame.
        self.rx_recycled.push(addr - addr % FRAME_SIZE as u64);
        if self.rx_recycled.len() >= REFILL_BATCH {
            self.refill();
        }
    }

    /// The next received descriptor, peeking another batch when the last one is used up.
    fn next_rx(&mut self) -> Option<xsk::Desc> {
        if self.rx_left == 0 {
            let (idx, n) = self.xsk.rx_peek(RX_BATCH);
            if n == 0 {
                return None;
            }
            (self.rx_next, self.rx_left) = (idx, n);
        }
        let desc = self.xsk.rx_desc(self.rx_next);
        self.rx_next = self.rx_next.wrapping_add(1);
        self.rx_left -= 1;
        Some(desc)
    }

    fn recv(&mut self, bufs: &mut [IoSliceMut<'_>], drops: &Drops) -> io::Result<usize> {
        loop {
            // One frame: one descriptor, or (multi-buffer) a run ending without XDP_PKT_CONTD.
            let mut parts = [(0u64, 0usize); MAX_FRAME_DESCS];
            let (mut count, mut total, mut complete, mut fits_parts) = (0, 0, false, true);
            while let Some(desc) = self.next_rx() {
                if count < MAX_FRAME_DESCS {
                    parts[count] = (desc.addr, desc.len as usize);
                    count += 1;
                } else {
                    // More pieces than a frame can have: its tail is let go below, unread.
                    fits_parts = false;
                    self.release_rx(desc.addr);
                }
                total += desc.len as usize;
                if desc.options & XDP_PKT_CONTD == 0 || !self.multi_buffer {
                    complete = true;
                    break;
                }
            }
            if count == 0 {
                self.refill();
                return Err(io::Error::from(io::ErrorKind::WouldBlock));
            }
            let capacity: usize = bufs.iter().map(|b| b.len()).sum();
            let copied = if !complete || !fits_parts {
                // The kernel publishes a frame's descriptors together: a cut one is corrupt.
                drops.rx_bad_desc.fetch_add(1, Ordering::Relaxed);
                None
            } else if total > capacity {
                drops.rx_too_big.fetch_add(1, Ordering::Relaxed);
                None
            } else {
                let mut slices: [&[u8]; MAX_FRAME_DESCS] = [&[]; MAX_FRAME_DESCS];
                let mut valid = true;
                for (slot, &(addr, len)) in slices.iter_mut().zip(&parts[..count]) {
                    match self.xsk.frame(addr, len) {
                        Some(f) => *slot = f,
                        None => valid = false,
                    }
                }
                if valid {
                    Some(crate::copy_parts(&slices[..count], bufs))
                } else {
                    drops.rx_bad_desc.fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
            for &(addr, _) in &parts[..count] {
                self.release_rx(addr);
            }
            if let Some(n) = copied {
                return Ok(n);
            }
        }
    }

    /// UMEM frames (and tx descriptors) a frame of `len` bytes takes; `None` if it cannot go.
    fn tx_descs(&self, len: usize) -> Option<usize> {
        let limit = if self.multi_buffer {
            MAX_TX_FRAME * MAX_FRAME_DESCS
        } else {
            MAX_TX_FRAME
        };
        (1..=limit)
            .contains(&len)
            .then(|| len.div_ceil(MAX_TX_FRAME))
    }

    fn send_batch(&mut self, frames: &[&[IoSlice<'_>]], drops: &Drops) -> io::Result<usize> {
        self.xsk.reap_completions(&mut self.tx_free);
        let frame_len = |frame: &[IoSlice<'_>]| frame.iter().map(|s| s.len()).sum::<usize>();
        // Reserve exactly the descriptors of the frames that will be written (dropped frames
        // take none), stopping at the first that no longer finds free UMEM frames.
        let mut needed = 0;
        for frame in frames {
            if let Some(d) = self.tx_descs(frame_len(frame)) {
                if needed + d > self.tx_free.len() {
                    break;
                }
                needed += d;
            }
        }
        let (idx, reserved) = self.xsk.tx_reserve(needed as u32);
        let (mut written, mut taken) = (0u32, 0);
        for frame in frames {
            let len = frame_len(frame);
            let Some(descs) = self.tx_descs(len) else {
                drops
                    .tx_too_big
                    .fetch_add(u64::from(len > 0), Ordering::Relaxed);
                taken += 1;
                continue;
            };
            if written as usize + descs > reserved as usize {
                break;
            }
            // The frame's bytes, cut into UMEM frames; every piece but the last says "more".
            let mut piece = 0;
            let mut at = 0;
            let mut addr = self.tx_free.pop().unwrap_or_default();
            for part in frame.iter() {
                let mut part: &[u8] = part;
                while !part.is_empty() {
                    if at == MAX_TX_FRAME {
                        self.xsk
                            .tx_set(idx.wrapping_add(written), addr, at as u32, XDP_PKT_CONTD);
                        written += 1;
                        piece += 1;
                        addr = self.tx_free.pop().unwrap_or_default();
                        at = 0;
                    }
                    let n = part.len().min(MAX_TX_FRAME - at);
                    if let Some(dst) = self.xsk.frame_mut(addr + at as u64, n) {
                        dst.copy_from_slice(&part[..n]);
                    }
                    part = &part[n..];
                    at += n;
                }
            }
            debug_assert_eq!(piece + 1, descs);
            self.xsk
                .tx_set(idx.wrapping_add(written), addr, at as u32, 0);
            written += 1;
            taken += 1;
        }
        if written > 0 {
            self.xsk.tx_submit(written);
            // The frames are in the ring, taken: a kick that stops early is repeated by
            // `flush`, which the device calls once the guest's ring is drained.
            let _ = self.kick();
        }
        if taken == 0 && !frames.is_empty() {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        Ok(taken)
    }

    /// Kicks the kernel if it waits for one; `WouldBlock` if frames are left for a later kick.
    fn kick(&mut self) -> io::Result<()> {
        if !self.xsk.tx_needs_wakeup() {
            return Ok(());
        }
        match self.xsk.kick_tx() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // The kernel stopped at its per-call budget: one more call for the rest.
                self.xsk.kick_tx()
            }
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.xsk.reap_completions(&mut self.tx_free);
        if !self.xsk.tx_pending() {
            return Ok(());
        }
        self.kick()?;
        if self.xsk.tx_pending() && self.xsk.tx_needs_wakeup() {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        Ok(())
    }
}

impl Drop for QueueState {
    fn drop(&mut self) {
        if let Some((map, index)) = &self.map_entry {
            if let Err(e) = xsk::remove_from_map(map, *index) {
                log::warn!("af-xdp: could not take socket {index} out of its XSK map: {e}");
            }
        }
    }
}

/// Where a queue's state lives while no device holds it.
pub type Slot = Arc<Mutex<SlotState>>;

/// A slot's content: the state (unless lent to a device) and whether the netdev is gone.
#[derive(Debug, Default)]
pub struct SlotState {
    state: Option<QueueState>,
    closed: bool,
}

impl SlotState {
    /// A slot holding `state`.
    pub fn holding(state: QueueState) -> Slot {
        Arc::new(Mutex::new(SlotState {
            state: Some(state),
            closed: false,
        }))
    }

    /// The netdev goes away: the socket closes now, or when the device gives it back.
    pub fn close(slot: &Slot) {
        let state = {
            let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
            s.closed = true;
            s.state.take()
        };
        drop(state);
    }
}

/// A device's hold on one queue pair; gives the state back to its slot when dropped.
#[derive(Debug)]
pub struct AfXdpQueue {
    state: Option<QueueState>,
    slot: Slot,
    drops: Arc<Drops>,
}

impl AfXdpQueue {
    /// Takes the state out of `slot`; `None` if another device holds it or the netdev is gone.
    pub fn take(slot: &Slot, drops: Arc<Drops>) -> Option<Self> {
        let state = slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .state
            .take()?;
        Some(AfXdpQueue {
            state: Some(state),
            slot: slot.clone(),
            drops,
        })
    }

    /// The socket state and the drop counters, borrowed together (no per-frame refcounting).
    fn parts(&mut self) -> io::Result<(&mut QueueState, &Drops)> {
        let state = self
            .state
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        Ok((state, &self.drops))
    }
}

impl Drop for AfXdpQueue {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            if !slot.closed {
                slot.state = Some(state);
            }
        }
    }
}

impl BackendQueue for AfXdpQueue {
    fn fd(&self) -> RawFd {
        self.state.as_ref().map_or(-1, QueueState::fd)
    }

    fn recv(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        let (state, drops) = self.parts()?;
        state.recv(bufs, drops)
    }

    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        crate::send_one(self, bufs)
    }

    fn send_batch(&mut self, frames: &[&[IoSlice<'_>]]) -> io::Result<usize> {
        let (state, drops) = self.parts()?;
        state.send_batch(frames, drops)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.parts()?.0.flush()
    }

    fn pending_input(&self) -> bool {
        self.state.as_ref().is_some_and(|s| s.rx_left > 0)
    }

    fn set_offloads(&mut self, _offloads: Offloads) -> io::Result<()> {
        Ok(())
    }
}
