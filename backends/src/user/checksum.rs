//! The Internet checksum (RFC 1071) over a frame's payload, eight bytes per step: what a guest
//! without checksum offload costs per byte. smoltcp's own sums two bytes per step and took over
//! a third of the stack's time toward such a guest.

/// The one's-complement sum of `data` as 16-bit big-endian words (an odd last byte padded with
/// zero), folded to 16 bits, not complemented.
pub fn sum(data: &[u8]) -> u16 {
    // Words are added in native byte order: the one's-complement sum commutes with swapping
    // the bytes of every word, so one swap at the end gives the big-endian sum. Each 64-bit
    // step adds two 32-bit halves into a 64-bit accumulator, which cannot overflow below
    // 2^32 steps.
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (w & 0xffff_ffff) + (w >> 32);
    }
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_ne_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    let folded = acc as u16;
    if cfg!(target_endian = "little") {
        folded.swap_bytes()
    } else {
        folded
    }
}

/// Adds two folded one's-complement sums.
pub fn combine(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    ((s & 0xffff) + (s >> 16)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 as written: big-endian 16-bit words, one at a time.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for w in data.chunks(2) {
            acc += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn matches_the_reference_for_every_length_and_alignment() {
        let mut x: u32 = 0x1234_5678;
        let data: Vec<u8> = (0..3000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for start in 0..9 {
            for len in (0..200).chain([1499, 1500, 1501, 2991 - start]) {
                let part = &data[start..start + len];
                assert_eq!(sum(part), reference(part), "start {start} len {len}");
            }
        }
        assert_eq!(sum(&[0xff; 64]), 0xffff);
        assert_eq!(combine(0xffff, 1), 1);
    }
}
