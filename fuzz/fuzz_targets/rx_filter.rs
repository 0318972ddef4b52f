//! The guest's control-queue commands (receive mode, MAC tables, MAC address, VLANs, queue
//! pairs) under any negotiated features, interleaved with frames checked against the filter
//! they set.
//!
//! Checked: a refused command changes nothing; an accepted one reports a change exactly when
//! there was one; tables never exceed QEMU's 64 entries; the active queue pairs stay within
//! what the device has; a promiscuous filter takes everything, and otherwise a frame too short
//! for a destination is refused and untagged broadcast passes exactly when `nobcast` is off.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_user_netd::device::rx_filter::{CtrlFeatures, RxFilter, MAC_TABLE_ENTRIES};
use vhost_user_netd::mac::MacAddr;
use vhost_user_netd_fuzz::Input;

fn check_frame(filter: &RxFilter, frame: &[u8]) {
    let accepted = filter.accepts(frame);
    if filter.promisc {
        assert!(accepted, "promiscuous filter refused a frame");
        return;
    }
    if frame.len() < 6 {
        assert!(!accepted, "a frame without a destination passed");
    }
    let untagged = frame.get(12..14) != Some(&[0x81, 0x00]) || !filter.vlan_filtering;
    if frame.len() >= 6 && frame[..6] == [0xff; 6] && untagged {
        assert_eq!(accepted, !filter.nobcast, "broadcast against nobcast");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let Some(f) = input.next() else { return };
    let features = CtrlFeatures {
        rx: f & 1 != 0,
        rx_extra: f & 2 != 0,
        vlan: f & 4 != 0,
        mac_addr: f & 8 != 0,
        mq: f & 16 != 0,
        max_pairs: u16::from(input.next().unwrap_or(1) % 17),
    };
    let mut filter = RxFilter::new(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]), features.vlan);
    while let Some(op) = input.next() {
        let len = usize::from(input.byte());
        if op & 0x80 != 0 {
            let frame = input.bytes(len).to_vec();
            check_frame(&filter, &frame);
            continue;
        }
        let (class, cmd) = (op >> 3 & 0x7, op & 0x7);
        let data = input.bytes(len * 4).to_vec();
        let before = filter.clone();
        match filter.apply(&features, class, cmd, &data) {
            Err(_) => assert_eq!(filter, before, "a refused command changed the filter"),
            Ok(changed) => assert_eq!(changed, filter != before, "change reported wrongly"),
        }
        assert!(filter.unicast.len() <= MAC_TABLE_ENTRIES);
        assert!(filter.multicast.len() <= MAC_TABLE_ENTRIES);
        assert!(filter.active_pairs >= 1);
        assert!(features.mq || filter.active_pairs == 1);
        assert!(!features.mq || filter.active_pairs <= features.max_pairs.max(1));
        assert!(filter
            .vlan_ids()
            .iter()
            .all(|&v| filter.vlan(usize::from(v))));
    }
});
