//! The control queue as its worker runs it (`CtrlQueue::process`, the `fuzzing` feature's
//! standalone queue): command chains a hostile driver wrote into guest memory (request and
//! reply descriptors in any order, indirect tables, loops, requests of any size), under any
//! negotiated features.
//!
//! Checked: the device writes only into descriptors the guest marked device-writable and the
//! used ring (unless those buffers overlap a descriptor table: a command's reply may then
//! rewrite the descriptors of the next, and where it may write is no longer known up front); every chain is returned with at most the one reply byte; the used index never
//! passes the avail index.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_user_netd::device::ctrl_queue::CtrlQueue;
use vhost_user_netd::device::rx_filter::CtrlFeatures;
use vhost_user_netd::mac::MacAddr;
use vhost_user_netd_fuzz::{changed_outside, snapshot, writable_ranges, write_pieces, Input};
use vhost_user_netd_ring::layout;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

const RAM: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let f = input.byte();
    let features = (f & 1 != 0).then(|| CtrlFeatures {
        rx: f & 2 != 0,
        rx_extra: f & 4 != 0,
        vlan: f & 8 != 0,
        mac_addr: f & 16 != 0,
        mq: f & 32 != 0,
        max_pairs: u16::from(input.byte() % 17),
    });
    let size = 1u16 << (input.byte() % 9);
    let (desc, avail, used) = (0x1000, 0x2000, 0x3000);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]).expect("guest RAM");
    write_pieces(&mut input, &mem, RAM, 2);
    let atomic = GuestMemoryAtomic::new(mem);
    let guard = atomic.memory();
    let m: &GuestMemoryMmap = &guard;

    let Ok(mut ctrl) = CtrlQueue::standalone(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56])) else {
        return;
    };
    ctrl.set_features(features, f & 0x40 != 0);
    ctrl.ring.set_size(u32::from(size));
    if ctrl.ring.set_addresses(m, desc, avail, used).is_err() {
        return;
    }
    ctrl.ring.set_event_idx(f & 0x80 != 0);
    ctrl.ring.started = true;
    ctrl.ring.enabled = true;

    let avail_idx = m
        .read_obj::<u16>(GuestAddress(avail + layout::RING_IDX))
        .unwrap_or(0);
    let used_len = layout::used_ring_len(u64::from(size));
    let writes = writable_ranges(m, desc, size);
    let self_modifying = writes.rewrites_descriptors();
    let mut allowed = writes.writable;
    // A reply buffer over the used ring lets the guest's own bytes into its entries.
    let overlapping = allowed
        .iter()
        .any(|&(start, len)| start < used + used_len && used < start.saturating_add(len));
    allowed.push((used, used_len));
    let before = snapshot(m, RAM);
    ctrl.process_now(m);
    let after = snapshot(m, RAM);
    if let (false, Some(at)) = (self_modifying, changed_outside(&before, &after, &allowed)) {
        panic!("the control queue wrote guest byte {at:#x} outside the reply buffers");
    }
    let used_idx = m
        .read_obj::<u16>(GuestAddress(used + layout::RING_IDX))
        .unwrap_or(0);
    if before[used as usize + 2..used as usize + 4] != after[used as usize + 2..used as usize + 4] {
        assert!(
            used_idx <= avail_idx,
            "used index {used_idx} passed avail {avail_idx}"
        );
        for slot in 0..used_idx
            .min(size)
            .min(if overlapping { 0 } else { u16::MAX })
        {
            let at = used + layout::used_elem(u64::from(slot)) + 4;
            let len = m.read_obj::<u32>(GuestAddress(at)).unwrap_or(0);
            assert!(
                len <= 1,
                "a chain returned with {len} bytes written (one reply byte at most)"
            );
        }
    }
});
