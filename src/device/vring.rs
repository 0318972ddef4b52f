//! One split virtqueue as the device sees it: the avail ring read, the used ring written in
//! batches (one `used.idx` store per batch, so a merged rx frame is never half-visible), and
//! notifications in both directions with or without `VIRTIO_F_EVENT_IDX`.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const VRING_USED_F_NO_NOTIFY: u16 = 1;
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

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
            (desc, 16, 16 * n),
            (avail, 2, 6 + 2 * n),
            (used, 4, 6 + 8 * n),
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
        self.broken = false;
        Ok(())
    }

    /// The used ring's guest-physical range, once configured.
    pub fn used_ring_range(&self) -> Option<(u64, u64)> {
        self.is_configured()
            .then(|| (self.used.raw_value(), 6 + 8 * u64::from(self.size)))
    }

    /// Whether addresses and size are set (memory may still change under it).
    pub fn is_configured(&self) -> bool {
        self.addresses_set && self.size != 0
    }

    /// Sets where processing resumes (`SET_VRING_BASE`).
    pub fn set_base(&mut self, base: u16) {
        self.next_avail = Wrapping(base);
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

    /// The descriptor table's address.
    pub fn desc_table(&self) -> GuestAddress {
        self.desc
    }

    /// Whether the driver has made buffers available that we have not taken (false on a bad
    /// ring address: processing reports that).
    pub fn has_avail(&self, mem: &GuestMemoryMmap) -> bool {
        self.avail_idx(mem).is_ok_and(|idx| idx != self.next_avail)
    }

    fn avail_idx(&self, mem: &GuestMemoryMmap) -> Result<Wrapping<u16>, RingError> {
        let idx: u16 = mem
            .load(self.avail.unchecked_add(2), Ordering::Acquire)
            .map_err(|_| RingError::BadAddress)?;
        Ok(Wrapping(u16::from_le(idx)))
    }

    /// Takes the next available chain's head index, if the driver made one available.
    pub fn pop_head(&mut self, mem: &GuestMemoryMmap) -> Result<Option<u16>, RingError> {
        let avail_idx = self.avail_idx(mem)?;
        let pending = (avail_idx - self.next_avail).0;
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.size {
            self.broken = true;
            return Err(RingError::AvailIndexOutOfRange);
        }
        let slot = u64::from(self.next_avail.0 % self.size);
        let head: u16 = mem
            .load(self.avail.unchecked_add(4 + 2 * slot), Ordering::Acquire)
            .map_err(|_| RingError::BadAddress)?;
        self.next_avail += Wrapping(1);
        Ok(Some(u16::from_le(head)))
    }

    /// Gives back the last `count` heads taken, to be taken again later.
    pub fn rewind(&mut self, count: u16) {
        self.next_avail -= Wrapping(count);
    }

    /// Writes a used element; it becomes visible to the driver at [`Self::publish_used`].
    pub fn push_used(&mut self, mem: &GuestMemoryMmap, head: u16, len: u32) {
        let slot = u64::from((self.next_used + Wrapping(self.unpublished)).0 % self.size);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        // The used ring was checked to lie in guest memory when its address was set; a failure
        // here means memory changed under us, which the next SET_VRING_ADDR repairs.
        if mem
            .write_slice(&elem, self.used.unchecked_add(4 + 8 * slot))
            .is_err()
        {
            self.broken = true;
        }
        self.unpublished = self.unpublished.wrapping_add(1);
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
        let idx = self.next_used.0.to_le();
        if mem
            .store(idx, self.used.unchecked_add(2), Ordering::Release)
            .is_err()
        {
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
            let at = self.avail.unchecked_add(4 + 2 * u64::from(self.size));
            match mem.load::<u16>(at, Ordering::Acquire) {
                Ok(event) => (new - Wrapping(u16::from_le(event)) - Wrapping(1)) < (new - old),
                Err(_) => true,
            }
        } else {
            match mem.load::<u16>(self.avail, Ordering::Acquire) {
                Ok(flags) => u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT == 0,
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
        if self.event_idx {
            let at = self.used.unchecked_add(4 + 8 * u64::from(self.size));
            mem.store(self.next_avail.0.to_le(), at, Ordering::Release)
                .map_err(|_| RingError::BadAddress)?;
        } else {
            mem.store(0u16, self.used, Ordering::Release)
                .map_err(|_| RingError::BadAddress)?;
        }
        fence(Ordering::SeqCst);
        Ok(self.avail_idx(mem)? != self.next_avail)
    }

    /// Tells the driver not to kick us (we are processing anyway).
    pub fn disable_notification(&mut self, mem: &GuestMemoryMmap) {
        if !self.event_idx {
            let _ = mem.store(VRING_USED_F_NO_NOTIFY.to_le(), self.used, Ordering::Release);
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
    use crate::device::test_ring::{DriverRing, GuestRam};

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
