//! One AF_XDP socket with its own UMEM, over libxdp (the only module of the backend that touches
//! raw pointers: the rings live in memory shared with the kernel).
//!
//! The UMEM is an anonymous mapping of [`FRAMES`] frames of [`FRAME_SIZE`] bytes. libxdp creates
//! the socket, maps its four rings and (unless inhibited) loads its default XDP program, which
//! redirects the bound queue's frames into the socket. The ring accessors are libxdp's own
//! (exported from its static library), so the memory ordering is the library's, not ours.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::ptr;

use libxdp_sys as xdp;

/// Bytes per UMEM frame (one page: what libxdp and QEMU use).
pub const FRAME_SIZE: usize = 4096;
/// Entries in each of the four rings: eight batches of 64, and small enough that one queue's
/// UMEM (6 MiB) fits the common 8 MiB `RLIMIT_MEMLOCK` default of a process that may not lock
/// memory otherwise.
pub const RING_SIZE: u32 = 512;
/// Frames that cycle through the fill and rx rings (both can be full at once).
pub const RX_FRAMES: usize = 2 * RING_SIZE as usize;
/// Frames for transmission (in the tx ring, in flight, or free).
pub const TX_FRAMES: usize = RING_SIZE as usize;
/// Frames in one UMEM.
pub const FRAMES: usize = RX_FRAMES + TX_FRAMES;
/// Bytes of one UMEM (what must be locked in memory per queue).
pub const UMEM_BYTES: usize = FRAMES * FRAME_SIZE;
/// The largest frame the kernel delivers into one UMEM frame (it keeps `XDP_PACKET_HEADROOM`
/// in front of the data).
pub const MAX_RX_FRAME: usize = FRAME_SIZE - xdp::XDP_PACKET_HEADROOM as usize;
/// The largest frame one tx descriptor carries.
pub const MAX_TX_FRAME: usize = FRAME_SIZE;
/// Descriptors one frame may span with `XDP_USE_SG` (the kernel's `MAX_SKB_FRAGS` + 1 is the
/// limit for copy mode; 16 frames hold 64 KiB).
pub const MAX_FRAME_DESCS: usize = 16;
/// Descriptor option: more descriptors of the same frame follow.
pub const XDP_PKT_CONTD: u32 = 1;
/// Bind flag for multi-buffer sockets.
const XDP_USE_SG: u16 = 1 << 4;

/// Tries (50 ms apart) at what a socket closed a moment ago may still hold in the kernel: its
/// UMEM's locked memory, its interface queue.
const RELEASE_ATTEMPTS: u32 = 10;

const SOL_XDP: libc::c_int = 283;
const XDP_STATISTICS: libc::c_int = 7;
const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1;
const XDP_FLAGS_SKB_MODE: u32 = 2;
const XDP_FLAGS_DRV_MODE: u32 = 4;

/// How a socket is to be created.
#[derive(Debug)]
pub struct SocketSpec<'a> {
    pub ifname: &'a str,
    pub queue_id: u32,
    /// Attach modes to try in order: `XDP_FLAGS_DRV_MODE` (true) or `XDP_FLAGS_SKB_MODE`.
    pub modes: &'a [bool],
    /// Bind with `XDP_COPY`.
    pub force_copy: bool,
    /// Load no program: one is attached already and puts this socket in its map.
    pub inhibit: bool,
    /// An already-open, unbound AF_XDP socket to use instead of a new one (`sock-fds`).
    pub adopt: Option<OwnedFd>,
    /// Bind with `XDP_USE_SG`: a frame may span several UMEM frames (kernel 6.6+).
    pub multi_buffer: bool,
}

/// A ring descriptor: UMEM address, length, options ([`XDP_PKT_CONTD`]).
pub type Desc = xdp::xdp_desc;

/// The kernel's per-socket drop counters (`XDP_STATISTICS`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Statistics {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
}

/// The four rings; boxed because libxdp keeps pointers to them.
struct Rings {
    fill: xdp::xsk_ring_prod,
    comp: xdp::xsk_ring_cons,
    rx: xdp::xsk_ring_cons,
    tx: xdp::xsk_ring_prod,
}

impl Rings {
    fn unmapped() -> Box<Rings> {
        // SAFETY: the ring structs are plain integers and pointers, for which all-zero is the
        // "not mapped yet" state libxdp expects before it fills them in.
        Box::new(unsafe { std::mem::zeroed() })
    }
}

/// An AF_XDP socket bound to one interface queue, its UMEM and its rings.
pub struct Xsk {
    area: *mut u8,
    rings: Box<Rings>,
    umem: *mut xdp::xsk_umem,
    socket: *mut xdp::xsk_socket,
    fd: RawFd,
}

// SAFETY: the raw pointers are owned by this value alone (the UMEM area, the libxdp objects and
// the ring mappings they point into); moving it to another thread moves all of them, and every
// method takes `&mut self` or only reads the kernel-shared indexes atomically through libxdp.
unsafe impl Send for Xsk {}

impl std::fmt::Debug for Xsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xsk").field("fd", &self.fd).finish()
    }
}

fn errno_of(ret: libc::c_int) -> io::Error {
    io::Error::from_raw_os_error(ret.checked_neg().filter(|e| *e > 0).unwrap_or(libc::EIO))
}

impl Xsk {
    /// Maps a UMEM, creates (or adopts) the socket and binds it to `spec.queue_id` in the first
    /// of `spec.modes` that works; returns the socket and whether that mode was native.
    pub fn create(spec: SocketSpec<'_>) -> Result<(Xsk, bool), CreateError> {
        let ifname = CString::new(spec.ifname)
            .map_err(|_| CreateError::Socket(io::Error::from(io::ErrorKind::InvalidInput)))?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let area = unsafe {
            libc::mmap(
                ptr::null_mut(),
                UMEM_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if area == libc::MAP_FAILED {
            return Err(CreateError::Umem(io::Error::last_os_error()));
        }
        let mut xsk = Xsk {
            area: area.cast(),
            rings: Rings::unmapped(),
            umem: ptr::null_mut(),
            socket: ptr::null_mut(),
            fd: -1,
        };
        let umem_config = xdp::xsk_umem_config {
            fill_size: RING_SIZE,
            comp_size: RING_SIZE,
            frame_size: FRAME_SIZE as u32,
            frame_headroom: 0,
            flags: 0,
        };
        let rings: *mut Rings = &mut *xsk.rings;
        let mut attempts = 0;
        let ret = loop {
            // libxdp takes the descriptor it is given, and closes it if registering fails: it
            // gets a duplicate each time, so that the adopted socket outlives a failed attempt.
            let attempt_fd = match &spec.adopt {
                Some(fd) => Some(
                    crate::sys::dup_cloexec(fd.as_raw_fd())
                        .map_err(CreateError::Umem)?
                        .into_raw_fd(),
                ),
                None => None,
            };
            // SAFETY: `area` is a live mapping of UMEM_BYTES owned by `xsk`; the ring structs
            // are boxed and live as long as the UMEM (dropped after it in `Drop`); the
            // duplicate descriptor is libxdp's from here on, whatever the result.
            let ret = unsafe {
                match attempt_fd {
                    Some(fd) => xdp::xsk_umem__create_with_fd(
                        &mut xsk.umem,
                        fd,
                        xsk.area.cast(),
                        UMEM_BYTES as u64,
                        &mut (*rings).fill,
                        &mut (*rings).comp,
                        &umem_config,
                    ),
                    None => xdp::xsk_umem__create(
                        &mut xsk.umem,
                        xsk.area.cast(),
                        UMEM_BYTES as u64,
                        &mut (*rings).fill,
                        &mut (*rings).comp,
                        &umem_config,
                    ),
                }
            };
            // The kernel gives a closed socket's UMEM back to the locked-memory account from a
            // work queue: right after a netdev_del, its pages may still count. Give it a moment.
            attempts += 1;
            if ret != -libc::ENOBUFS || attempts == RELEASE_ATTEMPTS {
                break ret;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        if ret != 0 {
            xsk.umem = ptr::null_mut();
            return Err(CreateError::Umem(errno_of(ret)));
        }
        // The UMEM holds its own duplicate of an adopted socket.
        drop(spec.adopt);
        let mut bind_flags = xdp::XDP_USE_NEED_WAKEUP as u16;
        if spec.force_copy {
            bind_flags |= xdp::XDP_COPY as u16;
        }
        if spec.multi_buffer {
            bind_flags |= XDP_USE_SG;
        }
        let mut result = Err(CreateError::Socket(io::Error::from(
            io::ErrorKind::InvalidInput,
        )));
        for &native in spec.modes {
            let config = xdp::xsk_socket_config {
                rx_size: RING_SIZE,
                tx_size: RING_SIZE,
                __bindgen_anon_1: xdp::xsk_socket_config__bindgen_ty_1 {
                    libxdp_flags: if spec.inhibit {
                        xdp::XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD
                    } else {
                        0
                    },
                },
                xdp_flags: XDP_FLAGS_UPDATE_IF_NOEXIST
                    | if native {
                        XDP_FLAGS_DRV_MODE
                    } else {
                        XDP_FLAGS_SKB_MODE
                    },
                bind_flags,
            };
            let mut attempts = 0;
            let ret = loop {
                // SAFETY: `ifname` is NUL-terminated; the UMEM was created above; the rx/tx
                // ring structs are boxed in `xsk` and outlive the socket (deleted first in
                // `Drop`). A failed attempt leaves the UMEM as it was (QEMU retries the same).
                let ret = unsafe {
                    xdp::xsk_socket__create(
                        &mut xsk.socket,
                        ifname.as_ptr(),
                        spec.queue_id,
                        xsk.umem,
                        &mut (*rings).rx,
                        &mut (*rings).tx,
                        &config,
                    )
                };
                // The queue of a socket closed a moment ago (a netdev_del before this
                // netdev_add) is freed from a work queue: until then binding says EBUSY.
                attempts += 1;
                if ret != -libc::EBUSY || attempts == RELEASE_ATTEMPTS {
                    break ret;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            };
            if ret == 0 {
                result = Ok(native);
                break;
            }
            xsk.socket = ptr::null_mut();
            result = Err(CreateError::Socket(errno_of(ret)));
        }
        let native = result?;
        // SAFETY: the socket was just created.
        xsk.fd = unsafe { xdp::xsk_socket__fd(xsk.socket) };
        Ok((xsk, native))
    }

    /// The socket's descriptor (readable: rx ring not empty; writable: tx ring has room).
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Frame bytes `addr..addr + len` of the UMEM, if they lie inside it.
    pub fn frame(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(addr).ok()?;
        if start.checked_add(len)? > UMEM_BYTES {
            return None;
        }
        // SAFETY: the range was checked against the mapping; the kernel wrote it before handing
        // the descriptor over and does not touch it until the frame is given back.
        Some(unsafe { std::slice::from_raw_parts(self.area.add(start), len) })
    }

    /// Writable frame bytes `addr..addr + len` (a frame this socket owns, not in any ring).
    pub fn frame_mut(&mut self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let start = usize::try_from(addr).ok()?;
        if start.checked_add(len)? > UMEM_BYTES {
            return None;
        }
        // SAFETY: as in `frame`; `&mut self` makes this the only view of the mapping.
        Some(unsafe { std::slice::from_raw_parts_mut(self.area.add(start), len) })
    }

    /// Puts as many of `addrs` (from the back) on the fill ring as fit; returns how many.
    pub fn fill(&mut self, addrs: &mut Vec<u64>) -> usize {
        let want = u32::try_from(addrs.len()).unwrap_or(u32::MAX);
        let mut idx = 0;
        // SAFETY: the ring struct belongs to this socket's UMEM. libxdp reserves all or nothing,
        // so ask for no more than is free.
        let got = unsafe {
            let want = xdp::xsk_prod_nb_free(&mut self.rings.fill, want).min(want);
            xdp::xsk_ring_prod__reserve(&mut self.rings.fill, want, &mut idx)
        };
        for i in 0..got {
            let addr = addrs.pop().unwrap_or_default();
            // SAFETY: `idx + i` lies in the reservation just made.
            unsafe { *xdp::xsk_ring_prod__fill_addr(&mut self.rings.fill, idx + i) = addr };
        }
        if got > 0 {
            // SAFETY: submits exactly the entries reserved and written above.
            unsafe { xdp::xsk_ring_prod__submit(&mut self.rings.fill, got) };
        }
        got as usize
    }

    /// Whether the kernel wants a `recvfrom` to look at the fill ring again.
    pub fn fill_needs_wakeup(&self) -> bool {
        // SAFETY: reads the flags word of this socket's mapped fill ring.
        unsafe { xdp::xsk_ring_prod__needs_wakeup(&self.rings.fill) != 0 }
    }

    /// Moves completed tx frames to `free`; returns how many.
    pub fn reap_completions(&mut self, free: &mut Vec<u64>) -> usize {
        let mut idx = 0;
        // SAFETY: this socket's completion ring; libxdp bounds the peek.
        let n = unsafe { xdp::xsk_ring_cons__peek(&mut self.rings.comp, RING_SIZE, &mut idx) };
        for i in 0..n {
            // SAFETY: `idx + i` lies in the entries just peeked.
            free.push(unsafe { *xdp::xsk_ring_cons__comp_addr(&self.rings.comp, idx + i) });
        }
        if n > 0 {
            // SAFETY: releases exactly the entries peeked above.
            unsafe { xdp::xsk_ring_cons__release(&mut self.rings.comp, n) };
        }
        n as usize
    }

    /// Peeks up to `max` received descriptors; returns the first index and the count.
    pub fn rx_peek(&mut self, max: u32) -> (u32, u32) {
        let mut idx = 0;
        // SAFETY: this socket's rx ring; libxdp bounds the peek.
        let n = unsafe { xdp::xsk_ring_cons__peek(&mut self.rings.rx, max, &mut idx) };
        (idx, n)
    }

    /// The received descriptor at ring index `idx` (one that `rx_peek` returned).
    pub fn rx_desc(&self, idx: u32) -> Desc {
        // SAFETY: libxdp masks the index into the ring; the caller only asks for peeked entries,
        // which the kernel does not write until they are released.
        unsafe { *xdp::xsk_ring_cons__rx_desc(&self.rings.rx, idx) }
    }

    /// Gives `n` peeked rx descriptors back to the kernel.
    pub fn rx_release(&mut self, n: u32) {
        // SAFETY: the caller releases no more than it peeked.
        unsafe { xdp::xsk_ring_cons__release(&mut self.rings.rx, n) };
    }

    /// Reserves up to `n` tx slots; returns the first index and how many.
    pub fn tx_reserve(&mut self, n: u32) -> (u32, u32) {
        let mut idx = 0;
        // SAFETY: this socket's tx ring. libxdp reserves all or nothing, so ask for no more
        // than is free.
        let got = unsafe {
            let n = xdp::xsk_prod_nb_free(&mut self.rings.tx, n).min(n);
            xdp::xsk_ring_prod__reserve(&mut self.rings.tx, n, &mut idx)
        };
        (idx, got)
    }

    /// Writes the reserved tx slot `idx` (`options`: [`XDP_PKT_CONTD`] if the frame goes on).
    pub fn tx_set(&mut self, idx: u32, addr: u64, len: u32, options: u32) {
        // SAFETY: `idx` lies in a reservation the caller made and has not submitted yet.
        unsafe {
            *xdp::xsk_ring_prod__tx_desc(&mut self.rings.tx, idx) =
                xdp::xdp_desc { addr, len, options }
        };
    }

    /// Hands `n` written tx slots to the kernel.
    pub fn tx_submit(&mut self, n: u32) {
        // SAFETY: the caller reserved and wrote `n` slots.
        unsafe { xdp::xsk_ring_prod__submit(&mut self.rings.tx, n) };
    }

    /// Whether frames sit in the tx ring that the kernel has not taken yet.
    pub fn tx_pending(&self) -> bool {
        let tx = &self.rings.tx;
        // SAFETY: the producer and consumer words of this socket's mapped tx ring, read
        // atomically (the kernel moves the consumer).
        unsafe {
            let consumer = (*tx.consumer.cast::<std::sync::atomic::AtomicU32>())
                .load(std::sync::atomic::Ordering::Acquire);
            let producer = (*tx.producer.cast::<std::sync::atomic::AtomicU32>())
                .load(std::sync::atomic::Ordering::Relaxed);
            producer != consumer
        }
    }

    /// Whether the kernel wants a `sendto` to look at the tx ring.
    pub fn tx_needs_wakeup(&self) -> bool {
        // SAFETY: reads the flags word of this socket's mapped tx ring.
        unsafe { xdp::xsk_ring_prod__needs_wakeup(&self.rings.tx) != 0 }
    }

    /// Asks the kernel to transmit what the tx ring holds. `WouldBlock` means it stopped early
    /// (its per-call budget, or a busy device) and wants another call.
    pub fn kick_tx(&self) -> io::Result<()> {
        // SAFETY: a zero-length send on our socket, no buffers.
        let ret =
            unsafe { libc::sendto(self.fd, ptr::null(), 0, libc::MSG_DONTWAIT, ptr::null(), 0) };
        if ret >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS) => {
                Err(io::Error::from(io::ErrorKind::WouldBlock))
            }
            // The interface went down: the frames stay in the ring until it comes back.
            Some(libc::ENETDOWN) => Ok(()),
            _ => Err(e),
        }
    }

    /// Asks the kernel to look at the fill ring again (zero-copy drivers sleep without it).
    pub fn kick_rx(&self) {
        // SAFETY: a zero-length receive on our socket, no buffers.
        unsafe {
            libc::recvfrom(
                self.fd,
                ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
    }

    /// The kernel's drop counters for this socket.
    pub fn statistics(fd: RawFd) -> io::Result<Statistics> {
        // SAFETY: xdp_statistics is six u64 counters; zero is a valid value.
        let mut stats: xdp::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<xdp::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `stats` is a writable xdp_statistics and `len` its size.
        let ret = unsafe {
            libc::getsockopt(
                fd,
                SOL_XDP,
                XDP_STATISTICS,
                (&mut stats as *mut xdp::xdp_statistics).cast(),
                &mut len,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Statistics {
            rx_dropped: stats.rx_dropped,
            rx_invalid_descs: stats.rx_invalid_descs,
            tx_invalid_descs: stats.tx_invalid_descs,
            rx_ring_full: stats.rx_ring_full,
            rx_fill_ring_empty_descs: stats.rx_fill_ring_empty_descs,
        })
    }
}

impl Drop for Xsk {
    fn drop(&mut self) {
        // SAFETY: each object is deleted once, socket before UMEM before the memory under them;
        // libxdp detaches its default program when the interface's last socket goes.
        unsafe {
            if !self.socket.is_null() {
                xdp::xsk_socket__delete(self.socket);
            }
            if !self.umem.is_null() {
                xdp::xsk_umem__delete(self.umem);
            }
            libc::munmap(self.area.cast(), UMEM_BYTES);
        }
    }
}

/// Why [`Xsk::create`] failed: the UMEM (memory, locked-memory limit) or the socket (interface,
/// queue, mode, program).
#[derive(Debug)]
pub enum CreateError {
    Umem(io::Error),
    Socket(io::Error),
}

/// Inserts `socket` at `index` of the XSK map pinned at `path` (`map-path`); returns the map's
/// descriptor, for taking the entry out again.
pub fn insert_into_pinned_map(path: &str, index: u32, socket: RawFd) -> io::Result<OwnedFd> {
    let c_path = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a NUL-terminated path; the returned descriptor, if any, is ours.
    let fd = unsafe { xdp::bpf_obj_get(c_path.as_ptr()) };
    if fd < 0 {
        return Err(errno_of(fd));
    }
    // SAFETY: `fd` was just returned by bpf_obj_get and nothing else owns it.
    let map = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    map_insert(&map, index, socket)?;
    Ok(map)
}

/// Takes entry `index` out of an XSK map (when the socket goes).
pub fn remove_from_map(map: &OwnedFd, index: u32) -> io::Result<()> {
    // SAFETY: the key points at a u32 local of the map's key size.
    let ret = unsafe { xdp::bpf_map_delete_elem(map.as_raw_fd(), (&index as *const u32).cast()) };
    if ret != 0 {
        return Err(errno_of(ret));
    }
    Ok(())
}

/// The id of the XDP program attached to `ifindex` in the given mode, if any.
pub fn attached_program(ifindex: u32, native: bool) -> Option<u32> {
    let mut id = 0u32;
    let flags: libc::c_int = if native { 4 } else { 2 };
    let ifindex = libc::c_int::try_from(ifindex).ok()?;
    // SAFETY: `id` is a writable u32.
    let ret = unsafe { xdp::bpf_xdp_query_id(ifindex, flags, &mut id) };
    (ret == 0 && id != 0).then_some(id)
}

/// Attaches libxdp's default XSK program to `ifindex` (native where the driver allows, else skb;
/// nothing if it is attached already) and returns its XSK map.
pub fn load_default_program(ifindex: u32) -> io::Result<OwnedFd> {
    let ifindex =
        libc::c_int::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))?;
    let mut map_fd: libc::c_int = -1;
    // SAFETY: `map_fd` is a writable int; libxdp loads and attaches the program.
    let ret = unsafe { xdp::xsk_setup_xdp_prog(ifindex, &mut map_fd) };
    if ret != 0 || map_fd < 0 {
        return Err(errno_of(ret));
    }
    // SAFETY: libxdp returned a fresh descriptor of the map that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(map_fd) })
}

/// A new AF_XDP socket, not bound, without `FD_CLOEXEC` (to be passed on).
pub fn unbound_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket call; the descriptor returned is ours.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, owned by nobody else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Puts `socket` at `index` of the XSK map `map`.
pub fn map_insert(map: &OwnedFd, index: u32, socket: RawFd) -> io::Result<()> {
    // SAFETY: key and value point at 4-byte locals, the XSK map's key and value sizes.
    let ret = unsafe {
        xdp::bpf_map_update_elem(
            map.as_raw_fd(),
            (&index as *const u32).cast(),
            (&socket as *const RawFd).cast(),
            0,
        )
    };
    if ret != 0 {
        return Err(errno_of(ret));
    }
    Ok(())
}

/// Pins `map` at `path` on a bpf filesystem (for `map-path`).
pub fn pin(map: &OwnedFd, path: &str) -> io::Result<()> {
    let c_path = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a NUL-terminated path and a map descriptor we own.
    let ret = unsafe { xdp::bpf_obj_pin(map.as_raw_fd(), c_path.as_ptr()) };
    if ret != 0 {
        return Err(errno_of(ret));
    }
    Ok(())
}

/// Takes program `prog_id` off `ifindex` if it is still the one attached there (in whichever
/// mode); a program someone attached since stays.
pub fn detach_program(ifindex: u32, prog_id: u32) -> io::Result<()> {
    const XDP_FLAGS_REPLACE: u32 = 1 << 4;
    let ifindex =
        libc::c_int::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))?;
    // SAFETY: asks for a descriptor of a program by id; the result, if any, is ours.
    let fd = unsafe { xdp::bpf_prog_get_fd_by_id(prog_id) };
    if fd < 0 {
        return Err(errno_of(fd));
    }
    // SAFETY: just returned by the kernel, owned by nobody else.
    let prog = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let opts = xdp::bpf_xdp_attach_opts {
        sz: std::mem::size_of::<xdp::bpf_xdp_attach_opts>(),
        old_prog_fd: prog.as_raw_fd(),
    };
    let mut result = Err(io::Error::from_raw_os_error(libc::ENOENT));
    for mode in [XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE] {
        // SAFETY: `opts` is a valid, sized bpf_xdp_attach_opts naming the expected program.
        let ret = unsafe { xdp::bpf_xdp_detach(ifindex, mode | XDP_FLAGS_REPLACE, &opts) };
        if ret == 0 {
            return Ok(());
        }
        result = Err(errno_of(ret));
    }
    result
}

/// libxdp's XSK program, loaded by us with multi-buffer support (`BPF_F_XDP_HAS_FRAGS`, which
/// libxdp's own set-up does not ask for) and attached to an interface until dropped. The sockets
/// are then created with the program load inhibited and put into its map by the caller.
pub struct FragsProgram {
    program: *mut xdp::xdp_program,
    ifindex: libc::c_int,
    mode: xdp::xdp_attach_mode,
    map: OwnedFd,
}

// SAFETY: the program object is only touched again in `Drop`, by whichever thread drops it.
unsafe impl Send for FragsProgram {}
// SAFETY: shared references only read the map descriptor.
unsafe impl Sync for FragsProgram {}

impl std::fmt::Debug for FragsProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FragsProgram")
            .field("ifindex", &self.ifindex)
            .finish()
    }
}

impl FragsProgram {
    /// Loads the program and attaches it to `ifindex` in the first of `modes` (native = true)
    /// that works; returns it and whether that was native.
    pub fn attach(ifindex: u32, modes: &[bool]) -> io::Result<(FragsProgram, bool)> {
        let ifindex = libc::c_int::try_from(ifindex)
            .map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))?;
        let file = CString::new("xsk_def_xdp_prog.o").map_err(|_| io::Error::other("name"))?;
        let map_name = CString::new("xsks_map").map_err(|_| io::Error::other("name"))?;
        let mut last = io::Error::from_raw_os_error(libc::EINVAL);
        for &native in modes {
            // SAFETY: libxdp opens its embedded object by name; the result is checked below
            // and closed on every path that does not keep it.
            let program =
                unsafe { xdp::xdp_program__find_file(file.as_ptr(), ptr::null(), ptr::null_mut()) };
            // SAFETY: libxdp_get_error only inspects the pointer value.
            let err = unsafe { xdp::libxdp_get_error(program.cast()) };
            if err != 0 || program.is_null() {
                return Err(io::Error::from_raw_os_error(
                    i32::try_from(-err).unwrap_or(libc::ENOENT),
                ));
            }
            let mode = if native {
                xdp::xdp_attach_mode_XDP_MODE_NATIVE
            } else {
                xdp::xdp_attach_mode_XDP_MODE_SKB
            };
            // SAFETY: `program` is a live, not yet loaded program object.
            let ret = unsafe {
                match xdp::xdp_program__set_xdp_frags_support(program, true) {
                    0 => xdp::xdp_program__attach(program, ifindex, mode, 0),
                    e => e,
                }
            };
            if ret != 0 {
                last = errno_of(ret);
                // SAFETY: closes the object opened above, attached nowhere.
                unsafe { xdp::xdp_program__close(program) };
                continue;
            }
            // SAFETY: the program is loaded; its object owns the map descriptor, which we
            // duplicate so that ours outlives nothing it should not.
            let map_fd = unsafe {
                xdp::bpf_object__find_map_fd_by_name(
                    xdp::xdp_program__bpf_obj(program),
                    map_name.as_ptr(),
                )
            };
            let map = if map_fd < 0 {
                Err(errno_of(map_fd))
            } else {
                crate::sys::dup_cloexec(map_fd)
            };
            let attached = FragsProgram {
                program,
                ifindex,
                mode,
                map: match map {
                    Ok(m) => m,
                    Err(e) => {
                        // SAFETY: detaches and closes what was attached just above.
                        unsafe {
                            xdp::xdp_program__detach(program, ifindex, mode, 0);
                            xdp::xdp_program__close(program);
                        }
                        return Err(e);
                    }
                },
            };
            return Ok((attached, native));
        }
        Err(last)
    }

    /// The program's XSK map (queue index → socket).
    pub fn map(&self) -> &OwnedFd {
        &self.map
    }
}

impl Drop for FragsProgram {
    fn drop(&mut self) {
        // SAFETY: detaches and closes the program attached in `attach`, once.
        unsafe {
            xdp::xdp_program__detach(self.program, self.ifindex, self.mode, 0);
            xdp::xdp_program__close(self.program);
        }
    }
}
