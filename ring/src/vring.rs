//! One split virtqueue as the device sees it: the avail ring read, the used ring written in
//! batches (one `used.idx` store per batch, so a merged rx frame is never half-visible), and
//! notifications in both directions with or without `VIRTIO_F_EVENT_IDX`.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use vm_memory::{
    Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend,
    GuestMemoryMmap,
};
use vmm_sys_util::eventfd::EventFd;

use crate::guest_iov::DescTable;
use crate::layout;
use crate::ring_map::RingMap;

const VRING_USED_F_NO_NOTIFY: u16 = 1;
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// The guest memory a worker holds during a round of work.
pub type GuestMemoryGuard = <GuestMemoryAtomic<GuestMemoryMmap> as GuestAddressSpace>::T;

/// Avail entries [`Vring::read_ahead`] keeps at most.
pub const READ_AHEAD: usize = 32;

/// Largest queue a driver may ask for (virtio's limit for split rings).
pub const MAX_QUEUE_SIZE: u16 = 32_768;

/// Why a ring can no longer be used until the frontend sets it up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("ring is not configured")]
    NotConfigured,
    #[error("avail index moved more than the queue size")]
    AvailIndexOutOfRange,
    #[error("ring structure outside guest memory")]
    BadAddress,
}

/// A virtqueue's addresses, indexes and eventfds.
#[derive(Debug, Default)]
pub struct Vring {
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    addresses_set: bool,
    next_avail: Wrapping<u16>,
    /// `avail.idx` as last read: heads before it are taken without reading the index again (the
    /// driver's core writes that cache line; reading it once per batch, not per frame, keeps it
    /// from bouncing).
    avail_seen: Wrapping<u16>,
    /// Heads read ahead from the avail ring: `ahead[i]` is entry `ahead_from + i`.
    ahead: [u16; READ_AHEAD],
    ahead_from: Wrapping<u16>,
    ahead_len: u16,
    next_used: Wrapping<u16>,
    /// Used entries written since the last `publish_used`.
    unpublished: u16,
    /// `used.idx` when we last decided about an interrupt (EVENT_IDX bookkeeping).
    signalled_used: Wrapping<u16>,
    event_idx: bool,
    /// The frontend's kick eventfd (guest → device).
    pub kick: Option<EventFd>,
    /// The frontend's call eventfd (device → guest interrupt).
    pub call: Option<EventFd>,
    /// `VRING_USED_F_NO_NOTIFY` is set (without EVENT_IDX): no need to store it again.
    kicks_off: bool,
    /// Host pointers to the ring's parts in the memory it was last used with.
    map: Option<RingMap>,
    /// `SET_VRING_ENABLE` state.
    pub enabled: bool,
    /// Started by `SET_VRING_KICK`, stopped by `GET_VRING_BASE`.
    pub started: bool,
    /// A fatal ring error happened; nothing more is done until it is set up again.
    pub broken: bool,
}

impl Vring {
    /// Sets the queue size (power of two, at most [`MAX_QUEUE_SIZE`]).
    pub fn set_size(&mut self, size: u32) -> bool {
        if size == 0 || size > u32::from(MAX_QUEUE_SIZE) || !size.is_power_of_two() {
            return false;
        }
        self.size = size as u16;
        self.map = None;
        self.ahead_len = 0;
        true
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Sets the ring addresses (guest physical), checking alignment and that the three parts lie
    /// inside `mem`.
    pub fn set_addresses(
        &mut self,
        mem: &GuestMemoryMmap,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> Result<(), RingError> {
        if self.size == 0 {
            return Err(RingError::NotConfigured);
        }
        let n = u64::from(self.size);
        let parts = [
            (desc, layout::DESC_ALIGN, layout::desc_table_len(n)),
            (avail, layout::AVAIL_ALIGN, layout::avail_ring_len(n)),
            (used, layout::USED_ALIGN, layout::used_ring_len(n)),
        ];
        for (addr, align, len) in parts {
            if addr % align != 0 {
                return Err(RingError::BadAddress);
            }
            let end = addr.checked_add(len - 1).ok_or(RingError::BadAddress)?;
            if !mem.check_range(GuestAddress(addr), len as usize) || end < addr {
                return Err(RingError::BadAddress);
            }
        }
        self.desc = GuestAddress(desc);
        self.avail = GuestAddress(avail);
        self.used = GuestAddress(used);
        self.addresses_set = true;
        self.kicks_off = false;
        self.map = None;
        self.ahead_len = 0;
        self.broken = false;
        Ok(())
    }

    /// The used ring's guest-physical range, once configured.
    pub fn used_ring_range(&self) -> Option<(u64, u64)> {
        self.is_configured().then(|| {
            (
                self.used.raw_value(),
                layout::used_ring_len(u64::from(self.size)),
            )
        })
    }

    /// Whether addresses and size are set (memory may still change under it).
    pub fn is_configured(&self) -> bool {
        self.addresses_set && self.size != 0
    }

    /// Sets where processing resumes (`SET_VRING_BASE`).
    pub fn set_base(&mut self, base: u16) {
        self.next_avail = Wrapping(base);
        self.avail_seen = Wrapping(base);
        self.ahead_len = 0;
        self.next_used = Wrapping(base);
        self.signalled_used = Wrapping(base);
        self.unpublished = 0;
    }

    /// Where the next avail entry is read (`GET_VRING_BASE` reports this).
    pub fn next_avail(&self) -> u16 {
        self.next_avail.0
    }

    /// Turns `VIRTIO_F_EVENT_IDX` handling on or off.
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }

    /// Whether the device should take new work from this ring now.
    pub fn is_running(&self) -> bool {
        self.started && self.is_configured() && !self.broken
    }

    /// Takes host pointers to the ring's parts in `mem` unless it has them already (the
    /// worker calls this before each round of work; see [`RingMap`]).
    pub fn map_in(&mut self, mem: &GuestMemoryGuard) {
        if !self.is_configured() || self.map.as_ref().is_some_and(|m| m.is_for(mem)) {
            return;
        }
        self.map = RingMap::new(
            mem.clone().into_inner(),
            self.size,
            self.desc,
            self.avail,
            self.used,
        );
    }

    /// The ring map, if it was taken from `mem`.
    fn mapped(&self, mem: &GuestMemoryMmap) -> Option<&RingMap> {
        self.map.as_ref().filter(|m| m.is_for(mem))
    }

    /// The descriptor table, for walking chains in `mem`.
    pub fn desc_table(&self, mem: &GuestMemoryMmap) -> DescTable<'_> {
        DescTable::new(self.desc, self.size, self.mapped(mem))
    }

    fn load_avail(&self, mem: &GuestMemoryMmap, offset: u64) -> Result<u16, RingError> {
        if let Some(map) = self.mapped(mem) {
            return map.avail_u16(offset as usize).ok_or(RingError::BadAddress);
        }
        mem.load(self.avail.unchecked_add(offset), Ordering::Acquire)
            .map(u16::from_le)
            .map_err(|_| RingError::BadAddress)
    }

    fn store_used(&self, mem: &GuestMemoryMmap, offset: u64, value: u16) -> bool {
        if let Some(map) = self.mapped(mem) {
            return map.store_used_u16(offset as usize, value);
        }
        mem.store(
            value.to_le(),
            self.used.unchecked_add(offset),
            Ordering::Release,
        )
        .is_ok()
    }

    /// Whether the driver has made buffers available that we have not taken (false on a bad
    /// ring address: processing reports that).
    pub fn has_avail(&mut self, mem: &GuestMemoryMmap) -> bool {
        self.avail_seen != self.next_avail || self.refresh_avail(mem).is_ok_and(|n| n > 0)
    }

    /// Reads `avail.idx` again; returns how many heads are waiting.
    fn refresh_avail(&mut self, mem: &GuestMemoryMmap) -> Result<u16, RingError> {
        let avail_idx = self.avail_idx(mem)?;
        let pending = (avail_idx - self.next_avail).0;
        if pending > self.size {
            self.broken = true;
            return Err(RingError::AvailIndexOutOfRange);
        }
        self.avail_seen = avail_idx;
        Ok(pending)
    }

    fn avail_idx(&self, mem: &GuestMemoryMmap) -> Result<Wrapping<u16>, RingError> {
        self.load_avail(mem, 2).map(Wrapping)
    }

    /// Takes the next available chain's head index, if the driver made one available.
    pub fn pop_head(&mut self, mem: &GuestMemoryMmap) -> Result<Option<u16>, RingError> {
        if self.avail_seen == self.next_avail && self.refresh_avail(mem)? == 0 {
            return Ok(None);
        }
        let slot = u64::from(self.next_avail.0 % self.size);
        let ahead = (self.next_avail - self.ahead_from).0;
        let head = if ahead < self.ahead_len {
            self.ahead[usize::from(ahead)]
        } else {
            self.load_avail(mem, layout::avail_entry(slot))?
        };
        self.next_avail += Wrapping(1);
        Ok(Some(head))
    }

    /// Reads the heads of the next `max` (at most [`READ_AHEAD`]) available chains in one pass
    /// over the avail ring, keeps them for [`Self::pop_head`], and starts loading their
    /// descriptors, so walking the chains does not wait for each in turn. The driver's core has
    /// just written these lines and goes on writing the entries after them: read one by one
    /// between frames, each read would fetch the line again.
    pub fn read_ahead(&mut self, mem: &GuestMemoryMmap, max: u16) {
        // Whatever was read ahead before goes: a window left behind would match positions again
        // once the index wraps (65 536 heads later, e.g. after rounds without a map).
        self.ahead_len = 0;
        if self.avail_seen == self.next_avail && !self.refresh_avail(mem).is_ok_and(|n| n > 0) {
            return;
        }
        // Not `self.mapped()`: `self.ahead` is borrowed mutably below.
        let Some(map) = self.map.as_ref().filter(|m| m.is_for(mem)) else {
            return;
        };
        let pending = (self.avail_seen - self.next_avail)
            .0
            .min(max)
            .min(READ_AHEAD as u16);
        let mut read = 0;
        for (i, entry) in self.ahead.iter_mut().take(usize::from(pending)).enumerate() {
            let slot = (self.next_avail + Wrapping(i as u16)).0 % self.size;
            let Some(head) = map.avail_u16(layout::avail_entry(u64::from(slot)) as usize) else {
                break;
            };
            *entry = head;
            map.prefetch_desc(head);
            read += 1;
        }
        self.ahead_from = self.next_avail;
        self.ahead_len = read;
    }

    /// Gives back the last `count` heads taken, to be taken again later.
    pub fn rewind(&mut self, count: u16) {
        self.next_avail -= Wrapping(count);
    }

    /// Writes a used element; it becomes visible to the driver at [`Self::publish_used`].
    pub fn push_used(&mut self, mem: &GuestMemoryMmap, head: u16, len: u32) {
        let slot = u64::from((self.next_used + Wrapping(self.unpublished)).0 % self.size);
        self.unpublished = self.unpublished.wrapping_add(1);
        if let Some(map) = self.mapped(mem) {
            if !map.write_used_elem(layout::used_elem(slot) as usize, u32::from(head), len) {
                self.broken = true;
            }
            return;
        }
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        // The used ring was checked to lie in guest memory when its address was set; a failure
        // here means memory changed under us, which the next SET_VRING_ADDR repairs.
        if mem
            .write_slice(&elem, self.used.unchecked_add(layout::used_elem(slot)))
            .is_err()
        {
            self.broken = true;
        }
    }

    /// Number of used elements written but not yet published.
    pub fn unpublished(&self) -> u16 {
        self.unpublished
    }

    /// Makes all written used elements visible with one `used.idx` store.
    pub fn publish_used(&mut self, mem: &GuestMemoryMmap) {
        if self.unpublished == 0 {
            return;
        }
        self.next_used += Wrapping(self.unpublished);
        self.unpublished = 0;
        if !self.store_used(mem, 2, self.next_used.0) {
            self.broken = true;
        }
    }

    /// Whether the driver wants an interrupt for what was published since the last call.
    pub fn needs_interrupt(&mut self, mem: &GuestMemoryMmap) -> bool {
        // Order our used.idx store before reading the driver's suppression state.
        fence(Ordering::SeqCst);
        let new = self.next_used;
        let old = std::mem::replace(&mut self.signalled_used, new);
        if new == old {
            return false;
        }
        if self.event_idx {
            match self.load_avail(mem, layout::avail_entry(u64::from(self.size))) {
                Ok(event) => (new - Wrapping(event) - Wrapping(1)) < (new - old),
                Err(_) => true,
            }
        } else {
            match self.load_avail(mem, 0) {
                Ok(flags) => flags & VRING_AVAIL_F_NO_INTERRUPT == 0,
                Err(_) => true,
            }
        }
    }

    /// Publishes pending used elements and interrupts the guest if it asked for it. Returns
    /// whether an interrupt was sent.
    pub fn publish_and_notify(&mut self, mem: &GuestMemoryMmap) -> bool {
        self.publish_used(mem);
        if self.needs_interrupt(mem) {
            if let Some(call) = &self.call {
                // A full eventfd counter already means "interrupt pending"; nothing is lost.
                let _ = call.write(1);
                return true;
            }
        }
        false
    }

    /// Asks the driver to kick us when it adds buffers. Returns true if buffers arrived
    /// meanwhile (the caller should process them rather than wait).
    pub fn enable_notification(&mut self, mem: &GuestMemoryMmap) -> Result<bool, RingError> {
        self.kicks_off = false;
        if self.event_idx {
            if !self.store_used(
                mem,
                layout::used_elem(u64::from(self.size)),
                self.next_avail.0,
            ) {
                return Err(RingError::BadAddress);
            }
        } else if !self.store_used(mem, 0, 0) {
            return Err(RingError::BadAddress);
        }
        fence(Ordering::SeqCst);
        Ok(self.refresh_avail(mem)? > 0)
    }

    /// Tells the driver not to kick us (we are processing anyway).
    pub fn disable_notification(&mut self, mem: &GuestMemoryMmap) {
        if !self.event_idx && !self.kicks_off {
            self.kicks_off = self.store_used(mem, 0, VRING_USED_F_NO_NOTIFY);
        }
        // With EVENT_IDX the avail_event we wrote last time already stops kicks once passed.
    }

    /// Clears everything but the size limit (frontend disconnect, RESET_OWNER).
    pub fn reset(&mut self) {
        *self = Vring::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_ring::{DriverRing, GuestRam};

    fn ring(ram: &GuestRam, drv: &DriverRing, event_idx: bool) -> Vring {
        let mut v = Vring::default();
        assert!(v.set_size(u32::from(drv.size)));
        v.set_addresses(&ram.mem, drv.desc, drv.avail, drv.used)
            .unwrap();
        v.set_event_idx(event_idx);
        v.started = true;
        v.enabled = true;
        v
    }

    #[test]
    fn sizes_and_addresses_are_checked() {
        let ram = GuestRam::new();
        let mut v = Vring::default();
        assert!(!v.set_size(0));
        assert!(!v.set_size(3));
        assert!(!v.set_size(65_536));
        assert!(v.set_size(256));
        assert_eq!(
            v.set_addresses(&ram.mem, 0x1001, 0x2000, 0x3000),
            Err(RingError::BadAddress)
        );
        assert_eq!(
            v.set_addresses(&ram.mem, GuestRam::SIZE - 16, 0x2000, 0x3000),
            Err(RingError::BadAddress)
        );
        assert_eq!(
            v.set_addresses(&ram.mem, u64::MAX - 15, 0x2000, 0x3000),
            Err(RingError::BadAddress)
        );
        assert!(v.set_addresses(&ram.mem, 0x1000, 0x2000, 0x3000).is_ok());
    }

    #[test]
    fn used_elements_become_visible_together() {
        let ram = GuestRam::new();
        let mut drv = DriverRing::new(&ram, 8, 0x4000);
        let mut v = ring(&ram, &drv, false);
        drv.make_available(&ram, &[0, 1, 2]);
        assert_eq!(v.pop_head(&ram.mem).unwrap(), Some(0));
        assert_eq!(v.pop_head(&ram.mem).unwrap(), Some(1));
        v.push_used(&ram.mem, 0, 100);
        v.push_used(&ram.mem, 1, 50);
        assert_eq!(drv.used_idx(&ram), 0, "nothing visible before publish");
        v.publish_used(&ram.mem);
        assert_eq!(drv.used_idx(&ram), 2);
        assert_eq!(drv.used_elem(&ram, 1), (1, 50));
        v.rewind(1);
        assert_eq!(v.pop_head(&ram.mem).unwrap(), Some(1));
    }

    #[test]
    fn mapped_ring_reads_heads_once_and_agrees_with_the_unmapped_path() {
        let ram = GuestRam::new();
        let atomic = GuestMemoryAtomic::new(ram.mem.clone());
        let guard = atomic.memory();
        let mut drv = DriverRing::new(&ram, 8, 0x4000);
        let mut v = ring(&ram, &drv, false);
        v.map_in(&guard);
        assert!(v.mapped(&guard).is_some());
        assert!(v.mapped(&ram.mem).is_none(), "another memory object");
        drv.make_available(&ram, &[3, 1, 2]);
        v.read_ahead(&guard, 8);
        // The driver rewrites an entry it already made available: the head read ahead counts.
        ram.write(drv.avail + 4, &7u16.to_le_bytes());
        assert_eq!(v.pop_head(&guard).unwrap(), Some(3));
        assert_eq!(v.pop_head(&guard).unwrap(), Some(1));
        v.push_used(&guard, 3, 60);
        v.publish_used(&guard);
        assert_eq!((drv.used_idx(&ram), drv.used_elem(&ram, 0)), (1, (3, 60)));
        // Heads given back are taken again from the read-ahead; a new base drops it.
        v.rewind(2);
        assert_eq!(v.pop_head(&guard).unwrap(), Some(3));
        v.set_base(0);
        assert_eq!(v.pop_head(&ram.mem).unwrap(), Some(7), "unmapped path");
        assert_eq!(v.pop_head(&guard).unwrap(), Some(1));
        assert_eq!(v.pop_head(&guard).unwrap(), Some(2));
        assert_eq!(v.pop_head(&guard).unwrap(), None);
        // New addresses drop the map until the worker maps the ring again.
        v.set_addresses(&ram.mem, drv.desc, drv.avail, drv.used)
            .unwrap();
        assert!(v.mapped(&guard).is_none());
    }

    #[test]
    fn heads_read_ahead_are_not_reused_after_the_index_wraps() {
        let ram = GuestRam::new();
        let atomic = GuestMemoryAtomic::new(ram.mem.clone());
        let mut drv = DriverRing::new(&ram, 8, 0x4000);
        let mut v = ring(&ram, &drv, false);
        v.map_in(&atomic.memory());
        drv.make_available(&ram, &[1]);
        v.read_ahead(&atomic.memory(), 8);
        assert_eq!(v.pop_head(&atomic.memory()).unwrap(), Some(1));
        // 65 535 more heads through memory the ring is not mapped in (read-ahead does nothing
        // there), until the index is back where the window was.
        for i in 1..=u32::from(u16::MAX) {
            drv.make_available(&ram, &[(i % 8) as u16]);
            v.read_ahead(&ram.mem, 8);
            assert!(v.pop_head(&ram.mem).unwrap().is_some());
        }
        drv.make_available(&ram, &[5]);
        v.read_ahead(&ram.mem, 8);
        assert_eq!(
            v.pop_head(&ram.mem).unwrap(),
            Some(5),
            "not the stale head 1"
        );
    }

    #[test]
    fn a_new_memory_table_is_mapped_again_and_hostile_indexes_still_break_the_ring() {
        let ram = GuestRam::new();
        let first = GuestMemoryAtomic::new(ram.mem.clone());
        let mut drv = DriverRing::new(&ram, 8, 0x4000);
        let mut v = ring(&ram, &drv, false);
        v.map_in(&first.memory());
        // The frontend sends a new memory table: the old map is not used with it.
        let second = GuestMemoryAtomic::new(ram.mem.clone());
        let guard = second.memory();
        assert!(v.mapped(&guard).is_none());
        v.map_in(&guard);
        assert!(v.mapped(&guard).is_some());
        drv.make_available(&ram, &[1]);
        v.read_ahead(&guard, 8);
        assert_eq!(v.pop_head(&guard).unwrap(), Some(1));
        // A head beyond the queue is read ahead but refused by the chain walk, not prefetched
        // outside the table; an index jump breaks the ring on the mapped path too.
        drv.make_available(&ram, &[200]);
        v.read_ahead(&guard, 8);
        assert_eq!(v.pop_head(&guard).unwrap(), Some(200));
        drv.set_avail_idx(&ram, 2 + 9);
        assert_eq!(v.pop_head(&guard), Err(RingError::AvailIndexOutOfRange));
        assert!(!v.is_running());
    }

    #[test]
    fn avail_index_jump_breaks_the_ring() {
        let ram = GuestRam::new();
        let drv = DriverRing::new(&ram, 8, 0x4000);
        let mut v = ring(&ram, &drv, false);
        drv.set_avail_idx(&ram, 9);
        assert_eq!(v.pop_head(&ram.mem), Err(RingError::AvailIndexOutOfRange));
        assert!(!v.is_running());
    }

    #[test]
    fn interrupts_follow_event_idx_and_flags() {
        let ram = GuestRam::new();
        let mut drv = DriverRing::new(&ram, 8, 0x4000);
        let mut v = ring(&ram, &drv, true);
        drv.make_available(&ram, &[0, 1, 2, 3]);
        drv.set_used_event(&ram, 1); // interrupt when used idx passes 1
        v.pop_head(&ram.mem).unwrap();
        v.push_used(&ram.mem, 0, 0);
        v.publish_used(&ram.mem);
        assert!(
            !v.needs_interrupt(&ram.mem),
            "used idx 1 has not passed used_event 1"
        );
        v.pop_head(&ram.mem).unwrap();
        v.push_used(&ram.mem, 1, 0);
        v.publish_used(&ram.mem);
        assert!(v.needs_interrupt(&ram.mem));
        assert!(!v.needs_interrupt(&ram.mem), "nothing new published");

        let mut v = ring(&ram, &drv, false);
        v.set_base(0);
        drv.set_avail_flags(&ram, VRING_AVAIL_F_NO_INTERRUPT);
        v.pop_head(&ram.mem).unwrap();
        v.push_used(&ram.mem, 0, 0);
        v.publish_used(&ram.mem);
        assert!(!v.needs_interrupt(&ram.mem));
    }

    #[test]
    fn enable_notification_reports_racing_buffers() {
        let ram = GuestRam::new();
        let mut drv = DriverRing::new(&ram, 8, 0x4000);
        let mut v = ring(&ram, &drv, true);
        assert!(!v.enable_notification(&ram.mem).unwrap());
        assert_eq!(drv.avail_event(&ram), 0);
        drv.make_available(&ram, &[5]);
        assert!(v.enable_notification(&ram.mem).unwrap());
    }
}
