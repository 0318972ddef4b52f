//! virtio-net feature bits, and which of them a port offers given its backend's capabilities.

use vhost_user_netd_backends::{Capabilities, Offloads};

pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
pub const VIRTIO_NET_F_GUEST_ECN: u64 = 1 << 9;
pub const VIRTIO_NET_F_GUEST_UFO: u64 = 1 << 10;
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
pub const VIRTIO_NET_F_HOST_ECN: u64 = 1 << 13;
pub const VIRTIO_NET_F_HOST_UFO: u64 = 1 << 14;
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
pub const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;
pub const VIRTIO_NET_F_CTRL_RX: u64 = 1 << 18;
pub const VIRTIO_NET_F_CTRL_VLAN: u64 = 1 << 19;
pub const VIRTIO_NET_F_CTRL_RX_EXTRA: u64 = 1 << 20;
pub const VIRTIO_NET_F_CTRL_MAC_ADDR: u64 = 1 << 23;
pub const VIRTIO_NET_F_GUEST_ANNOUNCE: u64 = 1 << 21;
pub const VIRTIO_NET_F_MQ: u64 = 1 << 22;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
pub const VHOST_F_LOG_ALL: u64 = 1 << 26;
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_F_IN_ORDER: u64 = 1 << 35;

/// Size of `struct virtio_net_hdr` without `num_buffers`.
pub const LEGACY_HDR_LEN: usize = 10;
/// Size of `struct virtio_net_hdr_v1` (with `num_buffers`).
pub const HDR_LEN: usize = 12;

/// What a port offers: everything the device implements, offloads only where the backend can
/// carry them, MQ only with several queue pairs, MAC/MTU only when configured.
pub fn offered(caps: &Capabilities, queue_pairs: u16, has_mac: bool, has_mtu: bool) -> u64 {
    let mut f = VIRTIO_F_VERSION_1
        // Every ring's buffers are used in the order they were made available (chains a frame
        // did not need go back and are taken first next time), so a driver may rely on it
        // (DPDK's virtio PMD then reclaims without looking buffers up by id).
        | VIRTIO_F_IN_ORDER
        | VIRTIO_NET_F_MRG_RXBUF
        | VIRTIO_RING_F_EVENT_IDX
        | VIRTIO_RING_F_INDIRECT_DESC
        | VIRTIO_NET_F_STATUS
        | VIRTIO_NET_F_GUEST_ANNOUNCE
        // The control queue, for frontends that hand it over (QEMU keeps its own).
        | VIRTIO_NET_F_CTRL_VQ
        | VIRTIO_NET_F_CTRL_RX
        | VIRTIO_NET_F_CTRL_RX_EXTRA
        | VIRTIO_NET_F_CTRL_VLAN
        | VIRTIO_NET_F_CTRL_MAC_ADDR
        | VHOST_F_LOG_ALL
        | VHOST_USER_F_PROTOCOL_FEATURES;
    if queue_pairs > 1 {
        f |= VIRTIO_NET_F_MQ;
    }
    if has_mac {
        f |= VIRTIO_NET_F_MAC;
    }
    if has_mtu {
        f |= VIRTIO_NET_F_MTU;
    }
    if caps.vnet_hdr {
        let o = caps.offloads;
        if o.csum {
            f |= VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM;
            if o.tso4 {
                f |= VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_GUEST_TSO4;
            }
            if o.tso6 {
                f |= VIRTIO_NET_F_HOST_TSO6 | VIRTIO_NET_F_GUEST_TSO6;
            }
            if o.ecn && (o.tso4 || o.tso6) {
                f |= VIRTIO_NET_F_HOST_ECN | VIRTIO_NET_F_GUEST_ECN;
            }
            if o.ufo {
                f |= VIRTIO_NET_F_HOST_UFO | VIRTIO_NET_F_GUEST_UFO;
            }
        }
    }
    f
}

/// What the guest can receive, i.e. what the backend may hand us (`TUNSETOFFLOAD`).
pub fn guest_offloads(acked: u64) -> Offloads {
    let has = |bit| acked & bit != 0;
    Offloads {
        csum: has(VIRTIO_NET_F_GUEST_CSUM),
        tso4: has(VIRTIO_NET_F_GUEST_TSO4),
        tso6: has(VIRTIO_NET_F_GUEST_TSO6),
        ecn: has(VIRTIO_NET_F_GUEST_ECN),
        ufo: has(VIRTIO_NET_F_GUEST_UFO),
    }
}

/// What the control queue's commands depend on; `None` unless the driver acked `CTRL_VQ`.
pub fn ctrl_features(acked: u64, queue_pairs: u16) -> Option<super::rx_filter::CtrlFeatures> {
    let has = |bit| acked & bit != 0;
    has(VIRTIO_NET_F_CTRL_VQ).then_some(super::rx_filter::CtrlFeatures {
        rx: has(VIRTIO_NET_F_CTRL_RX),
        rx_extra: has(VIRTIO_NET_F_CTRL_RX_EXTRA),
        vlan: has(VIRTIO_NET_F_CTRL_VLAN),
        mac_addr: has(VIRTIO_NET_F_CTRL_MAC_ADDR),
        mq: has(VIRTIO_NET_F_MQ),
        max_pairs: queue_pairs,
    })
}

/// The virtio-net header length the guest and device agreed on.
pub fn header_len(acked: u64) -> usize {
    if acked & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF) != 0 {
        HDR_LEN
    } else {
        LEGACY_HDR_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offloads_only_with_vnet_hdr() {
        let mut caps = Capabilities {
            vnet_hdr: false,
            offloads: Offloads::ALL,
            queue_pairs: 1,
        };
        let f = offered(&caps, 1, false, false);
        assert_eq!(
            f & (VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_MQ),
            0
        );
        assert_ne!(f & VIRTIO_F_VERSION_1, 0);
        assert_ne!(f & VIRTIO_F_IN_ORDER, 0);
        caps.vnet_hdr = true;
        let f = offered(&caps, 2, true, true);
        for bit in [
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_HOST_UFO,
            VIRTIO_NET_F_MQ,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_MTU,
        ] {
            assert_ne!(f & bit, 0);
        }
        caps.offloads.ufo = false;
        assert_eq!(offered(&caps, 1, false, false) & VIRTIO_NET_F_GUEST_UFO, 0);
    }

    #[test]
    fn header_length_and_guest_offloads() {
        assert_eq!(header_len(VIRTIO_F_VERSION_1), 12);
        assert_eq!(header_len(VIRTIO_NET_F_MRG_RXBUF), 12);
        assert_eq!(header_len(0), 10);
        let o = guest_offloads(VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4);
        assert!(o.csum && o.tso4 && !o.tso6 && o.any_gso());
    }
}
