//! What the fuzz targets share: structured choices read out of the fuzzer's bytes ([`Input`];
//! reading past the end yields zeros, or `None` from [`Input::next`], so every input decodes to
//! something), and the checks of what a device wrote into guest memory.

use vhost_user_netd_ring::layout;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const VRING_DESC_F_WRITE: u16 = 2;
const VRING_DESC_F_INDIRECT: u16 = 4;

/// The fuzzer's bytes, consumed front to back.
#[derive(Debug)]
pub struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { rest: data }
    }

    /// The next byte, if any is left.
    pub fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(b)
    }

    /// The next byte, 0 past the end.
    pub fn byte(&mut self) -> u8 {
        self.next().unwrap_or(0)
    }

    /// The next four bytes, little-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// The next eight bytes, little-endian.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// One of `from`, chosen by the next byte.
    pub fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::from(self.byte()) % from.len()]
    }

    /// Up to `n` of the next bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = rest;
        head
    }

    /// Everything left, consumed.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// Writes the rest of `input` into the first `ram` bytes of guest memory as pieces: an offset
/// (`offset_bytes` little-endian bytes, modulo `ram`), a length byte, then that many bytes.
pub fn write_pieces(input: &mut Input, mem: &GuestMemoryMmap, ram: usize, offset_bytes: usize) {
    while !input.is_empty() {
        let at = (0..offset_bytes).fold(0u64, |v, i| v | u64::from(input.byte()) << (8 * i));
        let at = (at % ram as u64) as usize;
        let n = usize::from(input.byte());
        let piece = input.bytes(n);
        let _ = mem.write_slice(&piece[..piece.len().min(ram - at)], GuestAddress(at as u64));
    }
}

/// The first `len` bytes of guest memory.
pub fn snapshot(mem: &GuestMemoryMmap, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(0))
        .expect("whole RAM");
    buf
}

/// What a driver's descriptors let the device write.
#[derive(Debug, Default)]
pub struct GuestWrites {
    /// Every device-writable buffer: (start, length).
    pub writable: Vec<(u64, u64)>,
    /// The descriptor tables they were read from: (start, length).
    pub tables: Vec<(u64, u64)>,
}

impl GuestWrites {
    /// Whether a writable buffer overlaps a descriptor table: the device's writes may then
    /// rewrite the descriptors it walks next, and the buffers found up front say nothing about
    /// where it may legitimately write.
    pub fn rewrites_descriptors(&self) -> bool {
        self.writable.iter().any(|&(w, wl)| {
            self.tables
                .iter()
                .any(|&(t, tl)| w < t.saturating_add(tl) && t < w.saturating_add(wl))
        })
    }
}

/// The buffers the guest let the device write: every device-writable descriptor of the table
/// at `desc` (size entries), and of any indirect table one of them points at.
pub fn writable_ranges(mem: &GuestMemoryMmap, desc: u64, size: u16) -> GuestWrites {
    let mut out = GuestWrites::default();
    let mut tables = vec![(desc, u64::from(size))];
    let mut visited = std::collections::HashSet::new();
    while let Some((table, entries)) = tables.pop() {
        // The device walks at most a queue's worth of entries in one indirect table, and each
        // table once is enough to know what it allows.
        if !visited.insert(table) || visited.len() > 64 {
            continue;
        }
        let entries = entries.min(u64::from(u16::MAX));
        out.tables.push((table, layout::desc_table_len(entries)));
        for i in 0..entries {
            let mut d = [0u8; 16];
            if mem
                .read_slice(&mut d, GuestAddress(table + layout::desc_offset(i)))
                .is_err()
            {
                break;
            }
            let addr = u64::from_le_bytes(d[0..8].try_into().expect("8"));
            let len = u64::from(u32::from_le_bytes(d[8..12].try_into().expect("4")));
            let flags = u16::from_le_bytes([d[12], d[13]]);
            if flags & VRING_DESC_F_INDIRECT != 0 {
                tables.push((addr, len / layout::DESC_SIZE));
            } else if flags & VRING_DESC_F_WRITE != 0 {
                out.writable.push((addr, len));
            }
        }
    }
    out
}

/// The first byte that differs between `before` and `after` outside every `(start, len)` of
/// `allowed`, if any.
pub fn changed_outside(before: &[u8], after: &[u8], allowed: &[(u64, u64)]) -> Option<usize> {
    if before == after {
        return None;
    }
    (0..before.len()).find(|&at| {
        before[at] != after[at]
            && !allowed
                .iter()
                .any(|&(start, len)| (at as u64) >= start && (at as u64) - start < len)
    })
}
