//! Driver-side split rings over memfd-backed "guest" memory, for tests only.
//!
//! Used by the unit tests in `src/device/` and, through `#[path]`, by the in-repo vhost-user
//! test frontend in `tests/common/`, which shares the memfd with the daemon.

#![allow(unsafe_code)] // guest memory (see the SAFETY notes)
#![allow(dead_code)]

use std::fs::File;
use std::num::Wrapping;
use std::os::fd::FromRawFd;
use std::sync::atomic::Ordering;

use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// A descriptor as the driver writes it.
#[derive(Debug, Clone, Copy)]
pub struct RawDescriptor {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl RawDescriptor {
    pub fn new(addr: u64, len: u32, flags: u16, next: u16) -> Self {
        RawDescriptor {
            addr,
            len,
            flags,
            next,
        }
    }

    fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// Guest RAM: one memfd mapped at guest physical address 0.
#[derive(Debug)]
pub struct GuestRam {
    pub mem: GuestMemoryMmap,
    pub file: File,
}

impl Default for GuestRam {
    fn default() -> Self {
        Self::new()
    }
}

impl GuestRam {
    pub const SIZE: u64 = 4 << 20;

    pub fn new() -> Self {
        Self::with_size(Self::SIZE)
    }

    pub fn with_size(size: u64) -> Self {
        // SAFETY: the name is a valid NUL-terminated string; memfd_create takes no other pointer.
        let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create failed");
        // SAFETY: fd was just created and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size).expect("size memfd");
        let region = MmapRegion::from_file(
            FileOffset::new(file.try_clone().expect("dup memfd"), 0),
            size as usize,
        )
        .expect("mmap memfd");
        let region = GuestRegionMmap::new(region, GuestAddress(0)).expect("region");
        let mem = GuestMemoryMmap::from_regions(vec![region]).expect("guest memory");
        GuestRam { mem, file }
    }

    pub fn write_descs(&self, table: u64, descs: &[RawDescriptor]) {
        for (i, d) in descs.iter().enumerate() {
            self.mem
                .write_slice(&d.bytes(), GuestAddress(table + 16 * i as u64))
                .expect("desc");
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem
            .write_slice(data, GuestAddress(addr))
            .expect("write");
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(addr))
            .expect("read");
        v
    }
}

/// The driver's half of a split ring laid out at `base`: descriptor table, avail, used, and a
/// buffer area after them.
#[derive(Debug)]
pub struct DriverRing {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub buffers: u64,
    avail_idx: Wrapping<u16>,
    last_used: Wrapping<u16>,
}

impl DriverRing {
    pub fn new(ram: &GuestRam, size: u16, base: u64) -> Self {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + 16 * n;
        let used = (avail + 6 + 2 * n + 3) & !3;
        let buffers = (used + 6 + 8 * n + 0xfff) & !0xfff;
        // Zero the ring structures.
        ram.write(desc, &vec![0u8; (buffers - desc) as usize]);
        DriverRing {
            size,
            desc,
            avail,
            used,
            buffers,
            avail_idx: Wrapping(0),
            last_used: Wrapping(0),
        }
    }

    /// Bytes the ring structures and `count` buffers of `buf_len` occupy from `base`.
    pub fn buffer_addr(&self, index: u16, buf_len: u64) -> u64 {
        self.buffers + u64::from(index) * buf_len
    }

    pub fn make_available(&mut self, ram: &GuestRam, heads: &[u16]) {
        for &h in heads {
            let slot = u64::from(self.avail_idx.0 % self.size);
            ram.write(self.avail + 4 + 2 * slot, &h.to_le_bytes());
            self.avail_idx += Wrapping(1);
        }
        ram.mem
            .store(
                self.avail_idx.0.to_le(),
                GuestAddress(self.avail + 2),
                Ordering::Release,
            )
            .expect("avail idx");
    }

    /// Posts one single-descriptor buffer per slot `first..first+count`, writable or readable.
    pub fn post_buffers(
        &mut self,
        ram: &GuestRam,
        first: u16,
        count: u16,
        len: u32,
        writable: bool,
    ) {
        let mut heads = Vec::new();
        for i in first..first + count {
            let slot = i % self.size;
            let addr = self.buffer_addr(slot, u64::from(len));
            let flags = if writable { F_WRITE } else { 0 };
            ram.write_descs(
                self.desc + 16 * u64::from(slot),
                &[RawDescriptor::new(addr, len, flags, 0)],
            );
            heads.push(slot);
        }
        self.make_available(ram, &heads);
    }

    /// Posts a tx frame in one descriptor at slot `slot` (header + frame already in `data`).
    pub fn post_tx(&mut self, ram: &GuestRam, slot: u16, data: &[u8], buf_len: u64) {
        let addr = self.buffer_addr(slot, buf_len);
        ram.write(addr, data);
        ram.write_descs(
            self.desc + 16 * u64::from(slot),
            &[RawDescriptor::new(addr, data.len() as u32, 0, 0)],
        );
        self.make_available(ram, &[slot]);
    }

    /// Posts a chain of descriptors starting at `slot` (consecutive slots), made available.
    pub fn post_chain(&mut self, ram: &GuestRam, slot: u16, parts: &[(u64, u32, bool)]) {
        for (i, &(addr, len, writable)) in parts.iter().enumerate() {
            let mut flags = if writable { F_WRITE } else { 0 };
            if i + 1 < parts.len() {
                flags |= F_NEXT;
            }
            let index = (slot + i as u16) % self.size;
            let next = (index + 1) % self.size;
            ram.write_descs(
                self.desc + 16 * u64::from(index),
                &[RawDescriptor::new(addr, len, flags, next)],
            );
        }
        self.make_available(ram, &[slot]);
    }

    pub fn set_avail_idx(&self, ram: &GuestRam, idx: u16) {
        ram.write(self.avail + 2, &idx.to_le_bytes());
    }

    pub fn set_avail_flags(&self, ram: &GuestRam, flags: u16) {
        ram.write(self.avail, &flags.to_le_bytes());
    }

    pub fn set_used_event(&self, ram: &GuestRam, idx: u16) {
        ram.write(
            self.avail + 4 + 2 * u64::from(self.size),
            &idx.to_le_bytes(),
        );
    }

    pub fn avail_event(&self, ram: &GuestRam) -> u16 {
        let b = ram.read(self.used + 4 + 8 * u64::from(self.size), 2);
        u16::from_le_bytes([b[0], b[1]])
    }

    /// The device's `used.flags` (bit 0: `VRING_USED_F_NO_NOTIFY`, "do not kick me").
    pub fn used_flags(&self, ram: &GuestRam) -> u16 {
        let b = ram.read(self.used, 2);
        u16::from_le_bytes([b[0], b[1]])
    }

    pub fn used_idx(&self, ram: &GuestRam) -> u16 {
        let v: u16 = ram
            .mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .expect("used idx");
        u16::from_le(v)
    }

    pub fn used_elem(&self, ram: &GuestRam, index: u16) -> (u32, u32) {
        let b = ram.read(self.used + 4 + 8 * u64::from(index % self.size), 8);
        (
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        )
    }

    /// Takes the used elements the device published since the last call.
    pub fn take_used(&mut self, ram: &GuestRam) -> Vec<(u32, u32)> {
        let idx = Wrapping(self.used_idx(ram));
        let mut out = Vec::new();
        while self.last_used != idx {
            out.push(self.used_elem(ram, self.last_used.0));
            self.last_used += Wrapping(1);
        }
        // Like a driver with EVENT_IDX: interrupt me for the next entry.
        self.set_used_event(ram, self.last_used.0);
        out
    }
}
