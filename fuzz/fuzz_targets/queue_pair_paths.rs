//! A queue pair's real rx and tx paths (the code the worker runs) over rings a hostile driver
//! wrote: guest memory written piece by piece by the fuzzer (descriptor tables, avail rings,
//! indirect tables, buffers, overlapping at will), with and without MRG_RXBUF, EVENT_IDX and
//! INDIRECT_DESC, a 10- or 12-byte header, a backend with or without a vnet header; frames of
//! any size (up to 64 KiB) from the backend.
//!
//! Checked: sending the guest's tx chains writes nothing into guest memory but the tx used
//! ring; delivering frames writes only into descriptors the guest marked device-writable
//! (directly or in an indirect table) and the rx used ring, unless those buffers overlap a
//! descriptor table (a frame may then rewrite the descriptors of the next); the used indexes never pass the
//! avail indexes; every frame the backend sends goes to the guest, stays in the backend or is
//! counted as dropped; the backend receives no more frames than the guest queued.

#![no_main]

use std::os::fd::{AsRawFd, OwnedFd};

use libfuzzer_sys::fuzz_target;
use vhost_user_netd::device::queue_pair::DatapathParams;
use vhost_user_netd::device::standalone_pair::StandalonePair;
use vhost_user_netd_backends::socketpair::SocketpairBackend;
use vhost_user_netd_backends::{sys, Backend};
use vhost_user_netd_fuzz::{changed_outside, snapshot, writable_ranges, write_pieces, Input};
use vhost_user_netd_ring::layout;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

const RAM: usize = 256 << 10;

/// Where a ring's parts go: mostly sensible spots, sometimes anywhere.
fn ring_addresses(input: &mut Input, base: u64) -> (u64, u64, u64) {
    if input.byte() % 8 == 0 {
        let any = |i: &mut Input| u64::from(i.u32()) % RAM as u64;
        return (any(input), any(input), any(input));
    }
    (base, base + 0x1000, base + 0x2000)
}

fn u16_at(mem: &GuestMemoryMmap, at: u64) -> Option<u16> {
    mem.read_obj::<u16>(GuestAddress(at)).ok().map(u16::from_le)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let f = input.byte();
    let params = DatapathParams {
        hdr_len: if f & 1 != 0 { 12 } else { 10 },
        mrg_rxbuf: f & 2 != 0,
        indirect: f & 4 != 0,
        backend_vnet_hdr: f & 8 != 0,
        link_up: f & 0x40 == 0,
        ..DatapathParams::default()
    };
    let event_idx = f & 0x10 != 0;
    let rx_size = 1u16 << (input.byte() % 9);
    let tx_size = 1u16 << (input.byte() % 9);
    let (rx_parts, tx_parts) = (
        ring_addresses(&mut input, 0x1000),
        ring_addresses(&mut input, 0x8000),
    );
    let frames: Vec<usize> = (0..input.byte() % 8)
        .map(|_| usize::from(u16::from_le_bytes([input.byte(), input.byte()])))
        .collect();

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]).expect("guest RAM");
    write_pieces(&mut input, &mem, RAM, 4);
    let atomic = GuestMemoryAtomic::new(mem);
    let guard = atomic.memory();
    let m: &GuestMemoryMmap = &guard;

    let Ok((backend, peers)) = SocketpairBackend::new(1, params.backend_vnet_hdr) else {
        return;
    };
    let Ok(queue) = backend.queue(0) else { return };
    let Ok(mut pair) = StandalonePair::new(params) else {
        return;
    };
    pair.set_backend(queue);
    let peer: OwnedFd = peers.into_iter().next().expect("one peer");
    let _ = sys::set_nonblocking(peer.as_raw_fd(), true);
    {
        let (rx, tx) = pair.rings();
        for (ring, size, (desc, avail, used)) in [(rx, rx_size, rx_parts), (tx, tx_size, tx_parts)]
        {
            ring.set_size(u32::from(size));
            if ring.set_addresses(m, desc, avail, used).is_err() {
                return;
            }
            ring.set_event_idx(event_idx);
            ring.started = true;
            ring.enabled = true;
        }
    }
    let tx_used = (tx_parts.2, layout::used_ring_len(u64::from(tx_size)));
    let rx_used = (rx_parts.2, layout::used_ring_len(u64::from(rx_size)));

    // tx: only the tx used ring changes; the backend gets no more than what was queued.
    let tx_avail = u16_at(m, tx_parts.1 + layout::RING_IDX).unwrap_or(0);
    let tx_used_before = u16_at(m, tx_parts.2 + layout::RING_IDX);
    let before = snapshot(m, RAM);
    pair.tx(&guard);
    if let Some(at) = changed_outside(&before, &snapshot(m, RAM), &[tx_used]) {
        panic!("tx wrote guest byte {at:#x}");
    }
    let mut buf = vec![0u8; 70_000];
    let mut sent = 0u32;
    while sys::read(peer.as_raw_fd(), &mut buf).is_ok_and(|n| n > 0) {
        sent += 1;
    }
    assert!(
        sent <= u32::from(tx_avail),
        "{sent} frames out of {tx_avail} queued"
    );
    let tx_used_after = u16_at(m, tx_parts.2 + layout::RING_IDX);
    if tx_used_after != tx_used_before {
        // The ring started at index 0: what was returned never passes what was made available.
        assert!(
            tx_used_after.unwrap_or(0) <= tx_avail,
            "tx used index passed avail"
        );
    }

    // rx: frames from the backend land only in writable buffers and the rx used ring.
    let mut offered = 0;
    for (i, &len) in frames.iter().enumerate() {
        let len = len.max(14)
            + if params.backend_vnet_hdr {
                params.hdr_len
            } else {
                0
            };
        let frame: Vec<u8> = (0..len).map(|b| (b as u8).wrapping_add(i as u8)).collect();
        if sys::write(peer.as_raw_fd(), &frame).is_ok() {
            offered += 1;
        }
    }
    let writes = writable_ranges(m, rx_parts.0, rx_size);
    let self_modifying = writes.rewrites_descriptors();
    let before = snapshot(m, RAM);
    pair.rx(&guard);
    let mut allowed = writes.writable;
    allowed.push(rx_used);
    let outside = changed_outside(&before, &snapshot(m, RAM), &allowed);
    if let (false, Some(at)) = (self_modifying, outside) {
        panic!("rx wrote guest byte {at:#x} outside the buffers the guest gave");
    }
    let c = pair.counts();
    // Frames still waiting at the device's end of the backend: read them through another handle
    // on that end.
    let Ok(mut device_end) = backend.queue(0) else {
        return;
    };
    let mut left = 0u64;
    while device_end
        .recv(&mut [std::io::IoSliceMut::new(&mut buf)])
        .is_ok_and(|n| n > 0)
    {
        left += 1;
    }
    // Delivered, dropped (counted) or still in the backend; one may wait in the bounce buffer.
    let accounted =
        c.rx_frames + c.rx_dropped_link_down + c.rx_dropped_too_big + c.rx_dropped_filtered + left;
    assert!(
        accounted <= offered && accounted + 1 >= offered,
        "{offered} frames sent, {accounted} accounted for: {c:?}"
    );
});
