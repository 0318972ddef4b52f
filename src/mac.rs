//! MAC addresses: the type the device, the ports and QMP use, read and printed as QEMU does
//! (`52:54:00:12:34:56`).

use std::fmt;
use std::str::FromStr;

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

/// Text that is not six colon-separated pairs of hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a MAC address (six hex pairs separated by ':')")]
pub struct MacParseError(String);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// The six bytes.
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// Group addresses (multicast and broadcast): the first byte's low bit is set.
    pub const fn is_multicast(self) -> bool {
        self.0[0] & 1 != 0
    }

    /// An Ethernet frame's destination address, if the frame is long enough to have one.
    pub fn destination_of(frame: &[u8]) -> Option<MacAddr> {
        frame.get(..6)?.try_into().ok().map(MacAddr)
    }
}

/// Exactly six bytes.
impl TryFrom<&[u8]> for MacAddr {
    type Error = std::array::TryFromSliceError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        bytes.try_into().map(MacAddr)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || MacParseError(text.to_string());
        let parts: Vec<&str> = text.split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(parts) {
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        Ok(MacAddr(mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_like_qemu() {
        let m: MacAddr = "52:54:00:12:34:5f".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:12:34:5f");
        assert!(!m.is_multicast() && MacAddr::BROADCAST.is_multicast());
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:5g",
            "5254:00:12:34:56:7",
            "5:54:00:12:34:56",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        let frame = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x08];
        assert_eq!(
            MacAddr::destination_of(&frame),
            Some(MacAddr([1, 2, 3, 4, 5, 6]))
        );
        assert_eq!(MacAddr::destination_of(&frame[..5]), None);
    }
}
