//! The split ring's layout in guest memory (virtio 1.2, 2.7), named once: a descriptor table
//! of 16-byte entries; an avail ring of `flags`, `idx`, one 2-byte head per entry and
//! `used_event`; a used ring of `flags`, `idx`, one 8-byte element per entry and
//! `avail_event`. Offsets are in bytes from each part's start.

/// Bytes of one descriptor (`addr`, `len`, `flags`, `next`).
pub const DESC_SIZE: u64 = 16;
/// Alignments the driver must give the three parts.
pub const DESC_ALIGN: u64 = 16;
pub const AVAIL_ALIGN: u64 = 2;
pub const USED_ALIGN: u64 = 4;
/// Offset of `idx` in the avail and the used ring (after the 2-byte `flags`).
pub const RING_IDX: u64 = 2;
/// Offset of the first entry in the avail and the used ring.
const RING_ENTRIES: u64 = 4;
/// Bytes of one avail entry (a head index) and of one used element (`id`, `len`).
const AVAIL_ENTRY: u64 = 2;
const USED_ELEM: u64 = 8;

/// Bytes of the descriptor table of a ring of `size` entries.
pub const fn desc_table_len(size: u64) -> u64 {
    DESC_SIZE * size
}

/// Bytes of the avail ring, `used_event` included.
pub const fn avail_ring_len(size: u64) -> u64 {
    RING_ENTRIES + AVAIL_ENTRY * size + 2
}

/// Bytes of the used ring, `avail_event` included.
pub const fn used_ring_len(size: u64) -> u64 {
    RING_ENTRIES + USED_ELEM * size + 2
}

/// Offset of avail entry `slot`; for `slot` = size, of `used_event`.
pub const fn avail_entry(slot: u64) -> u64 {
    RING_ENTRIES + AVAIL_ENTRY * slot
}

/// Offset of used element `slot`; for `slot` = size, of `avail_event`.
pub const fn used_elem(slot: u64) -> u64 {
    RING_ENTRIES + USED_ELEM * slot
}

/// Offset of descriptor `index` in its table.
pub const fn desc_offset(index: u64) -> u64 {
    DESC_SIZE * index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_specification() {
        // virtio 1.2, 2.7: 16 * Queue Size, 6 + 2 * Queue Size, 6 + 8 * Queue Size.
        assert_eq!(desc_table_len(256), 4096);
        assert_eq!(avail_ring_len(256), 6 + 2 * 256);
        assert_eq!(used_ring_len(256), 6 + 8 * 256);
        assert_eq!(
            avail_entry(256),
            avail_ring_len(256) - 2,
            "used_event is last"
        );
        assert_eq!(
            used_elem(256),
            used_ring_len(256) - 2,
            "avail_event is last"
        );
    }
}
