//! Host pointers to a ring's descriptor table, avail ring and used ring, taken once and used for
//! every access while the guest memory they were taken from is in use.
//!
//! Going through `vm-memory` for each ring access costs a region lookup per access (about ten a
//! frame); a [`RingMap`] looks the three parts up once. It holds the memory it was taken from, so
//! its pointers stay mapped while it exists, and every access checks that the caller works in
//! that same memory (a new memory table means a new map; until then the ring takes the
//! `vm-memory` path). The parts were checked to lie in guest memory when the ring's addresses
//! were set and are bounds-checked here again on every access: a hostile index cannot reach
//! outside them.

#![allow(unsafe_code)] // guest memory (see the SAFETY notes)

use std::cell::Cell;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::Arc;

use crate::layout;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// One part of a ring: a host pointer and the bytes behind it.
#[derive(Debug, Clone, Copy)]
struct Part {
    ptr: *mut u8,
    len: usize,
}

impl Part {
    /// The part at `addr` if all `len` bytes lie in one region of `mem`.
    fn map(mem: &GuestMemoryMmap, addr: GuestAddress, len: usize) -> Option<Part> {
        let slice = mem.get_slice(addr, len).ok()?;
        (slice.len() == len).then(|| Part {
            ptr: slice.ptr_guard_mut().as_ptr(),
            len,
        })
    }

    /// The aligned `T`-sized field at `offset`, if it lies inside the part.
    fn field<T>(&self, offset: usize) -> Option<*mut T> {
        let end = offset.checked_add(std::mem::size_of::<T>())?;
        if end > self.len || (self.ptr as usize + offset) % std::mem::align_of::<T>() != 0 {
            return None;
        }
        // SAFETY: offset + size_of::<T>() <= len, so the pointer stays inside the part.
        Some(unsafe { self.ptr.add(offset) }.cast())
    }
}

/// The three parts of one ring in host memory, valid while `mem` is held.
#[derive(Debug)]
pub struct RingMap {
    mem: Arc<GuestMemoryMmap>,
    desc: Part,
    avail: Part,
    used: Part,
    /// The region the last buffer was in: its guest-physical start and end, and host address.
    last_region: Cell<(u64, u64, *mut u8)>,
}

// SAFETY: the pointers are into guest memory mappings that `mem` keeps alive; guest memory is
// shared with the driver anyway, and every access below is atomic or volatile.
unsafe impl Send for RingMap {}

impl RingMap {
    /// Maps a ring of `size` entries whose parts are at `desc`, `avail` and `used`; None if a part
    /// is not in one piece of `mem` (the ring then keeps going through `vm-memory`).
    pub fn new(
        mem: Arc<GuestMemoryMmap>,
        size: u16,
        desc: GuestAddress,
        avail: GuestAddress,
        used: GuestAddress,
    ) -> Option<RingMap> {
        // Both rings include their trailing event field (VIRTIO_F_EVENT_IDX).
        let n = u64::from(size);
        let desc = Part::map(&mem, desc, layout::desc_table_len(n) as usize)?;
        let avail = Part::map(&mem, avail, layout::avail_ring_len(n) as usize)?;
        let used = Part::map(&mem, used, layout::used_ring_len(n) as usize)?;
        Some(RingMap {
            mem,
            desc,
            avail,
            used,
            last_region: Cell::new((0, 0, std::ptr::null_mut())),
        })
    }

    /// Whether this map was taken from `mem` (the only memory its pointers may be used with).
    pub fn is_for(&self, mem: &GuestMemoryMmap) -> bool {
        std::ptr::eq(Arc::as_ptr(&self.mem), mem)
    }

    /// The host address of the guest buffer `[addr, addr + len)` if it lies in one region (the
    /// region of the last buffer is tried first: a driver's buffers are usually in one); None
    /// if it is outside guest memory or crosses regions (the caller then goes through
    /// `vm-memory`).
    pub fn buffer(&self, addr: u64, len: usize) -> Option<*mut u8> {
        let end = addr.checked_add(len as u64)?;
        let (start, region_end, host) = self.last_region.get();
        if addr >= start && end <= region_end && !host.is_null() {
            // SAFETY: [addr, end) lies inside the cached region, mapped at `host` while
            // `self.mem` is held, so the offset stays inside the mapping.
            return Some(unsafe { host.add((addr - start) as usize) });
        }
        let region = self.mem.find_region(GuestAddress(addr))?;
        let start = region.start_addr().raw_value();
        let region_end = start.checked_add(region.len())?;
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .ok()?;
        self.last_region.set((start, region_end, host));
        if end > region_end {
            return None;
        }
        // SAFETY: as above, for the region just found.
        Some(unsafe { host.add((addr - start) as usize) })
    }

    /// Loads the `u16` at `offset` of the avail ring (acquire); None outside it.
    pub fn avail_u16(&self, offset: usize) -> Option<u16> {
        let field = self.avail.field::<AtomicU16>(offset)?;
        // SAFETY: an aligned field inside the mapped avail ring (checked by `field`), alive while
        // `self.mem` is; the driver writes it concurrently, hence the atomic.
        Some(u16::from_le(unsafe { &*field }.load(Ordering::Acquire)))
    }

    /// Loads the `u16` at `offset` of the used ring (acquire); None outside it.
    pub fn used_u16(&self, offset: usize) -> Option<u16> {
        let field = self.used.field::<AtomicU16>(offset)?;
        // SAFETY: as in `avail_u16`, for the used ring.
        Some(u16::from_le(unsafe { &*field }.load(Ordering::Acquire)))
    }

    /// Stores a `u16` at `offset` of the used ring (release); false outside it.
    pub fn store_used_u16(&self, offset: usize, value: u16) -> bool {
        let Some(field) = self.used.field::<AtomicU16>(offset) else {
            return false;
        };
        // SAFETY: as in `avail_u16`, for the used ring.
        unsafe { &*field }.store(value.to_le(), Ordering::Release);
        true
    }

    /// Writes the used element `(id, len)` at `offset` of the used ring; false outside it. It
    /// becomes visible to the driver with the next `used.idx` store (release).
    pub fn write_used_elem(&self, offset: usize, id: u32, len: u32) -> bool {
        let (Some(id_field), Some(len_field)) = (
            self.used.field::<AtomicU32>(offset),
            offset
                .checked_add(4)
                .and_then(|o| self.used.field::<AtomicU32>(o)),
        ) else {
            return false;
        };
        // SAFETY: aligned fields inside the mapped used ring (checked by `field`), alive while
        // `self.mem` is.
        unsafe {
            (*id_field).store(id.to_le(), Ordering::Relaxed);
            (*len_field).store(len.to_le(), Ordering::Relaxed);
        }
        true
    }

    /// Starts loading descriptor `index` of the ring's own table (a hint; nothing outside it).
    pub fn prefetch_desc(&self, index: u16) {
        let at = layout::desc_offset(u64::from(index)) as usize;
        if let Some(field) = self.desc.field::<[u8; 16]>(at) {
            // SAFETY: the slice covers one descriptor inside the mapped table (checked by
            // `field`); it is only handed to a prefetch hint, never read through.
            let bytes = unsafe { std::slice::from_raw_parts(field.cast::<u8>(), 16) };
            crate::prefetch::prefetch(bytes);
        }
    }

    /// The 16 bytes of descriptor `index` of the ring's own table; None outside it.
    pub fn desc(&self, index: u16) -> Option<[u8; 16]> {
        let field = self
            .desc
            .field::<[u8; 16]>(layout::desc_offset(u64::from(index)) as usize)?;
        // SAFETY: inside the mapped descriptor table (checked by `field`), alive while `self.mem`
        // is. The driver may change it under us: read it once, by value, without a reference.
        Some(unsafe { std::ptr::read_volatile(field) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_ring::GuestRam;
    use vm_memory::Bytes;

    /// An 8-entry ring: table at 0x1000, avail at 0x2000, used at 0x3000.
    fn ring_at_0x1000(mem: &Arc<GuestMemoryMmap>) -> RingMap {
        RingMap::new(
            mem.clone(),
            8,
            GuestAddress(0x1000),
            GuestAddress(0x2000),
            GuestAddress(0x3000),
        )
        .unwrap()
    }

    #[test]
    fn reads_and_writes_land_where_vm_memory_puts_them() {
        let ram = GuestRam::new();
        let mem = Arc::new(ram.mem.clone());
        let map = ring_at_0x1000(&mem);
        assert!(map.is_for(&mem));
        assert!(!map.is_for(&ram.mem.clone()));
        mem.write_obj(0x1234u16.to_le(), GuestAddress(0x2002))
            .unwrap();
        assert_eq!(map.avail_u16(2), Some(0x1234));
        mem.write_slice(&[7u8; 16], GuestAddress(0x1000 + 16 * 3))
            .unwrap();
        assert_eq!(map.desc(3), Some([7u8; 16]));
        assert!(map.write_used_elem(4 + 8 * 2, 5, 99));
        let elem: [u8; 8] = mem.read_obj(GuestAddress(0x3000 + 4 + 16)).unwrap();
        assert_eq!(elem, [5, 0, 0, 0, 99, 0, 0, 0]);
        assert!(map.store_used_u16(2, 3));
        assert_eq!(mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap(), 3);
    }

    #[test]
    fn accesses_outside_a_part_are_refused() {
        let ram = GuestRam::new();
        let mem = Arc::new(ram.mem.clone());
        let map = ring_at_0x1000(&mem);
        assert_eq!(map.desc(8), None);
        assert_eq!(map.avail_u16(6 + 16), None);
        assert_eq!(map.avail_u16(1), None, "misaligned");
        assert!(!map.write_used_elem(6 + 8 * 8 - 4, 0, 0));
        assert!(!map.store_used_u16(usize::MAX - 1, 0));
    }

    #[test]
    fn buffers_translate_as_vm_memory_does_and_only_inside_memory() {
        let ram = GuestRam::new();
        let mem = Arc::new(ram.mem.clone());
        let map = ring_at_0x1000(&mem);
        for addr in [0x5000, 0x5100, 0] {
            assert_eq!(
                map.buffer(addr, 100),
                Some(mem.get_host_address(GuestAddress(addr)).unwrap())
            );
        }
        assert_eq!(map.buffer(GuestRam::SIZE - 4, 8), None, "runs past the end");
        assert_eq!(map.buffer(GuestRam::SIZE + 4, 8), None, "outside");
        assert_eq!(map.buffer(u64::MAX - 2, 8), None, "wraps");
    }

    #[test]
    fn a_ring_outside_guest_memory_is_not_mapped() {
        let ram = GuestRam::new();
        let mem = Arc::new(ram.mem.clone());
        let beyond = GuestAddress(GuestRam::SIZE - 8);
        assert!(RingMap::new(mem, 8, GuestAddress(0x1000), GuestAddress(0x2000), beyond).is_none());
    }
}
