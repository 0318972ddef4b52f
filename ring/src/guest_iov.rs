//! The one place where a descriptor chain becomes host iovecs.
//!
//! Every descriptor the guest hands us is hostile until proven otherwise: the walk is bounded by
//! the queue size (loops), indirect tables are checked for size and nesting, every buffer must lie
//! inside guest memory and point the right way, and the total length is capped. The unsafe
//! access to buffers lives here; the rings' own is in `ring_map`.

#![allow(unsafe_code)] // guest memory (see the SAFETY notes)

use std::io::{IoSlice, IoSliceMut};

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::layout;

use crate::ring_map::RingMap;

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_DESC_F_INDIRECT: u16 = 4;

/// At most this many host segments per batch handed to one `readv`/`writev` (the kernel's
/// `IOV_MAX`).
pub const MAX_SEGMENTS: usize = 1024;

/// Which way the buffers of a chain must point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Device reads (tx): every descriptor must be device-readable.
    DeviceReads,
    /// Device writes (rx): every descriptor must be device-writable.
    DeviceWrites,
    /// A request and its reply (the control queue): device-readable descriptors, then
    /// device-writable ones. [`GuestIov::readable_len`] tells where the reply starts.
    DeviceReadsThenWrites,
}

/// Why a descriptor chain was refused. Each kind has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("head index out of range")]
    HeadOutOfRange,
    #[error("next index out of range")]
    NextOutOfRange,
    #[error("chain longer than the queue (loop?)")]
    TooManyDescriptors,
    #[error("descriptor table or buffer outside guest memory")]
    BadAddress,
    #[error("buffer points the wrong way")]
    WrongDirection,
    #[error("indirect descriptor not negotiated, nested, or of bad size")]
    BadIndirect,
    #[error("chain carries more bytes than a frame may have")]
    TooLong,
    #[error("chain needs more than {MAX_SEGMENTS} host segments")]
    TooManySegments,
    #[error("chain is shorter than the virtio-net header")]
    TooShort,
}

/// One descriptor as the guest wrote it.
#[derive(Debug, Clone, Copy)]
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// A ring's descriptor table: where it is, how many entries it has, and, when the ring is mapped
/// in the memory being walked, its host pointer.
#[derive(Debug, Clone, Copy)]
pub struct DescTable<'a> {
    addr: GuestAddress,
    size: u16,
    host: Option<&'a RingMap>,
}

impl<'a> DescTable<'a> {
    /// The table of a ring; `host` must have been taken from the memory the chains are walked in.
    pub fn new(addr: GuestAddress, size: u16, host: Option<&'a RingMap>) -> Self {
        DescTable { addr, size, host }
    }

    /// A table read through `vm-memory` only.
    pub fn in_guest(addr: GuestAddress, size: u16) -> Self {
        DescTable::new(addr, size, None)
    }
}

/// Reads descriptor `index` of the table at `table`, through the ring map if given (the ring's own
/// table) or `vm-memory` (an indirect table).
fn read_desc(
    mem: &GuestMemoryMmap,
    table: GuestAddress,
    host: Option<&RingMap>,
    index: u16,
) -> Result<RawDesc, ChainError> {
    let raw: [u8; 16] = match host {
        Some(map) => map.desc(index).ok_or(ChainError::BadAddress)?,
        None => {
            let at = table
                .checked_add(u64::from(index) * layout::DESC_SIZE)
                .ok_or(ChainError::BadAddress)?;
            mem.read_obj(at).map_err(|_| ChainError::BadAddress)?
        }
    };
    Ok(RawDesc {
        addr: u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default()),
        len: u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default()),
        flags: u16::from_le_bytes([raw[12], raw[13]]),
        next: u16::from_le_bytes([raw[14], raw[15]]),
    })
}

/// Host iovecs over guest buffers, reused from batch to batch (no allocation per frame).
#[derive(Debug)]
pub struct GuestIov {
    iovecs: Vec<libc::iovec>,
    bytes: usize,
    /// The guest-physical ranges behind the iovecs, one per descriptor (for dirty logging).
    ranges: Vec<(u64, u32)>,
    /// Bytes before the first device-writable descriptor (`DeviceReadsThenWrites`).
    readable: usize,
}

// SAFETY: the iovecs are plain addresses into guest memory mappings; they are only dereferenced
// by the kernel in readv/writev or by the accessors below while the caller holds the memory guard.
unsafe impl Send for GuestIov {}

impl Default for GuestIov {
    fn default() -> Self {
        GuestIov {
            iovecs: Vec::with_capacity(64),
            bytes: 0,
            ranges: Vec::with_capacity(64),
            readable: 0,
        }
    }
}

impl GuestIov {
    /// Forgets all segments, keeping the allocation.
    pub fn clear(&mut self) {
        self.iovecs.clear();
        self.ranges.clear();
        self.bytes = 0;
        self.readable = 0;
    }

    /// For a single `DeviceReadsThenWrites` chain: the request's length (where the writable
    /// part starts).
    pub fn readable_len(&self) -> usize {
        self.readable
    }

    /// Guest-physical ranges of the descriptors walked so far, in order.
    pub fn guest_ranges(&self) -> &[(u64, u32)] {
        &self.ranges
    }

    /// Total bytes covered.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Whether no bytes are covered.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Number of host segments.
    pub fn segments(&self) -> usize {
        self.iovecs.len()
    }

    /// The segments for `writev`.
    pub fn as_io_slices(&self) -> &[IoSlice<'_>] {
        // SAFETY: IoSlice is guaranteed ABI-compatible with iovec on Unix; the pointed-to guest
        // memory stays mapped while the caller holds the memory guard the chain was walked with.
        unsafe { std::slice::from_raw_parts(self.iovecs.as_ptr().cast(), self.iovecs.len()) }
    }

    /// The segments for `readv`.
    pub fn as_io_slices_mut(&mut self) -> &mut [IoSliceMut<'_>] {
        // SAFETY: as in `as_io_slices`; the chain was checked to be device-writable.
        unsafe {
            std::slice::from_raw_parts_mut(self.iovecs.as_mut_ptr().cast(), self.iovecs.len())
        }
    }

    /// Appends the buffers of the chain starting at `head`; returns the chain's byte length.
    /// On error nothing is appended.
    #[allow(clippy::too_many_arguments)]
    pub fn push_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        table: DescTable<'_>,
        head: u16,
        direction: Direction,
        indirect_allowed: bool,
        max_bytes: usize,
    ) -> Result<usize, ChainError> {
        let mark = self.mark();
        let result = self.walk(mem, table, head, direction, indirect_allowed, max_bytes);
        if result.is_err() {
            self.truncate_to(mark);
        }
        result.map(|()| self.bytes - mark.1)
    }

    #[allow(clippy::too_many_arguments)]
    fn walk(
        &mut self,
        mem: &GuestMemoryMmap,
        ring_table: DescTable<'_>,
        head: u16,
        direction: Direction,
        indirect_allowed: bool,
        max_bytes: usize,
    ) -> Result<(), ChainError> {
        let queue_size = ring_table.size;
        if head >= queue_size {
            return Err(ChainError::HeadOutOfRange);
        }
        let mut table = ring_table.addr;
        let mut host = ring_table.host;
        let mut table_size = queue_size;
        let mut index = head;
        let mut indirect = false;
        let mut budget = u32::from(queue_size);
        let start_bytes = self.bytes;
        loop {
            if budget == 0 {
                return Err(ChainError::TooManyDescriptors);
            }
            budget -= 1;
            let desc = read_desc(mem, table, host, index)?;
            if desc.flags & VRING_DESC_F_INDIRECT != 0 {
                // An indirect descriptor must be the only one in its chain and may not nest.
                if !indirect_allowed || indirect || desc.flags & VRING_DESC_F_NEXT != 0 {
                    return Err(ChainError::BadIndirect);
                }
                let len = u64::from(desc.len);
                if len == 0
                    || len % layout::DESC_SIZE != 0
                    || len / layout::DESC_SIZE > u64::from(u16::MAX)
                {
                    return Err(ChainError::BadIndirect);
                }
                table = GuestAddress(desc.addr);
                host = None;
                // The whole table must be in guest memory.
                GuestMemoryBackend::get_slices(mem, table, len as usize)
                    .try_for_each(|s| s.map(|_| ()))
                    .map_err(|_| ChainError::BadAddress)?;
                table_size = (len / layout::DESC_SIZE) as u16;
                budget = u32::from(table_size);
                index = 0;
                indirect = true;
                continue;
            }
            let writable = desc.flags & VRING_DESC_F_WRITE != 0;
            let allowed = match direction {
                Direction::DeviceReads => !writable,
                Direction::DeviceWrites => writable,
                // Readable after writable is out of order.
                Direction::DeviceReadsThenWrites => writable || self.bytes == self.readable,
            };
            if !allowed {
                return Err(ChainError::WrongDirection);
            }
            let total = (self.bytes - start_bytes)
                .checked_add(desc.len as usize)
                .ok_or(ChainError::TooLong)?;
            if total > max_bytes {
                return Err(ChainError::TooLong);
            }
            self.push_buffer(mem, ring_table.host, desc.addr, desc.len as usize)?;
            if !writable {
                self.readable = self.bytes;
            }
            if desc.len > 0 {
                self.ranges.push((desc.addr, desc.len));
            }
            if desc.flags & VRING_DESC_F_NEXT == 0 {
                return Ok(());
            }
            if desc.next >= table_size {
                return Err(ChainError::NextOutOfRange);
            }
            index = desc.next;
        }
    }

    /// Appends the host segments of guest buffer `[addr, addr + len)`, through the ring's map
    /// when it has one (one segment if the buffer lies in one region) or `vm-memory`.
    fn push_buffer(
        &mut self,
        mem: &GuestMemoryMmap,
        ring: Option<&RingMap>,
        addr: u64,
        len: usize,
    ) -> Result<(), ChainError> {
        if len == 0 {
            return Ok(());
        }
        if let Some(host) = ring.and_then(|r| r.buffer(addr, len)) {
            if self.iovecs.len() >= MAX_SEGMENTS {
                return Err(ChainError::TooManySegments);
            }
            self.iovecs.push(libc::iovec {
                iov_base: host.cast(),
                iov_len: len,
            });
            self.bytes += len;
            return Ok(());
        }
        for slice in GuestMemoryBackend::get_slices(mem, GuestAddress(addr), len) {
            let slice = slice.map_err(|_| ChainError::BadAddress)?;
            if self.iovecs.len() >= MAX_SEGMENTS {
                return Err(ChainError::TooManySegments);
            }
            let guard = slice.ptr_guard_mut();
            self.iovecs.push(libc::iovec {
                iov_base: guard.as_ptr().cast(),
                iov_len: slice.len(),
            });
            self.bytes += slice.len();
        }
        Ok(())
    }

    /// Copies `data` into the covered bytes starting at `offset` (which must fit).
    pub fn write_at(&self, mut offset: usize, mut data: &[u8]) -> bool {
        if offset
            .checked_add(data.len())
            .is_none_or(|end| end > self.bytes)
        {
            return false;
        }
        for iov in &self.iovecs {
            if data.is_empty() {
                break;
            }
            if offset >= iov.iov_len {
                offset -= iov.iov_len;
                continue;
            }
            let n = (iov.iov_len - offset).min(data.len());
            // SAFETY: offset + n <= iov_len, so the destination lies inside a guest buffer that
            // was validated as device-writable and stays mapped while the memory guard is held.
            // Guest memory is shared, so copy without creating a Rust reference to it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    iov.iov_base.cast::<u8>().add(offset),
                    n,
                );
            }
            data = &data[n..];
            offset = 0;
        }
        true
    }

    /// Copies covered bytes starting at `offset` into `out` (which must fit).
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> bool {
        offset
            .checked_add(out.len())
            .is_some_and(|end| end <= self.bytes)
            && self.read_from(0, offset, out)
    }

    /// A position to go back to with [`Self::truncate_to`].
    pub fn mark(&self) -> (usize, usize, usize) {
        (self.iovecs.len(), self.bytes, self.ranges.len())
    }

    /// Forgets everything appended after `mark`.
    pub fn truncate_to(&mut self, mark: (usize, usize, usize)) {
        self.iovecs.truncate(mark.0);
        self.bytes = mark.1;
        self.ranges.truncate(mark.2);
    }

    /// The segments `range` (one frame of a batch) for `writev`.
    pub fn segments_in(&self, range: std::ops::Range<usize>) -> &[IoSlice<'_>] {
        &self.as_io_slices()[range]
    }

    /// Drops `n` bytes from the front of the segments starting at `first` (a frame's header the
    /// backend does not take); returns how many segments disappeared entirely.
    pub fn drop_front_at(&mut self, first: usize, mut n: usize) -> usize {
        let mut whole = 0;
        for iov in &mut self.iovecs[first..] {
            if n == 0 {
                break;
            }
            if n >= iov.iov_len {
                n -= iov.iov_len;
                self.bytes -= iov.iov_len;
                whole += 1;
            } else {
                // SAFETY: n < iov_len, so the advanced pointer stays inside the same buffer.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n) }.cast();
                iov.iov_len -= n;
                self.bytes -= n;
                n = 0;
            }
        }
        self.iovecs.drain(first..first + whole);
        whole
    }

    /// Copies bytes of the segments from `first` on, starting `offset` bytes in, into `out`.
    pub fn read_from(&self, first: usize, offset: usize, out: &mut [u8]) -> bool {
        let mut skip = offset;
        let mut done = 0;
        for iov in &self.iovecs[first.min(self.iovecs.len())..] {
            if done == out.len() {
                break;
            }
            if skip >= iov.iov_len {
                skip -= iov.iov_len;
                continue;
            }
            let n = (iov.iov_len - skip).min(out.len() - done);
            // SAFETY: skip + n <= iov_len, inside a validated guest buffer that stays mapped
            // while the memory guard is held; the destination is our own buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    iov.iov_base.cast::<u8>().add(skip),
                    out[done..].as_mut_ptr(),
                    n,
                );
            }
            done += n;
            skip = 0;
        }
        done == out.len()
    }

    /// Moves the first `n` bytes into `front` (cleared first), e.g. a virtio-net header that the
    /// backend does not take, leaving the rest here.
    pub fn split_front(&mut self, mut n: usize, front: &mut GuestIov) {
        front.clear();
        n = n.min(self.bytes);
        self.bytes -= n;
        front.bytes = n;
        let mut whole = 0;
        for iov in &mut self.iovecs {
            if n == 0 {
                break;
            }
            if n >= iov.iov_len {
                n -= iov.iov_len;
                front.iovecs.push(*iov);
                whole += 1;
            } else {
                front.iovecs.push(libc::iovec {
                    iov_base: iov.iov_base,
                    iov_len: n,
                });
                // SAFETY: n < iov_len, so the advanced pointer stays inside the same buffer.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n) }.cast();
                iov.iov_len -= n;
                n = 0;
            }
        }
        self.iovecs.drain(..whole);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_ring::{GuestRam, RawDescriptor};

    const TABLE: u64 = 0x1000;

    fn walk(
        ram: &GuestRam,
        head: u16,
        dir: Direction,
        indirect: bool,
    ) -> Result<usize, ChainError> {
        let mut iov = GuestIov::default();
        iov.push_chain(
            &ram.mem,
            DescTable::in_guest(GuestAddress(TABLE), 8),
            head,
            dir,
            indirect,
            65_562,
        )
    }

    #[test]
    fn accepts_a_plain_writable_chain_and_copies_through_it() {
        let ram = GuestRam::new();
        ram.write_descs(
            TABLE,
            &[
                RawDescriptor::new(0x10000, 6, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 1),
                RawDescriptor::new(0x20000, 100, VRING_DESC_F_WRITE, 0),
            ],
        );
        let mut iov = GuestIov::default();
        let n = iov
            .push_chain(
                &ram.mem,
                DescTable::in_guest(GuestAddress(TABLE), 8),
                0,
                Direction::DeviceWrites,
                false,
                1000,
            )
            .unwrap();
        assert_eq!(n, 106);
        assert!(iov.write_at(4, b"abcd"));
        let mut out = [0u8; 4];
        assert!(iov.read_at(4, &mut out));
        assert_eq!(&out, b"abcd");
        assert!(!iov.write_at(104, b"abc"));
        let mut front = GuestIov::default();
        iov.split_front(7, &mut front);
        assert_eq!((iov.len(), iov.segments()), (99, 1));
        assert_eq!((front.len(), front.segments()), (7, 2));
        let mut out = [0u8; 3];
        assert!(front.read_at(4, &mut out));
        assert_eq!(&out, b"abc");
        assert!(iov.read_at(0, &mut out[..1]));
        assert_eq!(out[0], b'd');
    }

    #[test]
    fn refuses_hostile_chains() {
        let ram = GuestRam::new();
        // 0: loops onto itself.
        ram.write_descs(
            TABLE,
            &[RawDescriptor::new(0x10000, 10, VRING_DESC_F_NEXT, 0)],
        );
        assert_eq!(
            walk(&ram, 0, Direction::DeviceReads, false),
            Err(ChainError::TooManyDescriptors)
        );
        // head out of range
        assert_eq!(
            walk(&ram, 8, Direction::DeviceReads, false),
            Err(ChainError::HeadOutOfRange)
        );
        // next out of range
        ram.write_descs(
            TABLE,
            &[RawDescriptor::new(0x10000, 10, VRING_DESC_F_NEXT, 9)],
        );
        assert_eq!(
            walk(&ram, 0, Direction::DeviceReads, false),
            Err(ChainError::NextOutOfRange)
        );
        // outside guest memory
        ram.write_descs(TABLE, &[RawDescriptor::new(GuestRam::SIZE - 4, 10, 0, 0)]);
        assert_eq!(
            walk(&ram, 0, Direction::DeviceReads, false),
            Err(ChainError::BadAddress)
        );
        ram.write_descs(TABLE, &[RawDescriptor::new(u64::MAX - 2, 10, 0, 0)]);
        assert_eq!(
            walk(&ram, 0, Direction::DeviceReads, false),
            Err(ChainError::BadAddress)
        );
        // wrong direction both ways
        ram.write_descs(
            TABLE,
            &[RawDescriptor::new(0x10000, 10, VRING_DESC_F_WRITE, 0)],
        );
        assert_eq!(
            walk(&ram, 0, Direction::DeviceReads, false),
            Err(ChainError::WrongDirection)
        );
        ram.write_descs(TABLE, &[RawDescriptor::new(0x10000, 10, 0, 0)]);
        assert_eq!(
            walk(&ram, 0, Direction::DeviceWrites, false),
            Err(ChainError::WrongDirection)
        );
        // too long in total
        ram.write_descs(
            TABLE,
            &[
                RawDescriptor::new(0x10000, 65_000, VRING_DESC_F_NEXT, 1),
                RawDescriptor::new(0x30000, 65_000, 0, 0),
            ],
        );
        assert_eq!(
            walk(&ram, 0, Direction::DeviceReads, false),
            Err(ChainError::TooLong)
        );
        // length overflow
        ram.write_descs(TABLE, &[RawDescriptor::new(0x10000, u32::MAX, 0, 0)]);
        assert_eq!(
            walk(&ram, 0, Direction::DeviceReads, false),
            Err(ChainError::TooLong)
        );
    }

    #[test]
    fn indirect_tables_are_bounded() {
        let ram = GuestRam::new();
        let ind = 0x8000;
        ram.write_descs(
            ind,
            &[
                RawDescriptor::new(0x10000, 10, VRING_DESC_F_NEXT, 1),
                RawDescriptor::new(0x11000, 20, 0, 0),
            ],
        );
        ram.write_descs(
            TABLE,
            &[RawDescriptor::new(ind, 32, VRING_DESC_F_INDIRECT, 0)],
        );
        assert_eq!(walk(&ram, 0, Direction::DeviceReads, true), Ok(30));
        assert_eq!(
            walk(&ram, 0, Direction::DeviceReads, false),
            Err(ChainError::BadIndirect)
        );
        // bad size
        ram.write_descs(
            TABLE,
            &[RawDescriptor::new(ind, 33, VRING_DESC_F_INDIRECT, 0)],
        );
        assert_eq!(
            walk(&ram, 0, Direction::DeviceReads, true),
            Err(ChainError::BadIndirect)
        );
        // nested
        ram.write_descs(
            ind,
            &[RawDescriptor::new(ind, 16, VRING_DESC_F_INDIRECT, 0)],
        );
        ram.write_descs(
            TABLE,
            &[RawDescriptor::new(ind, 16, VRING_DESC_F_INDIRECT, 0)],
        );
        assert_eq!(
            walk(&ram, 0, Direction::DeviceReads, true),
            Err(ChainError::BadIndirect)
        );
        // looping inside the indirect table
        ram.write_descs(ind, &[RawDescriptor::new(0x10000, 1, VRING_DESC_F_NEXT, 0)]);
        assert_eq!(
            walk(&ram, 0, Direction::DeviceReads, true),
            Err(ChainError::TooManyDescriptors)
        );
        // table outside memory
        ram.write_descs(
            TABLE,
            &[RawDescriptor::new(
                GuestRam::SIZE - 16,
                32,
                VRING_DESC_F_INDIRECT,
                0,
            )],
        );
        assert_eq!(
            walk(&ram, 0, Direction::DeviceReads, true),
            Err(ChainError::BadAddress)
        );
    }

    #[test]
    fn failed_chain_leaves_earlier_segments_intact() {
        let ram = GuestRam::new();
        ram.write_descs(
            TABLE,
            &[
                RawDescriptor::new(0x10000, 10, VRING_DESC_F_WRITE, 0),
                RawDescriptor::new(0x10000, 10, 0, 0),
            ],
        );
        let mut iov = GuestIov::default();
        let t = GuestAddress(TABLE);
        iov.push_chain(
            &ram.mem,
            DescTable::in_guest(t, 8),
            0,
            Direction::DeviceWrites,
            false,
            100,
        )
        .unwrap();
        assert!(iov
            .push_chain(
                &ram.mem,
                DescTable::in_guest(t, 8),
                1,
                Direction::DeviceWrites,
                false,
                100
            )
            .is_err());
        assert_eq!((iov.len(), iov.segments()), (10, 1));
    }

    #[test]
    fn a_request_then_reply_chain_reports_where_the_reply_starts() {
        let ram = GuestRam::new();
        ram.write_descs(
            TABLE,
            &[
                RawDescriptor::new(0x10000, 2, VRING_DESC_F_NEXT, 1),
                RawDescriptor::new(0x20000, 7, VRING_DESC_F_NEXT, 2),
                RawDescriptor::new(0x30000, 1, VRING_DESC_F_WRITE, 0),
                // Out of order: readable after writable.
                RawDescriptor::new(0x10000, 2, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 4),
                RawDescriptor::new(0x20000, 7, 0, 0),
            ],
        );
        let mut iov = GuestIov::default();
        let n = iov
            .push_chain(
                &ram.mem,
                DescTable::in_guest(GuestAddress(TABLE), 8),
                0,
                Direction::DeviceReadsThenWrites,
                false,
                65_562,
            )
            .unwrap();
        assert_eq!((n, iov.readable_len()), (10, 9));
        assert_eq!(
            walk(&ram, 3, Direction::DeviceReadsThenWrites, false),
            Err(ChainError::WrongDirection)
        );
    }
}
