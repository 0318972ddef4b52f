//! TCP sequence-number arithmetic (RFC 9293, 3.4): numbers wrap at 2^32 and compare within
//! half the space.

/// How far `a` is past `b` (negative if before).
pub fn delta(a: u32, b: u32) -> i32 {
    i32::from_ne_bytes(a.wrapping_sub(b).to_ne_bytes())
}

/// `a` comes after `b`.
pub fn after(a: u32, b: u32) -> bool {
    delta(a, b) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_hold_across_the_wrap() {
        assert!(after(5, u32::MAX - 5));
        assert!(!after(u32::MAX - 5, 5));
        assert_eq!(delta(5, u32::MAX - 5), 11);
        assert_eq!(delta(u32::MAX - 5, 5), -11);
        assert!(!after(7, 7));
    }
}
