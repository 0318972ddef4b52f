//! The AF_XDP backend (`-netdev af-xdp`): one AF_XDP socket and UMEM per queue pair, bound to
//! consecutive queues of a host interface from `start-queue` on.
//!
//! - [`options`]: QEMU's options and rules (in every build).
//! - `xsk` (feature `af-xdp`): the socket, its UMEM and rings, over libxdp.
//! - `queue` (feature `af-xdp`): the batched datapath of one queue pair.
//! - `prepare` (feature `af-xdp`): the privileged step behind `inhibit=on` (the helper binary).
//!
//! AF_XDP carries no virtio-net header: the backend offers no offloads. A frame fits one UMEM
//! frame (3,840 bytes received, 4,096 sent) unless the interface's MTU is larger: then the
//! sockets are multi-buffer (`XDP_USE_SG`, kernel 6.6+) under a program loaded with frags
//! support, and a frame spans up to 16 UMEM frames. Frames that do not fit are dropped and
//! counted.

pub mod options;
#[cfg(feature = "af-xdp")]
pub mod prepare;
#[cfg(feature = "af-xdp")]
mod queue;
#[cfg(feature = "af-xdp")]
mod xsk;

pub use options::{AfXdpOptions, XdpMode};

#[cfg(feature = "af-xdp")]
pub use backend::AfXdpBackend;

/// Frame limits (bytes, Ethernet header included) and the locked memory one queue's UMEM needs.
#[cfg(feature = "af-xdp")]
pub use xsk::{MAX_RX_FRAME, MAX_TX_FRAME, UMEM_BYTES as UMEM_BYTES_PER_QUEUE};

#[cfg(feature = "af-xdp")]
mod backend {
    use std::io;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use log::{info, warn};

    use super::options::{AfXdpOptions, XdpMode};
    use super::queue::{AfXdpQueue, Drops, QueueState, Slot, SlotState};
    use super::xsk::{self, CreateError, FragsProgram, SocketSpec, Xsk};
    use crate::fd_source::FdSource;
    use crate::options::OptionError;
    use crate::{Backend, BackendQueue, Capabilities, Error};

    /// An af-xdp netdev: its sockets, one per queue pair.
    #[derive(Debug)]
    pub struct AfXdpBackend {
        ifname: String,
        native: bool,
        first_queue: u32,
        slots: Vec<Slot>,
        /// The sockets' descriptors, for the kernel's counters (they live as long as the slots).
        fds: Vec<i32>,
        drops: Arc<Drops>,
        /// `shutdown` ran: the sockets are closed (or close when their device lets go).
        closed: AtomicBool,
        /// The multi-buffer program we attached ourselves (taken off at shutdown).
        program: Mutex<Option<FragsProgram>>,
    }

    impl AfXdpBackend {
        /// Creates (or adopts) one socket per queue and binds it.
        pub fn open(opts: &AfXdpOptions, fds: &mut dyn FdSource) -> Result<Self, Error> {
            let ifname = opts.ifname.as_str();
            let ifindex = interface_index(ifname)?;
            let queues = u32::from(opts.queue_count());
            let first_queue = opts.first_queue();
            check_queues_exist(ifname, first_queue, queues)?;
            let mut adopted = take_sockets(opts, fds)?.into_iter();
            super::prepare::raise_memlock(queues as usize * xsk::UMEM_BYTES);
            let mut modes: &[bool] = match opts.mode {
                Some(XdpMode::Native) => &[true],
                Some(XdpMode::Skb) => &[false],
                None => &[true, false],
            };
            let inhibit = opts.inhibit == Some(true);
            // Frames larger than one UMEM frame need multi-buffer sockets, and a program that
            // takes frames in pieces, which libxdp's own set-up does not load: then we load it.
            let mtu = interface_mtu(ifname);
            let multi_buffer = mtu.is_some_and(|m| m + ETHERNET_HEADER > xsk::MAX_RX_FRAME);
            let program = if multi_buffer && !inhibit {
                let (program, native) = FragsProgram::attach(ifindex, modes).map_err(|e| {
                    let message = format!(
                        "failed to attach a multi-buffer XDP program to '{ifname}' in {} mode \
                         (its MTU {} needs frames over {} bytes)",
                        opts.mode.map_or("native or skb", XdpMode::name),
                        mtu.unwrap_or_default(),
                        xsk::MAX_RX_FRAME
                    );
                    match e.raw_os_error() {
                        // The driver refuses the mode, or the MTU in that mode: configuration.
                        Some(libc::EOPNOTSUPP)
                        | Some(libc::EINVAL)
                        | Some(libc::E2BIG)
                        | Some(libc::EBUSY)
                        | Some(libc::ERANGE) => invalid(format!("{message}: {e}")),
                        _ => Error::io(message, e),
                    }
                })?;
                modes = if native { &[true] } else { &[false] };
                Some(program)
            } else {
                None
            };
            let mut slots = Vec::new();
            let mut socket_fds = Vec::new();
            let mut native_used = modes[0];
            for i in 0..queues {
                let queue_id = first_queue + i;
                let (socket, native) = Xsk::create(SocketSpec {
                    ifname,
                    queue_id,
                    modes,
                    force_copy: opts.force_copy == Some(true),
                    inhibit: inhibit || program.is_some(),
                    adopt: adopted.next(),
                    multi_buffer,
                })
                .map_err(|e| create_error(e, ifname, queue_id, i, queues))?;
                native_used = native;
                if let Some(program) = &program {
                    // The program redirects a frame to the socket at its receive queue's index.
                    xsk::map_insert(program.map(), queue_id, socket.fd())
                        .map_err(|e| Error::io("inserting the AF_XDP socket into its map", e))?;
                }
                let map_entry = match &opts.map_path {
                    Some(path) => {
                        let index = opts.first_map_index() + i;
                        let map =
                            xsk::insert_into_pinned_map(path, index, socket.fd()).map_err(|e| {
                                Error::io(
                                    format!("failed to insert AF_XDP socket into map {path}"),
                                    e,
                                )
                            })?;
                        Some((map, index))
                    }
                    None => None,
                };
                socket_fds.push(socket.fd());
                slots.push(SlotState::holding(QueueState::new(
                    socket,
                    map_entry,
                    multi_buffer,
                )));
            }
            if !inhibit
                && program.is_none()
                && xsk::attached_program(ifindex, native_used).is_none()
            {
                return Err(Error::io(
                    format!("no XDP program loaded on '{ifname}', ifindex: {ifindex}"),
                    io::Error::from(io::ErrorKind::NotFound),
                ));
            }
            info!(
                "af-xdp {ifname}: {queues} queue(s) from {first_queue}, {}{}{}",
                if inhibit {
                    "program not loaded by us"
                } else if native_used {
                    "native mode"
                } else {
                    "skb mode"
                },
                if multi_buffer { ", multi-buffer" } else { "" },
                mtu.map(|m| format!(", MTU {m}")).unwrap_or_default()
            );
            Ok(AfXdpBackend {
                ifname: ifname.to_string(),
                native: native_used,
                first_queue,
                slots,
                fds: socket_fds,
                drops: Arc::default(),
                closed: AtomicBool::new(false),
                program: Mutex::new(program),
            })
        }
    }

    /// Bytes of Ethernet header (with one VLAN tag) on top of the MTU.
    const ETHERNET_HEADER: usize = 18;

    /// The descriptors `sock-fds` names, each checked to be an AF_XDP socket.
    fn take_sockets(opts: &AfXdpOptions, fds: &mut dyn FdSource) -> Result<Vec<OwnedFd>, Error> {
        let mut adopted = Vec::new();
        for name in opts.sock_fd_names() {
            let fd = fds.take_fd(name)?;
            if crate::sys::socket_domain(fd.as_raw_fd()).ok() != Some(libc::AF_XDP) {
                return Err(invalid(format!(
                    "'sock-fds': descriptor '{name}' is not an AF_XDP socket"
                )));
            }
            adopted.push(fd);
        }
        Ok(adopted)
    }

    /// The interface's MTU.
    fn interface_mtu(ifname: &str) -> Option<usize> {
        crate::sys::interface_mtu(ifname)
            .ok()
            .and_then(|m| usize::try_from(m).ok())
    }

    fn invalid(text: String) -> Error {
        Error::Option(OptionError::Invalid(text))
    }

    fn interface_index(ifname: &str) -> Result<u32, Error> {
        let c = std::ffi::CString::new(ifname)
            .map_err(|_| invalid(format!("failed to get ifindex for '{ifname}'")))?;
        // SAFETY: a NUL-terminated name; the call reads nothing else.
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if index == 0 {
            let e = io::Error::last_os_error();
            return Err(invalid(format!(
                "failed to get ifindex for '{ifname}': {e}"
            )));
        }
        Ok(index)
    }

    /// Refuses queues the interface does not have (the kernel's bind error would only say
    /// "Invalid argument").
    fn check_queues_exist(ifname: &str, first: u32, count: u32) -> Result<(), Error> {
        let dir = format!("/sys/class/net/{ifname}/queues");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let rx_queues = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
            .count() as u64;
        if u64::from(first) + u64::from(count) > rx_queues {
            return Err(invalid(format!(
                "'start-queue'={first} with 'queues'={count} needs rx queues {first}..{} of \
                 '{ifname}', which has {rx_queues}",
                u64::from(first) + u64::from(count) - 1
            )));
        }
        Ok(())
    }

    fn memlock_limit() -> String {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a writable rlimit.
        unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
        if limit.rlim_cur == libc::RLIM_INFINITY {
            "unlimited".into()
        } else {
            format!("{} KiB", limit.rlim_cur / 1024)
        }
    }

    fn create_error(e: CreateError, ifname: &str, queue_id: u32, index: u32, queues: u32) -> Error {
        match e {
            CreateError::Umem(e) => {
                let hint = match e.raw_os_error() {
                    Some(libc::EPERM) | Some(libc::EACCES) => " (creating an AF_XDP socket needs \
                         CAP_NET_RAW; without it, take sockets from a privileged helper with \
                         inhibit=on,sock-fds=)"
                        .to_string(),
                    Some(libc::ENOBUFS) | Some(libc::ENOMEM) => format!(
                        " (each queue's UMEM locks {} MiB, {} MiB for {queues} queue(s), on top \
                         of what the process has locked already; RLIMIT_MEMLOCK is {}: raise it, \
                         e.g. LimitMEMLOCK= in the unit, or grant CAP_IPC_LOCK)",
                        xsk::UMEM_BYTES >> 20,
                        (xsk::UMEM_BYTES * queues as usize) >> 20,
                        memlock_limit()
                    ),
                    _ => String::new(),
                };
                Error::io(
                    format!("failed to create umem for {ifname} queue_index: {index}{hint}"),
                    e,
                )
            }
            CreateError::Socket(e) => {
                let message =
                    format!("failed to create AF_XDP socket for {ifname} queue_id: {queue_id}");
                match e.raw_os_error() {
                    // The interface or the mode is wrong: a configuration error.
                    Some(libc::EOPNOTSUPP)
                    | Some(libc::EINVAL)
                    | Some(libc::ENODEV)
                    | Some(libc::EBUSY) => invalid(format!("{message}: {e}")),
                    _ => Error::io(message, e),
                }
            }
        }
    }

    impl Backend for AfXdpBackend {
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                queue_pairs: self.slots.len() as u16,
                ..Capabilities::PLAIN_ONE_QUEUE
            }
        }

        fn queue(&self, index: u16) -> Result<Box<dyn BackendQueue>, Error> {
            let slot = self
                .slots
                .get(usize::from(index))
                .ok_or(Error::NoSuchQueue(index))?;
            match AfXdpQueue::take(slot, self.drops.clone()) {
                Some(q) => Ok(Box::new(q)),
                None => Err(Error::io(
                    format!("af-xdp {} queue {index}", self.ifname),
                    io::Error::new(io::ErrorKind::AddrInUse, "in use by another port"),
                )),
            }
        }

        fn describe(&self) -> String {
            format!(
                "af-xdp ifname={} queues={} start-queue={} mode={}",
                self.ifname,
                self.slots.len(),
                self.first_queue,
                if self.native { "native" } else { "skb" }
            )
        }

        fn shutdown(&self) {
            self.closed.store(true, Ordering::SeqCst);
            for slot in &self.slots {
                SlotState::close(slot);
            }
            drop(
                self.program
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(),
            );
        }

        fn counters(&self) -> Vec<(&'static str, u64)> {
            let mut kernel = xsk::Statistics::default();
            let open = !self.closed.load(Ordering::SeqCst);
            for &fd in self.fds.iter().filter(|_| open) {
                match Xsk::statistics(fd) {
                    Ok(s) => {
                        kernel.rx_dropped += s.rx_dropped;
                        kernel.rx_invalid_descs += s.rx_invalid_descs;
                        kernel.tx_invalid_descs += s.tx_invalid_descs;
                        kernel.rx_ring_full += s.rx_ring_full;
                        kernel.rx_fill_ring_empty_descs += s.rx_fill_ring_empty_descs;
                    }
                    Err(e) => warn!("af-xdp {}: XDP_STATISTICS: {e}", self.ifname),
                }
            }
            let d = &self.drops;
            vec![
                ("tx-dropped-too-big", d.tx_too_big.load(Ordering::Relaxed)),
                ("rx-dropped-too-big", d.rx_too_big.load(Ordering::Relaxed)),
                ("rx-bad-descriptors", d.rx_bad_desc.load(Ordering::Relaxed)),
                ("xdp-rx-dropped", kernel.rx_dropped),
                ("xdp-rx-ring-full", kernel.rx_ring_full),
                ("xdp-fill-ring-empty", kernel.rx_fill_ring_empty_descs),
                ("xdp-rx-invalid-descs", kernel.rx_invalid_descs),
                ("xdp-tx-invalid-descs", kernel.tx_invalid_descs),
            ]
        }
    }
}
