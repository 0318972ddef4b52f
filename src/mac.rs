//! MAC addresses as text: `52:54:00:12:34:56`, as QEMU reads and prints them.

/// Parses `52:54:00:12:34:56`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    Some(mac)
}

/// Formats a MAC as QEMU prints it.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_like_qemu() {
        let m = parse_mac("52:54:00:12:34:5f").unwrap();
        assert_eq!(format_mac(&m), "52:54:00:12:34:5f");
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:5g",
            "5254:00:12:34:56:7",
            "5:54:00:12:34:56",
        ] {
            assert!(parse_mac(bad).is_none(), "{bad}");
        }
    }
}
