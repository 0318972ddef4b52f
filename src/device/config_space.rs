//! The virtio-net device configuration space (`struct virtio_net_config`).

use crate::mac::MacAddr;

/// `VIRTIO_NET_S_LINK_UP`.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Bytes of config space we serve (mac .. duplex, padded; later fields read as zero).
pub const CONFIG_LEN: usize = 24;

/// The fields the device reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfigSpace {
    pub mac: MacAddr,
    pub link_up: bool,
    pub max_queue_pairs: u16,
    pub mtu: u16,
}

impl NetConfigSpace {
    /// Little-endian bytes as the driver reads them.
    pub fn bytes(&self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        b[0..6].copy_from_slice(&self.mac.octets());
        let status = if self.link_up {
            VIRTIO_NET_S_LINK_UP
        } else {
            0
        };
        b[6..8].copy_from_slice(&status.to_le_bytes());
        b[8..10].copy_from_slice(&self.max_queue_pairs.to_le_bytes());
        b[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        // speed (u32) = unknown (-1), duplex (u8) = unknown (0xff)
        b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        b[16] = 0xff;
        b
    }

    /// `size` bytes from `offset`, or `None` when the range is not inside the config space.
    pub fn read(&self, offset: u32, size: u32) -> Option<Vec<u8>> {
        let start = offset as usize;
        let end = start.checked_add(size as usize)?;
        if end > CONFIG_LEN {
            return None;
        }
        Some(self.bytes()[start..end].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_virtio_net_config() {
        let c = NetConfigSpace {
            mac: MacAddr([0x52, 0x54, 0, 1, 2, 3]),
            link_up: true,
            max_queue_pairs: 2,
            mtu: 1500,
        };
        let b = c.bytes();
        assert_eq!(&b[..6], &[0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(u16::from_le_bytes([b[6], b[7]]), 1);
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), 2);
        assert_eq!(u16::from_le_bytes([b[10], b[11]]), 1500);
        assert_eq!(c.read(6, 2), Some(vec![1, 0]));
        assert_eq!(c.read(20, 8), None);
        assert_eq!(c.read(u32::MAX, 2), None);
    }
}
