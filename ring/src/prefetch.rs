//! Cache hints for guest memory the datapath is about to read.

#![allow(unsafe_code)] // the prefetch intrinsic (see the SAFETY note)

/// Asks the CPU to start loading `bytes` (up to 2 KiB: a whole MTU-sized frame, or the headers
/// of a bigger one) without waiting for them. A hint only: it never faults.
#[inline]
pub fn prefetch(bytes: &[u8]) {
    const PREFETCH_BYTES: usize = 2048;
    #[cfg(target_arch = "x86_64")]
    for offset in (0..bytes.len().min(PREFETCH_BYTES)).step_by(64) {
        // SAFETY: a prefetch never faults and does not change memory; the address is inside
        // `bytes` (offset < len), guest memory the caller has mapped.
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                bytes.as_ptr().add(offset).cast(),
                std::arch::x86_64::_MM_HINT_T0,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}
