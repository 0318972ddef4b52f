//! Recovery from guest memory that vanishes under its mapping (SIGBUS).
//!
//! A frontend can shrink the file behind a region it already handed over (or its tmpfs or
//! hugetlbfs can run out of pages); the next access to a page past the file's end raises SIGBUS
//! in whichever thread touched it: the port's own worker, or another port's thread delivering a
//! hub frame. Without a handler that kills the whole daemon.
//!
//! Every mapping of frontend memory (regions, dirty logs) is registered here with the
//! [`FaultDomain`] of the connection it came from. On SIGBUS inside a registered mapping the
//! handler puts anonymous zero pages over the whole mapping (the faulting access then completes
//! on them, as on any other hostile guest content), marks the domain faulted and shuts its
//! connection down; the port's thread sees the hang-up, tears the device down and the frontend
//! is disconnected. Other ports never notice. A SIGBUS anywhere else goes to the previous
//! handler (the default one kills the process, as before). The technique is libwayland's for
//! client shared memory.
//!
//! The handler may not lock or allocate, so the registry it reads is a list of fixed-size
//! chunks of atomic slots that only grows (chunks are never freed). A slot is cleared before its
//! mapping can be unmapped: the registry holds a reference to every registered mapping and
//! drops it in [`sweep`] only once nothing else holds one, so a thread faulting inside a mapping
//! (which holds a reference while it accesses it) can never race its unregistration.

#![allow(unsafe_code)] // guest memory (see the SAFETY notes)

use std::any::Any;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use log::error;

/// Why a frontend's file cannot back a mapping.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error("the descriptor is {0}, not a memory file (memfd, tmpfs or hugetlbfs)")]
    NotAFile(&'static str),
    #[error("{len} bytes at offset {offset} do not fit in the file's {size} bytes")]
    TooSmall { offset: u64, len: u64, size: u64 },
    #[error("fstat: {0}")]
    Io(#[from] io::Error),
}

/// Whether a file can still shrink under its mappings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shrink {
    /// A memfd sealed with `F_SEAL_SHRINK`: the pages checked now stay.
    Sealed,
    /// No seal: a shrink later is caught by the SIGBUS handler.
    Possible,
}

/// Checks, before mapping, that `len` bytes at `offset` exist in the regular file behind `fd`
/// (an access past a file's end is a SIGBUS, and `mmap` does not check), and whether the file
/// is sealed against shrinking.
pub fn check_fits(fd: BorrowedFd<'_>, offset: u64, len: u64) -> Result<Shrink, FitError> {
    let (kind, size) = crate::file_info::file_type_and_size(fd.as_raw_fd())?;
    if kind != libc::S_IFREG {
        let what = match kind {
            0 => "an anonymous inode",
            libc::S_IFDIR => "a directory",
            libc::S_IFCHR => "a character device",
            libc::S_IFBLK => "a block device",
            libc::S_IFIFO => "a pipe",
            libc::S_IFSOCK => "a socket",
            _ => "not a regular file",
        };
        return Err(FitError::NotAFile(what));
    }
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(FitError::TooSmall { offset, len, size });
    }
    let sealed = crate::file_info::memfd_seals(fd.as_raw_fd())
        .is_some_and(|seals| seals & libc::F_SEAL_SHRINK != 0);
    Ok(if sealed {
        Shrink::Sealed
    } else {
        Shrink::Possible
    })
}

/// Slots per chunk of the registry.
const CHUNK_SLOTS: usize = 64;

/// Where faults in one frontend connection's mappings are reported.
#[derive(Debug)]
pub struct FaultDomain {
    /// A duplicate of the connection's socket, shut down on a fault (it wakes the port's
    /// thread out of its read); it lives as long as the domain, so it is never a reused number.
    conn: OwnedFd,
    faulted: AtomicBool,
    fault_addr: AtomicUsize,
}

impl FaultDomain {
    /// A domain for the connection `conn`.
    pub fn new(conn: BorrowedFd<'_>) -> io::Result<Arc<Self>> {
        Ok(Arc::new(FaultDomain {
            conn: conn.try_clone_to_owned()?,
            faulted: AtomicBool::new(false),
            fault_addr: AtomicUsize::new(0),
        }))
    }

    /// The faulting address, if a mapping of this domain lost its memory.
    pub fn fault(&self) -> Option<usize> {
        self.faulted
            .load(Ordering::Acquire)
            .then(|| self.fault_addr.load(Ordering::Relaxed))
    }

    /// Called from the signal handler: only atomics and async-signal-safe calls.
    fn trip(&self, addr: usize) {
        self.fault_addr.store(addr, Ordering::Relaxed);
        self.faulted.store(true, Ordering::Release);
        // SAFETY: shutdown(2) is async-signal-safe; `conn` is open for the domain's lifetime.
        unsafe { libc::shutdown(self.conn.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// One registered mapping, readable from the signal handler.
#[derive(Debug)]
struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    domain: AtomicPtr<FaultDomain>,
    /// Set last when registering, cleared first when unregistering.
    live: AtomicBool,
}

#[derive(Debug)]
struct Chunk {
    slots: [Slot; CHUNK_SLOTS],
    next: AtomicPtr<Chunk>,
}

impl Chunk {
    fn new() -> Self {
        Chunk {
            slots: std::array::from_fn(|_| Slot {
                start: AtomicUsize::new(0),
                len: AtomicUsize::new(0),
                domain: AtomicPtr::new(ptr::null_mut()),
                live: AtomicBool::new(false),
            }),
            next: AtomicPtr::new(ptr::null_mut()),
        }
    }
}

/// A registration as the normal (non-signal) side keeps it.
struct Entry {
    slot: &'static Slot,
    /// Keeps the mapping alive while it is registered.
    mapping: Arc<dyn Any + Send + Sync>,
    /// Keeps the domain alive while the slot points at it.
    _domain: Arc<FaultDomain>,
}

/// The signal-safe side of the registry: the first chunk (leaked, like every chunk).
static FIRST: AtomicPtr<Chunk> = AtomicPtr::new(ptr::null_mut());
/// The normal side: registrations, and the lock that serialises slot writes.
static ENTRIES: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
/// The SIGBUS action installed before ours, for faults that are not ours.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

fn chunks() -> impl Iterator<Item = &'static Chunk> {
    let mut next = FIRST.load(Ordering::Acquire);
    std::iter::from_fn(move || {
        // SAFETY: chunks are leaked boxes, published with Release and never freed.
        let chunk = unsafe { next.as_ref() }?;
        next = chunk.next.load(Ordering::Acquire);
        Some(chunk)
    })
}

/// A free slot; the caller holds the `ENTRIES` lock, so no other thread hands it out.
fn free_slot() -> &'static Slot {
    let mut last: Option<&'static Chunk> = None;
    for chunk in chunks() {
        if let Some(s) = chunk.slots.iter().find(|s| !s.live.load(Ordering::Relaxed)) {
            return s;
        }
        last = Some(chunk);
    }
    let chunk: &'static Chunk = Box::leak(Box::new(Chunk::new()));
    let link = last.map_or(&FIRST, |c| &c.next);
    link.store(ptr::from_ref(chunk).cast_mut(), Ordering::Release);
    &chunk.slots[0]
}

fn entries() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    ENTRIES.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers `len` bytes of frontend memory mapped at `start`, owned by `mapping`, as part of
/// `domain`. The registry keeps `mapping` alive until [`sweep`] finds nobody else holding it.
pub fn register(
    start: *const u8,
    len: usize,
    mapping: Arc<dyn Any + Send + Sync>,
    domain: &Arc<FaultDomain>,
) -> io::Result<()> {
    install()?;
    let mut entries = entries();
    let slot = free_slot();
    slot.start.store(start as usize, Ordering::Relaxed);
    slot.len.store(len, Ordering::Relaxed);
    slot.domain
        .store(Arc::as_ptr(domain).cast_mut(), Ordering::Relaxed);
    slot.live.store(true, Ordering::Release);
    entries.push(Entry {
        slot,
        mapping,
        _domain: domain.clone(),
    });
    sweep_locked(&mut entries);
    Ok(())
}

/// Unregisters and releases every mapping nobody but the registry holds any more.
pub fn sweep() {
    sweep_locked(&mut entries());
}

fn sweep_locked(entries: &mut Vec<Entry>) {
    entries.retain(|e| {
        if Arc::strong_count(&e.mapping) > 1 {
            return true;
        }
        // Cleared before the mapping (and the domain) can go: the handler skips it from now.
        e.slot.live.store(false, Ordering::Release);
        false
    });
}

/// Installs the SIGBUS handler (once per process).
pub fn install() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value that we fill in.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            on_sigbus;
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: an all-zero sigaction is valid storage for the previous action.
        let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are to live sigaction structs; the handler only uses
        // async-signal-safe operations.
        let ret = unsafe { libc::sigaction(libc::SIGBUS, &action, &mut previous) };
        if ret < 0 {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        let _ = PREVIOUS.set(previous);
        Ok(())
    });
    (*result).map_err(|e| {
        error!("cannot install the SIGBUS handler (errno {e})");
        io::Error::from_raw_os_error(e)
    })
}

/// The registered mapping containing `addr`: its start, length and domain.
fn lookup(addr: usize) -> Option<(usize, usize, *const FaultDomain)> {
    for chunk in chunks() {
        for slot in &chunk.slots {
            if !slot.live.load(Ordering::Acquire) {
                continue;
            }
            let start = slot.start.load(Ordering::Relaxed);
            let len = slot.len.load(Ordering::Relaxed);
            if addr >= start && addr - start < len {
                return Some((start, len, slot.domain.load(Ordering::Relaxed)));
            }
        }
    }
    None
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler; si_addr is the
    // faulting address for SIGBUS.
    let addr = unsafe { (*info).si_addr() } as usize;
    if let Some((start, len, domain)) = lookup(addr) {
        // SAFETY: [start, start + len) is a registered frontend mapping, kept mapped by the
        // registry (and by the faulting thread's own reference); replacing it with private
        // anonymous pages only changes what its accesses see. mmap is a plain system call.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            // SAFETY: the slot was live, so its registry entry holds the domain alive.
            unsafe { &*domain }.trip(addr);
            return;
        }
    }
    // Not ours (or the pages could not be replaced): the previous action takes the fault when
    // the access is retried on return.
    if let Some(previous) = PREVIOUS.get() {
        // SAFETY: restoring an action the kernel gave us; sigaction is async-signal-safe.
        unsafe { libc::sigaction(libc::SIGBUS, previous, ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use vm_memory::{FileOffset, MmapRegion};

    #[test]
    fn a_shrunk_file_faults_its_domain_not_the_process() {
        let ram = crate::test_ring::GuestRam::with_size(4 * 4096);
        let map = MmapRegion::<()>::from_file(
            FileOffset::new(ram.file.try_clone().unwrap(), 0),
            4 * 4096,
        )
        .unwrap();
        let map = Arc::new(map);
        let (ours, theirs) = UnixStream::pair().unwrap();
        let domain = FaultDomain::new(theirs.as_fd()).unwrap();
        register(map.as_ptr(), map.size(), map.clone(), &domain).unwrap();
        assert_eq!(domain.fault(), None);
        ram.file.set_len(0).unwrap();
        // SAFETY: the mapping is alive (we hold it); past the file's end the read faults and
        // the handler replaces the pages, so it completes.
        let byte = unsafe { ptr::read_volatile(map.as_ptr().add(4096)) };
        assert_eq!(byte, 0, "the access completed on zero pages");
        let at = domain.fault().expect("domain marked faulted");
        assert_eq!(at, map.as_ptr() as usize + 4096);
        // The connection was shut down: its peer reads end-of-file.
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut &ours, &mut buf).unwrap(), 0);
        // Still registered while we hold it; released once we let go.
        drop(map);
        sweep();
        assert!(lookup(at).is_none());
    }
}
