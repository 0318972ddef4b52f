//! The guest's receive filter, as its control-queue commands set it (`VIRTIO_NET_CTRL_RX`,
//! `_MAC`, `_VLAN`), and the check the rx path applies to every frame. The semantics are QEMU's
//! (`hw/net/virtio-net.c`): promiscuous from reset until the driver says otherwise; unicast to
//! the device MAC or the table; multicast when all-multi, in the table, or the table overflowed;
//! broadcast unless `nobcast`; with `CTRL_VLAN`, tagged frames only for VLANs added.

use crate::mac::MacAddr;

/// Entries the MAC table holds before it overflows (QEMU's `MAC_TABLE_ENTRIES`).
pub const MAC_TABLE_ENTRIES: usize = 64;
const VLAN_IDS: usize = 4096;

/// Control-queue classes and commands (virtio 1.2, 5.1.6.5).
pub const CLASS_RX: u8 = 0;
pub const CLASS_MAC: u8 = 1;
pub const CLASS_VLAN: u8 = 2;
pub const CLASS_ANNOUNCE: u8 = 3;
pub const CLASS_MQ: u8 = 4;

/// Why a command was refused (the guest gets `VIRTIO_NET_ERR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown command class {0} command {1}")]
    Unknown(u8, u8),
    #[error("command {0}.{1} has a malformed payload")]
    Malformed(u8, u8),
    #[error("command {0}.{1} needs a feature the driver did not negotiate")]
    NotNegotiated(u8, u8),
    #[error("value out of range in command {0}.{1}")]
    OutOfRange(u8, u8),
}

/// What the driver negotiated that commands depend on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtrlFeatures {
    pub rx: bool,
    pub rx_extra: bool,
    pub vlan: bool,
    pub mac_addr: bool,
    pub mq: bool,
    /// Queue pairs the device has.
    pub max_pairs: u16,
}

/// The filter state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxFilter {
    pub promisc: bool,
    pub allmulti: bool,
    pub alluni: bool,
    pub nomulti: bool,
    pub nouni: bool,
    pub nobcast: bool,
    /// The device MAC (config space, or `MAC_ADDR_SET`).
    pub mac: MacAddr,
    pub unicast: Vec<MacAddr>,
    pub multicast: Vec<MacAddr>,
    pub unicast_overflow: bool,
    pub multicast_overflow: bool,
    /// Whether VLAN filtering applies (`CTRL_VLAN` negotiated).
    pub vlan_filtering: bool,
    vlans: Box<[u32; VLAN_IDS / 32]>,
    /// Queue pairs the driver enabled (`MQ_VQ_PAIRS_SET`).
    pub active_pairs: u16,
}

impl RxFilter {
    /// The state at reset: promiscuous, empty tables.
    pub fn new(mac: MacAddr, vlan_filtering: bool) -> Self {
        RxFilter {
            promisc: true,
            allmulti: false,
            alluni: false,
            nomulti: false,
            nouni: false,
            nobcast: false,
            mac,
            unicast: Vec::new(),
            multicast: Vec::new(),
            unicast_overflow: false,
            multicast_overflow: false,
            vlan_filtering,
            vlans: Box::new([0; VLAN_IDS / 32]),
            active_pairs: 1,
        }
    }

    /// Whether the guest wants `frame` (an Ethernet frame, at least its first 16 bytes).
    pub fn accepts(&self, frame: &[u8]) -> bool {
        if self.promisc {
            return true;
        }
        let Some(dst) = MacAddr::destination_of(frame) else {
            return false;
        };
        if self.vlan_filtering && frame.get(12..14) == Some(&[0x81, 0x00]) {
            let Some(tci) = frame.get(14..16) else {
                return false;
            };
            let vid = usize::from(u16::from_be_bytes([tci[0], tci[1]]) & 0xfff);
            if !self.vlan(vid) {
                return false;
            }
        }
        if dst.is_multicast() {
            if dst == MacAddr::BROADCAST {
                return !self.nobcast;
            }
            if self.nomulti {
                return false;
            }
            self.allmulti || self.multicast_overflow || self.multicast.contains(&dst)
        } else {
            if self.nouni {
                return false;
            }
            self.alluni || self.unicast_overflow || dst == self.mac || self.unicast.contains(&dst)
        }
    }

    /// Whether VLAN `vid` passes.
    pub fn vlan(&self, vid: usize) -> bool {
        vid < VLAN_IDS && self.vlans[vid / 32] & (1 << (vid % 32)) != 0
    }

    /// The VLANs that pass, in order.
    pub fn vlan_ids(&self) -> Vec<u16> {
        (0..VLAN_IDS)
            .filter(|&v| self.vlan(v))
            .map(|v| v as u16)
            .collect()
    }

    /// Applies one command (`data` is what follows the class and command bytes). Returns
    /// whether the filter changed.
    pub fn apply(
        &mut self,
        features: &CtrlFeatures,
        class: u8,
        cmd: u8,
        data: &[u8],
    ) -> Result<bool, CommandError> {
        let before = self.clone();
        match class {
            CLASS_RX => self.apply_rx_mode(features, cmd, data)?,
            CLASS_MAC => self.apply_mac(features, cmd, data)?,
            CLASS_VLAN => self.apply_vlan(features, cmd, data)?,
            // The driver acknowledges an announcement: nothing to keep.
            CLASS_ANNOUNCE if cmd == 0 => {}
            CLASS_MQ => self.apply_mq(features, cmd, data)?,
            _ => return Err(CommandError::Unknown(class, cmd)),
        }
        Ok(*self != before)
    }

    /// `VIRTIO_NET_CTRL_RX`: one of the mode flags, on or off.
    fn apply_rx_mode(
        &mut self,
        features: &CtrlFeatures,
        cmd: u8,
        data: &[u8],
    ) -> Result<(), CommandError> {
        if !features.rx || (cmd >= 2 && !features.rx_extra) {
            return Err(CommandError::NotNegotiated(CLASS_RX, cmd));
        }
        let [on] = data else {
            return Err(CommandError::Malformed(CLASS_RX, cmd));
        };
        let flag = match cmd {
            0 => &mut self.promisc,
            1 => &mut self.allmulti,
            2 => &mut self.alluni,
            3 => &mut self.nomulti,
            4 => &mut self.nouni,
            5 => &mut self.nobcast,
            _ => return Err(CommandError::Unknown(CLASS_RX, cmd)),
        };
        *flag = *on != 0;
        Ok(())
    }

    /// `VIRTIO_NET_CTRL_MAC`: the unicast and multicast tables, or the device address.
    fn apply_mac(
        &mut self,
        features: &CtrlFeatures,
        cmd: u8,
        data: &[u8],
    ) -> Result<(), CommandError> {
        let malformed = CommandError::Malformed(CLASS_MAC, cmd);
        match cmd {
            0 => {
                if !features.rx {
                    return Err(CommandError::NotNegotiated(CLASS_MAC, cmd));
                }
                let (unicast, rest) = mac_list(data).ok_or(malformed)?;
                let (multicast, rest) = mac_list(rest).ok_or(malformed)?;
                if !rest.is_empty() {
                    return Err(malformed);
                }
                self.unicast_overflow = unicast.len() > MAC_TABLE_ENTRIES;
                self.multicast_overflow = multicast.len() > MAC_TABLE_ENTRIES;
                self.unicast = if self.unicast_overflow {
                    Vec::new()
                } else {
                    unicast
                };
                self.multicast = if self.multicast_overflow {
                    Vec::new()
                } else {
                    multicast
                };
            }
            1 => {
                if !features.mac_addr {
                    return Err(CommandError::NotNegotiated(CLASS_MAC, cmd));
                }
                self.mac = data.try_into().map_err(|_| malformed)?;
            }
            _ => return Err(CommandError::Unknown(CLASS_MAC, cmd)),
        }
        Ok(())
    }

    /// `VIRTIO_NET_CTRL_VLAN`: a VLAN id added to or removed from the filter.
    fn apply_vlan(
        &mut self,
        features: &CtrlFeatures,
        cmd: u8,
        data: &[u8],
    ) -> Result<(), CommandError> {
        if !features.vlan {
            return Err(CommandError::NotNegotiated(CLASS_VLAN, cmd));
        }
        let vid: [u8; 2] = data
            .try_into()
            .map_err(|_| CommandError::Malformed(CLASS_VLAN, cmd))?;
        let vid = usize::from(u16::from_le_bytes(vid));
        if vid >= VLAN_IDS {
            return Err(CommandError::OutOfRange(CLASS_VLAN, cmd));
        }
        let bit = 1 << (vid % 32);
        match cmd {
            0 => self.vlans[vid / 32] |= bit,
            1 => self.vlans[vid / 32] &= !bit,
            _ => return Err(CommandError::Unknown(CLASS_VLAN, cmd)),
        }
        Ok(())
    }

    /// `VIRTIO_NET_CTRL_MQ`: the number of queue pairs the driver uses.
    fn apply_mq(
        &mut self,
        features: &CtrlFeatures,
        cmd: u8,
        data: &[u8],
    ) -> Result<(), CommandError> {
        if !features.mq {
            return Err(CommandError::NotNegotiated(CLASS_MQ, cmd));
        }
        if cmd != 0 {
            return Err(CommandError::Unknown(CLASS_MQ, cmd));
        }
        let pairs: [u8; 2] = data
            .try_into()
            .map_err(|_| CommandError::Malformed(CLASS_MQ, cmd))?;
        let pairs = u16::from_le_bytes(pairs);
        if pairs == 0 || pairs > features.max_pairs {
            return Err(CommandError::OutOfRange(CLASS_MQ, cmd));
        }
        self.active_pairs = pairs;
        Ok(())
    }
}

/// A `virtio_net_ctrl_mac` list: a little-endian entry count, then 6 bytes per entry.
fn mac_list(data: &[u8]) -> Option<(Vec<MacAddr>, &[u8])> {
    let count = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let bytes = count.checked_mul(6)?;
    let list = data.get(4..4usize.checked_add(bytes)?)?;
    let macs = list
        .chunks_exact(6)
        .map(|c| c.try_into().unwrap_or_default())
        .collect();
    Some((macs, &data[4 + bytes..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const OTHER: [u8; 6] = [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc];
    const MCAST: [u8; 6] = [0x01, 0, 0x5e, 0, 0, 0xfb];
    const ALL: CtrlFeatures = CtrlFeatures {
        rx: true,
        rx_extra: true,
        vlan: true,
        mac_addr: true,
        mq: true,
        max_pairs: 4,
    };

    fn frame(dst: [u8; 6], vlan: Option<u16>) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&OTHER);
        if let Some(v) = vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x00, 0, 0]);
        f
    }

    fn table(uni: &[[u8; 6]], multi: &[[u8; 6]]) -> Vec<u8> {
        let mut d = Vec::new();
        for list in [uni, multi] {
            d.extend_from_slice(&(list.len() as u32).to_le_bytes());
            for m in list {
                d.extend_from_slice(m);
            }
        }
        d
    }

    #[test]
    fn promiscuous_from_reset_then_filtered_like_qemu() {
        let mut f = RxFilter::new(MacAddr(OURS), true);
        assert!(f.accepts(&frame(OTHER, None)));
        assert_eq!(f.apply(&ALL, CLASS_RX, 0, &[0]), Ok(true));
        assert_eq!(f.apply(&ALL, CLASS_RX, 0, &[0]), Ok(false), "no change");
        assert!(!f.accepts(&frame(OTHER, None)));
        assert!(f.accepts(&frame(OURS, None)));
        assert!(f.accepts(&frame([0xff; 6], None)));
        assert!(!f.accepts(&frame(MCAST, None)));
        f.apply(&ALL, CLASS_MAC, 0, &table(&[OTHER], &[MCAST]))
            .unwrap();
        assert!(f.accepts(&frame(OTHER, None)));
        assert!(f.accepts(&frame(MCAST, None)));
        f.apply(&ALL, CLASS_RX, 5, &[1]).unwrap();
        assert!(!f.accepts(&frame([0xff; 6], None)), "nobcast");
        f.apply(&ALL, CLASS_RX, 3, &[1]).unwrap();
        assert!(!f.accepts(&frame(MCAST, None)), "nomulti");
        f.apply(&ALL, CLASS_RX, 4, &[1]).unwrap();
        assert!(!f.accepts(&frame(OURS, None)), "nouni");
    }

    #[test]
    fn vlan_table_and_mac_address() {
        let mut f = RxFilter::new(MacAddr(OURS), true);
        f.apply(&ALL, CLASS_RX, 0, &[0]).unwrap();
        assert!(!f.accepts(&frame(OURS, Some(5))), "no VLAN added yet");
        f.apply(&ALL, CLASS_VLAN, 0, &5u16.to_le_bytes()).unwrap();
        assert!(f.accepts(&frame(OURS, Some(5))));
        assert!(!f.accepts(&frame(OURS, Some(6))));
        assert_eq!(f.vlan_ids(), vec![5]);
        f.apply(&ALL, CLASS_VLAN, 1, &5u16.to_le_bytes()).unwrap();
        assert!(f.vlan_ids().is_empty());
        f.apply(&ALL, CLASS_MAC, 1, &OTHER).unwrap();
        assert!(f.accepts(&frame(OTHER, None)));
        assert!(!f.accepts(&frame(OURS, None)));
    }

    #[test]
    fn overflowing_tables_accept_everything_of_their_kind() {
        let mut f = RxFilter::new(MacAddr(OURS), false);
        f.apply(&ALL, CLASS_RX, 0, &[0]).unwrap();
        let many: Vec<[u8; 6]> = (0..65u8).map(|i| [0x02, 0, 0, 0, 0, i]).collect();
        f.apply(&ALL, CLASS_MAC, 0, &table(&many, &[])).unwrap();
        assert!(f.unicast_overflow && f.unicast.is_empty());
        assert!(f.accepts(&frame(OTHER, None)));
    }

    #[test]
    fn bad_commands_are_refused_and_change_nothing() {
        let mut f = RxFilter::new(MacAddr(OURS), true);
        let before = f.clone();
        let none = CtrlFeatures::default();
        assert_eq!(
            f.apply(&none, CLASS_RX, 0, &[0]),
            Err(CommandError::NotNegotiated(0, 0))
        );
        assert_eq!(
            f.apply(&ALL, CLASS_RX, 0, &[0, 0]),
            Err(CommandError::Malformed(0, 0))
        );
        assert_eq!(
            f.apply(&ALL, CLASS_RX, 9, &[0]),
            Err(CommandError::Unknown(0, 9))
        );
        // A count that promises more entries than the payload has.
        assert_eq!(
            f.apply(&ALL, CLASS_MAC, 0, &[200, 0, 0, 0, 1, 2]),
            Err(CommandError::Malformed(1, 0))
        );
        assert_eq!(
            f.apply(&ALL, CLASS_MAC, 0, &[0xff, 0xff, 0xff, 0xff]),
            Err(CommandError::Malformed(1, 0))
        );
        assert_eq!(
            f.apply(&ALL, CLASS_VLAN, 0, &5000u16.to_le_bytes()),
            Err(CommandError::OutOfRange(2, 0))
        );
        assert_eq!(
            f.apply(&ALL, CLASS_MQ, 0, &9u16.to_le_bytes()),
            Err(CommandError::OutOfRange(4, 0))
        );
        assert_eq!(f.apply(&ALL, 77, 0, &[]), Err(CommandError::Unknown(77, 0)));
        assert_eq!(f, before);
        assert_eq!(f.apply(&ALL, CLASS_MQ, 0, &2u16.to_le_bytes()), Ok(true));
        assert_eq!(f.active_pairs, 2);
    }
}
