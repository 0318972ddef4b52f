//! The split ring as a hostile driver writes it: guest memory (descriptor table, avail ring,
//! used ring, buffers) is whatever the fuzzer writes into it, with any ring size, ring addresses
//! anywhere (overlapping each other and the buffers), loops, indirect tables, addresses outside
//! memory, overflowing lengths and index jumps; walked as the rx, tx and control paths walk it,
//! through the ring map or through `vm-memory`, with or without INDIRECT_DESC and EVENT_IDX.
//!
//! Checked, for every chain popped: a head outside the ring is refused; every chain is returned to the used
//! ring exactly once (a refused chain with length 0), and the used index ends where the number
//! of returned chains says; the device writes only into the writable buffers of the chain it
//! is filling (every byte that changed in guest memory lies in one of them), and reading a tx
//! chain changes nothing but the used ring.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_user_netd_fuzz::{write_pieces, Input};
use vhost_user_netd_ring::guest_iov::{Direction, GuestIov};
use vhost_user_netd_ring::vring::Vring;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

const RAM: usize = 64 << 10;
/// The largest chain the rx path fills (a 64 KiB frame and its header).
const MAX_CHAIN: usize = 65_562;

/// An address mostly inside memory (aligned to `align`), sometimes just past its end or
/// anywhere.
fn addr(input: &mut Input, align: u64) -> u64 {
    let raw = u64::from(u16::from_le_bytes([input.byte(), input.byte()]));
    match input.byte() % 16 {
        0 => u64::MAX - raw,
        1 => RAM as u64 - raw % 64,
        _ => raw & !(align - 1),
    }
}

fn snapshot(mem: &GuestMemoryMmap) -> Vec<u8> {
    let mut buf = vec![0u8; RAM];
    mem.read_slice(&mut buf, GuestAddress(0))
        .expect("whole RAM");
    buf
}

/// Whether `at` lies in one of `ranges` (guest-physical start, length).
fn inside(at: u64, ranges: &[(u64, u32)]) -> bool {
    ranges
        .iter()
        .any(|&(start, len)| at >= start && at - start < u64::from(len))
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let size = 1u32 << (input.byte() % 9);
    let direction = match flags & 0x3 {
        0 => Direction::DeviceReads,
        1 => Direction::DeviceReadsThenWrites,
        _ => Direction::DeviceWrites,
    };
    let indirect = flags & 0x4 != 0;
    let event_idx = flags & 0x8 != 0;
    let mapped = flags & 0x10 != 0;
    let (desc, avail, used) = (
        addr(&mut input, 16),
        addr(&mut input, 2),
        addr(&mut input, 4),
    );
    let base = u16::from_le_bytes([input.byte(), input.byte()]);

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]).expect("guest RAM");
    // The rest writes guest memory: pieces of up to 255 bytes at 16-bit offsets.
    write_pieces(&mut input, &mem, RAM, 2);
    let atomic = GuestMemoryAtomic::new(mem);
    let guard = atomic.memory();
    let mem: &GuestMemoryMmap = &guard;

    let mut ring = Vring::default();
    assert!(ring.set_size(size));
    if ring.set_addresses(mem, desc, avail, used).is_err() {
        return;
    }
    ring.set_base(base);
    ring.set_event_idx(event_idx);
    ring.started = true;
    ring.enabled = true;
    if mapped {
        ring.map_in(&guard);
    }
    let (used_start, used_len) = ring.used_ring_range().expect("configured ring");

    let frame: Vec<u8> = (0..MAX_CHAIN).map(|i| (i % 251) as u8).collect();
    let mut iov = GuestIov::default();
    let mut returned: u16 = 0;
    for _round in 0..4 {
        let returned_before = returned;
        ring.read_ahead(mem, 64);
        loop {
            let head = match ring.pop_head(mem) {
                Ok(Some(h)) => h,
                Ok(None) | Err(_) => break,
            };
            iov.clear();
            // Memory is compared around the first chains of each input (a copy of all of it per
            // chain would make the rest of the search slow).
            let compare = returned.wrapping_sub(returned_before) < 8;
            let before = if compare { snapshot(mem) } else { Vec::new() };
            let table = ring.desc_table(mem);
            let walked = iov.push_chain(mem, table, head, direction, indirect, MAX_CHAIN);
            if u32::from(head) >= size {
                assert!(
                    walked.is_err(),
                    "head {head} outside a ring of {size} walked"
                );
            }
            let len = match walked {
                Err(_) => 0,
                Ok(total) => {
                    assert!(total <= MAX_CHAIN, "chain longer than asked for");
                    match direction {
                        Direction::DeviceReads => {
                            let mut out = vec![0u8; total];
                            assert!(iov.read_at(0, &mut out), "a walked chain reads whole");
                            total as u32
                        }
                        Direction::DeviceWrites | Direction::DeviceReadsThenWrites => {
                            let skip = iov.readable_len();
                            let n = total - skip;
                            assert!(
                                iov.write_at(skip, &frame[..n]),
                                "a walked chain takes its length"
                            );
                            n as u32
                        }
                    }
                }
            };
            // Only the chain's writable buffers changed.
            let after = if compare { snapshot(mem) } else { Vec::new() };
            let writable = &iov.guest_ranges()[..];
            if before != after {
                for (at, (a, b)) in before.iter().zip(&after).enumerate() {
                    if a == b {
                        continue;
                    }
                    assert!(
                        direction != Direction::DeviceReads && inside(at as u64, writable),
                        "byte {at:#x} written outside the chain's buffers"
                    );
                }
            }
            ring.push_used(mem, head, len);
            returned = returned.wrapping_add(1);
        }
        ring.publish_used(mem);
        let used_idx: u16 = mem
            .read_obj::<u16>(GuestAddress(used_start + 2))
            .map(u16::from_le)
            .unwrap_or(0);
        // The used index is written when chains are returned (the driver sets it up before).
        let published = returned != returned_before;
        if published
            && used_start
                .checked_add(used_len)
                .is_some_and(|end| end <= RAM as u64)
        {
            assert_eq!(
                used_idx,
                base.wrapping_add(returned),
                "used index after {returned} chains returned"
            );
        }
        let _ = ring.needs_interrupt(mem);
        let _ = ring.enable_notification(mem);
    }
});
