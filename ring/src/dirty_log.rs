//! Dirty-page logging for live migration (`VHOST_USER_PROTOCOL_F_LOG_SHMFD`, `VHOST_F_LOG_ALL`).
//!
//! The frontend shares a bitmap with one bit per 4 KiB guest page; while it has `LOG_ALL` on,
//! every guest page the device writes (rx buffers, used rings) gets its bit set, so that the
//! migration re-sends it. Bits are set with atomic ORs: the frontend reads and clears them
//! concurrently.

#![allow(unsafe_code)] // guest memory (see the SAFETY notes)

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use vm_memory::{FileOffset, MmapRegion};

use crate::memory_fault::{self, FaultDomain};

/// Bytes of guest memory one bit stands for.
pub const LOG_PAGE_SIZE: u64 = 4096;

/// The frontend's dirty bitmap, mapped shared.
#[derive(Debug)]
pub struct DirtyLog {
    map: Arc<MmapRegion>,
}

impl DirtyLog {
    /// Maps `size` bytes of the log at `offset` in `fd`, if the file has them; a shrink later
    /// is reported to `domain`.
    pub fn map(fd: OwnedFd, size: u64, offset: u64, domain: &Arc<FaultDomain>) -> io::Result<Self> {
        let size = usize::try_from(size)
            .ok()
            .filter(|&s| s > 0)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "dirty log size is zero or too large",
                )
            })?;
        offset.checked_add(size as u64).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "dirty log offset overflows")
        })?;
        memory_fault::check_fits(fd.as_fd(), offset, size as u64).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("dirty log file: {e}"))
        })?;
        let map = MmapRegion::from_file(FileOffset::new(File::from(fd), offset), size)
            .map_err(|e| io::Error::other(format!("mapping the dirty log: {e}")))?;
        let map = Arc::new(map);
        memory_fault::register(map.as_ptr(), map.size(), map.clone(), domain)?;
        Ok(DirtyLog { map })
    }

    /// Marks every page of `[gpa, gpa + len)` dirty. Pages beyond the bitmap are ignored (the
    /// frontend sized it for all of guest memory).
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = gpa / LOG_PAGE_SIZE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE_SIZE;
        let bytes = self.map.size() as u64;
        let base = self.map.as_ptr();
        for page in first..=last {
            let byte = page / 8;
            if byte >= bytes {
                break;
            }
            // SAFETY: `byte` < the mapping's size, so the pointer is inside the live shared
            // mapping owned by `self.map`; AtomicU8 has the alignment of u8, and the frontend
            // only ever accesses these bytes atomically as well.
            let cell = unsafe { AtomicU8::from_ptr(base.add(byte as usize)) };
            cell.fetch_or(1 << (page % 8), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_ring::GuestRam;

    fn domain() -> Arc<FaultDomain> {
        let (_, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        FaultDomain::new(theirs.as_fd()).unwrap()
    }

    #[test]
    fn marks_the_pages_a_range_touches() {
        let ram = GuestRam::with_size(4096);
        let log = DirtyLog::map(ram.file.try_clone().unwrap().into(), 64, 0, &domain()).unwrap();
        log.mark(0x1000, 1); // page 1
        log.mark(0x3fff, 2); // pages 3 and 4
        log.mark(0x10_0000, 0); // nothing
        log.mark(u64::MAX - 10, 5); // beyond the bitmap: ignored
        let bits = ram.read(0, 2);
        assert_eq!(bits, vec![0b0001_1010, 0]);
        assert!(DirtyLog::map(ram.file.try_clone().unwrap().into(), 0, 0, &domain()).is_err());
    }

    #[test]
    fn a_log_larger_than_its_file_is_refused() {
        let ram = GuestRam::with_size(4096);
        let fd = || ram.file.try_clone().unwrap().into();
        let err = DirtyLog::map(fd(), 8192, 0, &domain()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "dirty log file: 8192 bytes at offset 0 do not fit in the file's 4096 bytes"
        );
        assert!(DirtyLog::map(fd(), 4096, 1, &domain()).is_err());
        assert!(DirtyLog::map(fd(), 4096, 0, &domain()).is_ok());
    }
}
