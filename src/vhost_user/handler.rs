//! The vhost-user message dispatcher: one frontend connection driving one [`NetDevice`].
//!
//! Written against QEMU's vhost-user spec rather than on top of the `vhost` crate's request
//! handler, because real frontends send what that handler refuses: QEMU sends
//! `SET_VRING_ENABLE` before `SET_FEATURES`, QEMU 7.2 re-adds identical memory regions, and
//! `SEND_RARP`/`NET_SET_MTU` must be handled. A bad message gets a failed REPLY_ACK (or a logged
//! error) and the connection goes on; only a broken wire (bad header, oversized payload) ends it.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use log::{debug, info};
use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfig, VhostUserLog, VhostUserMemory, VhostUserMemoryRegion,
    VhostUserSingleMemoryRegion, VhostUserU64, VhostUserVringAddr, VhostUserVringState,
};
use vhost::vhost_user::VhostUserProtocolFeatures;
use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryMmap};

use super::frontend_fd::{self, FdError, Notifier};
use super::memory::{MemoryTable, RegionDesc, MAX_MEM_SLOTS};
use super::socket::{Connection, Message, WireError};
use crate::device::config_space::CONFIG_LEN;
use crate::device::counters::RateLimitedLog;
use crate::device::features::VHOST_USER_F_PROTOCOL_FEATURES;
use crate::device::{lock, NetDevice};
use vhost_user_netd_ring::dirty_log::DirtyLog;
use vhost_user_netd_ring::memory_fault::FaultDomain;
use vhost_user_netd_ring::vring::{RingError, Vring};

/// Low byte of a kick/call payload: the vring index; this bit: no descriptor (polling).
const VRING_NOFD_MASK: u64 = 0x100;
const VRING_INDEX_MASK: u64 = 0xff;
/// Largest config space read we serve.
const MAX_CONFIG_READ: u32 = 256;

/// Protocol features the daemon implements end to end.
pub fn offered_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::RARP
        | VhostUserProtocolFeatures::MTU
        | VhostUserProtocolFeatures::RESET_DEVICE
        | VhostUserProtocolFeatures::LOG_SHMFD
        | VhostUserProtocolFeatures::BACKEND_REQ
}

/// Why one request failed (the connection goes on).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("payload is {got} bytes, {want} expected")]
    BadPayload { got: usize, want: usize },
    #[error("vring {index} does not exist ({count} vrings)")]
    NoSuchVring { index: u32, count: usize },
    #[error("{0:?} is not supported")]
    NotSupported(FrontendReq),
    #[error("protocol features {0:#x} were not offered")]
    ProtocolNotOffered(u64),
    #[error("vring size {0} is not a power of two up to 32768")]
    BadRingSize(u32),
    #[error("{what} address {va:#x} is not in any memory region")]
    AddressNotMapped { what: &'static str, va: u64 },
    #[error("vring {index}: {err}")]
    Ring { index: u32, err: RingError },
    #[error("vring base {0} too large")]
    BaseTooLarge(u32),
    #[error("config read of {size} bytes at {offset} is malformed")]
    BadConfigRead { offset: u32, size: u32 },
    #[error("virtio-net config space is read-only")]
    ConfigReadOnly,
    #[error("{0} without a descriptor")]
    MissingFd(&'static str),
    #[error("memory table of {count} regions in {bytes} bytes")]
    BadMemoryTable { count: usize, bytes: usize },
    #[error("{regions} regions but {fds} descriptors")]
    RegionFdMismatch { regions: usize, fds: usize },
    #[error("polling mode (no kick descriptor) is not supported")]
    PollingUnsupported,
    #[error("guest memory lock poisoned")]
    MemoryLockPoisoned,
    #[error("request {0} is not supported")]
    Unsupported(u32),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error(transparent)]
    Memory(#[from] super::memory::MemoryError),
    #[error(transparent)]
    Fd(#[from] FdError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a connection ended other than by the frontend closing it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(
        "guest memory at host address {0:#x} vanished (the frontend shrank the file behind a \
         mapping): device torn down"
    )]
    MemoryLost(usize),
}

/// What to send back.
enum Outcome {
    /// A reply payload (requests that always answer).
    Reply(Vec<u8>),
    /// No payload; a REPLY_ACK is sent if asked for.
    Done,
}

fn parse<T: ByteValued + Default>(payload: &[u8]) -> Result<T, RequestError> {
    let mut v = T::default();
    let want = v.as_slice().len();
    if payload.len() != want {
        return Err(RequestError::BadPayload {
            got: payload.len(),
            want,
        });
    }
    v.as_mut_slice().copy_from_slice(payload);
    Ok(v)
}

fn parse_prefix<T: ByteValued + Default>(payload: &[u8]) -> Result<T, RequestError> {
    let mut v = T::default();
    let want = v.as_slice().len();
    if payload.len() < want {
        return Err(RequestError::BadPayload {
            got: payload.len(),
            want,
        });
    }
    v.as_mut_slice().copy_from_slice(&payload[..want]);
    Ok(v)
}

fn u64_reply(value: u64) -> Outcome {
    Outcome::Reply(VhostUserU64::new(value).as_slice().to_vec())
}

fn region_desc(r: &VhostUserMemoryRegion) -> RegionDesc {
    RegionDesc {
        guest_phys_addr: r.guest_phys_addr,
        memory_size: r.memory_size,
        user_addr: r.user_addr,
        mmap_offset: r.mmap_offset,
    }
}

/// One frontend connection.
#[derive(Debug)]
pub struct Handler {
    conn: Connection,
    /// Shared with the port, which rebinds backends and sets the link from QMP.
    device: Arc<Mutex<NetDevice>>,
    memory: MemoryTable,
    protocol: VhostUserProtocolFeatures,
    features_set: bool,
    /// `SET_VRING_ENABLE` as requested, per vring (applied once features are known).
    enable_requested: Vec<bool>,
    /// Refused requests are logged at most once a second (a hostile frontend can send many).
    log: RateLimitedLog,
}

impl Handler {
    pub fn new(conn: Connection, device: Arc<Mutex<NetDevice>>) -> std::io::Result<Self> {
        // Two per queue pair, then the control queue.
        let vrings = usize::from(lock(&device).queue_pairs()) * 2 + 1;
        // A mapping that loses its memory shuts this connection down (see memory_fault).
        let domain = FaultDomain::new(conn.socket())?;
        Ok(Handler {
            conn,
            device,
            memory: MemoryTable::new(domain),
            protocol: VhostUserProtocolFeatures::empty(),
            features_set: false,
            enable_requested: vec![false; vrings],
            log: RateLimitedLog::default(),
        })
    }

    /// Serves requests until the frontend goes away, the wire breaks or a mapping of the
    /// frontend's memory loses its pages.
    pub fn run(&mut self) -> Result<(), ConnectionError> {
        let end = loop {
            let msg = match self.conn.recv() {
                Ok(m) => m,
                Err(e) => break e,
            };
            if let Err(e) = self.serve(msg) {
                break e;
            }
        };
        // The frontend sees the end now, not when the last duplicate of the socket closes.
        self.conn.shutdown();
        match (self.memory.domain().fault(), end) {
            (Some(addr), _) => Err(ConnectionError::MemoryLost(addr)),
            (None, WireError::Closed) => Ok(()),
            (None, e) => Err(e.into()),
        }
    }

    /// Handles one message and sends what it calls for.
    pub fn serve(&mut self, mut msg: Message) -> Result<(), WireError> {
        let request = msg.request;
        let need_reply = msg.need_reply();
        let name = FrontendReq::try_from(request)
            .map_or_else(|_| format!("#{request}"), |r| format!("{r:?}"));
        debug!(
            "vhost-user request {name} ({} bytes, {} fds)",
            msg.payload.len(),
            msg.fds.len()
        );
        let result = self.dispatch(&mut msg);
        match result {
            Ok(Outcome::Reply(payload)) => self.conn.reply(request, &payload)?,
            Ok(Outcome::Done) => {
                if need_reply && self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                    self.conn.reply(request, VhostUserU64::new(0).as_slice())?;
                }
            }
            Err(e) => {
                lock(&self.device).count_failed_request();
                self.log.warn(|| format!("vhost-user {name} failed: {e}"));
                match request_kind(request) {
                    // Requests that always answer must answer, or the frontend hangs.
                    ReplyKind::U64 => self.conn.reply(request, VhostUserU64::new(0).as_slice())?,
                    ReplyKind::VringState => {
                        let index = parse_prefix::<VhostUserVringState>(&msg.payload)
                            .map_or(0, |s| s.index);
                        self.conn
                            .reply(request, VhostUserVringState::new(index, 0).as_slice())?
                    }
                    ReplyKind::Config => {
                        let mut hdr =
                            parse_prefix::<VhostUserConfig>(&msg.payload).unwrap_or_default();
                        hdr.size = 0;
                        self.conn.reply(request, hdr.as_slice())?
                    }
                    // The frontend waits for this reply; a u64 of 1 tells it the log failed.
                    ReplyKind::LogBase => {
                        self.conn.reply(request, VhostUserU64::new(1).as_slice())?
                    }
                    ReplyKind::AckOnly => {
                        if need_reply
                            && self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK)
                        {
                            self.conn.reply(request, VhostUserU64::new(1).as_slice())?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn vring_index(&self, index: u32) -> Result<usize, RequestError> {
        let i = index as usize;
        if i < self.enable_requested.len() {
            Ok(i)
        } else {
            Err(RequestError::NoSuchVring {
                index,
                count: self.enable_requested.len(),
            })
        }
    }

    /// Whether vring `index` is the control queue.
    fn is_ctrl(dev: &NetDevice, index: u32) -> bool {
        index == u32::from(dev.queue_pairs()) * 2
    }

    /// Runs `f` on vring `index`: a pair's rx or tx ring, or the control queue's.
    fn with_ring<R>(
        dev: &NetDevice,
        index: u32,
        f: impl FnOnce(&mut Vring) -> R,
    ) -> Result<R, RequestError> {
        if Self::is_ctrl(dev, index) {
            return Ok(f(&mut dev.ctrl().lock().ring));
        }
        let (pair, rx) = dev.vring(index)?;
        let mut q = pair.lock();
        Ok(f(if rx { &mut q.rx.ring } else { &mut q.tx.ring }))
    }

    fn guest_memory(dev: &NetDevice) -> vm_memory::GuestMemoryLoadGuard<GuestMemoryMmap> {
        dev.memory().memory()
    }

    fn set_guest_memory(dev: &NetDevice, mem: GuestMemoryMmap) -> Result<(), RequestError> {
        let atomic = dev.memory();
        let guard = atomic
            .lock()
            .map_err(|_| RequestError::MemoryLockPoisoned)?;
        guard.replace(mem);
        Ok(())
    }

    /// Applies the effective enable state of a vring: as requested with protocol features (or
    /// before features are known, since QEMU enables rings first), always on without them.
    fn apply_enable(&self, dev: &NetDevice, index: usize) -> Result<(), RequestError> {
        let enabled =
            if !self.features_set || dev.acked_features() & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
                self.enable_requested[index]
            } else {
                true
            };
        if Self::is_ctrl(dev, index as u32) {
            let mut ctrl = dev.ctrl().lock();
            ctrl.ring.enabled = enabled;
            if let (true, Some(kick)) = (enabled, &ctrl.ring.kick) {
                // Commands queued while disabled are handled now.
                let _ = kick.write(1);
            }
            return Ok(());
        }
        let (pair, rx) = dev.vring(index as u32)?;
        let mut p = pair.lock();
        if rx {
            p.rx.ring.enabled = enabled;
        } else {
            p.tx.ring.enabled = enabled;
        }
        p.update_interest();
        Ok(())
    }

    fn reset(&mut self, dev: &mut NetDevice) -> Result<(), RequestError> {
        dev.ctrl().lock().reset();
        for index in 0..self.enable_requested.len() - 1 {
            let (pair, rx) = dev.vring(index as u32)?;
            let mut p = pair.lock();
            p.stop_ring(rx);
            if rx {
                p.rx.ring.reset();
            } else {
                p.tx.ring.reset();
            }
            p.update_interest();
        }
        // The device goes back to its initial state; the session's protocol features stay
        // negotiated (QEMU resets right after negotiating and keeps using REPLY_ACK).
        self.enable_requested.iter_mut().for_each(|e| *e = false);
        self.features_set = false;
        dev.rings_changed()?;
        dev.set_features(0)?;
        Ok(())
    }

    fn dispatch(&mut self, msg: &mut Message) -> Result<Outcome, RequestError> {
        let Ok(request) = FrontendReq::try_from(msg.request) else {
            return Err(RequestError::Unsupported(msg.request));
        };
        let run = request_fn(request).ok_or(RequestError::NotSupported(request))?;
        let device = Arc::clone(&self.device);
        let mut guard = lock(&device);
        run(self, &mut guard, msg)
    }

    fn get_features(
        &mut self,
        dev: &mut NetDevice,
        _: &mut Message,
    ) -> Result<Outcome, RequestError> {
        Ok(u64_reply(dev.offered_features()))
    }

    fn set_features(
        &mut self,
        dev: &mut NetDevice,
        msg: &mut Message,
    ) -> Result<Outcome, RequestError> {
        let v = parse::<VhostUserU64>(&msg.payload)?.value;
        debug!("features acked by the frontend: {v:#x}");
        dev.set_features(v)?;
        self.features_set = true;
        for i in 0..self.enable_requested.len() {
            self.apply_enable(dev, i)?;
        }
        Ok(Outcome::Done)
    }

    fn set_owner(&mut self, _: &mut NetDevice, _: &mut Message) -> Result<Outcome, RequestError> {
        Ok(Outcome::Done)
    }

    fn reset_device(
        &mut self,
        dev: &mut NetDevice,
        _: &mut Message,
    ) -> Result<Outcome, RequestError> {
        self.reset(dev)?;
        Ok(Outcome::Done)
    }

    fn get_protocol_features(
        &mut self,
        _: &mut NetDevice,
        _: &mut Message,
    ) -> Result<Outcome, RequestError> {
        Ok(u64_reply(offered_protocol_features().bits()))
    }

    fn set_protocol_features(
        &mut self,
        _: &mut NetDevice,
        msg: &mut Message,
    ) -> Result<Outcome, RequestError> {
        let v = parse::<VhostUserU64>(&msg.payload)?.value;
        let offered = offered_protocol_features();
        let Some(f) = VhostUserProtocolFeatures::from_bits(v).filter(|f| offered.contains(*f))
        else {
            return Err(RequestError::ProtocolNotOffered(v));
        };
        self.protocol = f;
        Ok(Outcome::Done)
    }

    /// Counted in vrings, as libvhost-user and rust-vmm frontends (cloud-hypervisor) read it:
    /// two per pair and the control queue. QEMU compares it with its queue pairs, which the
    /// larger figure satisfies too.
    fn get_queue_num(
        &mut self,
        dev: &mut NetDevice,
        _: &mut Message,
    ) -> Result<Outcome, RequestError> {
        Ok(u64_reply(u64::from(dev.queue_pairs()) * 2 + 1))
    }

    fn get_max_mem_slots(
        &mut self,
        _: &mut NetDevice,
        _: &mut Message,
    ) -> Result<Outcome, RequestError> {
        Ok(u64_reply(MAX_MEM_SLOTS))
    }

    fn add_mem_reg(
        &mut self,
        dev: &mut NetDevice,
        msg: &mut Message,
    ) -> Result<Outcome, RequestError> {
        let r = parse::<VhostUserSingleMemoryRegion>(&msg.payload)?;
        let fd = msg.take_fd();
        if let Some(mem) = self.memory.add(region_desc(&r), fd)? {
            Self::set_guest_memory(dev, mem)?;
        }
        Ok(Outcome::Done)
    }

    fn rem_mem_reg(
        &mut self,
        dev: &mut NetDevice,
        msg: &mut Message,
    ) -> Result<Outcome, RequestError> {
        let r = parse::<VhostUserSingleMemoryRegion>(&msg.payload)?;
        let mem = self.memory.remove(region_desc(&r))?;
        Self::set_guest_memory(dev, mem)?;
        Ok(Outcome::Done)
    }

    fn set_vring_num(
        &mut self,
        dev: &mut NetDevice,
        msg: &mut Message,
    ) -> Result<Outcome, RequestError> {
        let s = parse::<VhostUserVringState>(&msg.payload)?;
        if !Self::with_ring(dev, s.index, |ring| ring.set_size(s.num))? {
            return Err(RequestError::BadRingSize(s.num));
        }
        Ok(Outcome::Done)
    }

    fn set_vring_addr(
        &mut self,
        dev: &mut NetDevice,
        msg: &mut Message,
    ) -> Result<Outcome, RequestError> {
        let a = parse::<VhostUserVringAddr>(&msg.payload)?;
        let translate = |va: u64, what: &'static str| {
            self.memory
                .va_to_gpa(va)
                .ok_or(RequestError::AddressNotMapped { what, va })
        };
        let desc = translate(a.descriptor, "descriptor table")?;
        let avail = translate(a.available, "avail ring")?;
        let used = translate(a.used, "used ring")?;
        let mem = Self::guest_memory(dev);
        Self::with_ring(dev, a.index, |ring| {
            ring.set_addresses(&mem, desc, avail, used)
        })?
        .map_err(|err| RequestError::Ring {
            index: a.index,
            err,
        })?;
        Ok(Outcome::Done)
    }

    fn set_vring_base(
        &mut self,
        dev: &mut NetDevice,
        msg: &mut Message,
    ) -> Result<Outcome, RequestError> {
        let s = parse::<VhostUserVringState>(&msg.payload)?;
        let base = u16::try_from(s.num).map_err(|_| RequestError::BaseTooLarge(s.num))?;
        Self::with_ring(dev, s.index, |ring| ring.set_base(base))?;
        Ok(Outcome::Done)
    }

    fn get_vring_base(
        &mut self,
        dev: &mut NetDevice,
        msg: &mut Message,
    ) -> Result<Outcome, RequestError> {
        let s = parse::<VhostUserVringState>(&msg.payload)?;
        let base = if Self::is_ctrl(dev, s.index) {
            dev.ctrl().lock().stop()
        } else {
            let (pair, rx) = dev.vring(s.index)?;
            let base = pair.lock().stop_ring(rx);
            // The last ring stopped gives the netdev's queues back (a migration's source at
            // switch-over), before the frontend hears the base.
            dev.rings_changed()?;
            base
        };
        let state = VhostUserVringState::new(s.index, u32::from(base));
        Ok(Outcome::Reply(state.as_slice().to_vec()))
    }

    /// `SET_VRING_KICK`, `SET_VRING_CALL` and `SET_VRING_ERR`.
    fn set_vring_notifier(
        &mut self,
        dev: &mut NetDevice,
        msg: &mut Message,
    ) -> Result<Outcome, RequestError> {
        let request = FrontendReq::try_from(msg.request)
            .map_err(|_| RequestError::Unsupported(msg.request))?;
        let v = parse::<VhostUserU64>(&msg.payload)?.value;
        let index = self.vring_index((v & VRING_INDEX_MASK) as u32)?;
        let fd = if v & VRING_NOFD_MASK != 0 {
            None
        } else {
            msg.take_fd()
        };
        self.set_vring_fd(dev, request, index, fd)?;
        Ok(Outcome::Done)
    }

    fn set_vring_enable(
        &mut self,
        dev: &mut NetDevice,
        msg: &mut Message,
    ) -> Result<Outcome, RequestError> {
        let s = parse::<VhostUserVringState>(&msg.payload)?;
        let index = self.vring_index(s.index)?;
        self.enable_requested[index] = s.num != 0;
        self.apply_enable(dev, index)?;
        Ok(Outcome::Done)
    }

    fn get_config(
        &mut self,
        dev: &mut NetDevice,
        msg: &mut Message,
    ) -> Result<Outcome, RequestError> {
        let p = &msg.payload;
        let hdr = parse_prefix::<VhostUserConfig>(p)?;
        let (offset, size) = (hdr.offset, hdr.size);
        if p.len() != hdr.as_slice().len() + size as usize || size > MAX_CONFIG_READ {
            return Err(RequestError::BadConfigRead { offset, size });
        }
        let mut bytes = vec![0u8; size as usize];
        let config = dev.config_space().bytes();
        let start = offset as usize;
        if start < CONFIG_LEN {
            let n = (CONFIG_LEN - start).min(bytes.len());
            bytes[..n].copy_from_slice(&config[start..start + n]);
        }
        let mut reply = hdr.as_slice().to_vec();
        reply.extend_from_slice(&bytes);
        Ok(Outcome::Reply(reply))
    }

    fn set_config(&mut self, _: &mut NetDevice, _: &mut Message) -> Result<Outcome, RequestError> {
        Err(RequestError::ConfigReadOnly)
    }

    fn set_log_base(
        &mut self,
        dev: &mut NetDevice,
        msg: &mut Message,
    ) -> Result<Outcome, RequestError> {
        let log = parse::<VhostUserLog>(&msg.payload)?;
        let echo = msg.payload.clone();
        let fd = msg
            .take_fd()
            .ok_or(RequestError::MissingFd("SET_LOG_BASE"))?;
        let dirty = DirtyLog::map(fd, log.mmap_size, log.mmap_offset, self.memory.domain())?;
        dev.set_dirty_log(Some(Arc::new(dirty)));
        info!("dirty log of {} bytes installed", { log.mmap_size });
        // QEMU waits for a reply; rust-vmm frontends expect the log message echoed.
        Ok(Outcome::Reply(echo))
    }

    fn set_backend_req_fd(
        &mut self,
        dev: &mut NetDevice,
        msg: &mut Message,
    ) -> Result<Outcome, RequestError> {
        let fd = msg
            .take_fd()
            .ok_or(RequestError::MissingFd("SET_BACKEND_REQ_FD"))?;
        dev.set_notify_channel(frontend_fd::channel(fd)?);
        Ok(Outcome::Done)
    }

    /// The log eventfd is only for frontends that want a signal per logged write; we write the
    /// bitmap directly.
    fn set_log_fd(&mut self, _: &mut NetDevice, _: &mut Message) -> Result<Outcome, RequestError> {
        Ok(Outcome::Done)
    }

    fn send_rarp(
        &mut self,
        dev: &mut NetDevice,
        msg: &mut Message,
    ) -> Result<Outcome, RequestError> {
        let b = parse::<VhostUserU64>(&msg.payload)?.value.to_le_bytes();
        dev.send_rarp(crate::mac::MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]]))?;
        Ok(Outcome::Done)
    }

    fn net_set_mtu(
        &mut self,
        dev: &mut NetDevice,
        msg: &mut Message,
    ) -> Result<Outcome, RequestError> {
        let v = parse::<VhostUserU64>(&msg.payload)?.value;
        dev.set_mtu(v)?;
        info!("frontend set MTU {v}");
        Ok(Outcome::Done)
    }

    fn set_mem_table(
        &mut self,
        dev: &mut NetDevice,
        msg: &mut Message,
    ) -> Result<Outcome, RequestError> {
        let head = parse_prefix::<VhostUserMemory>(&msg.payload)?;
        let count = head.num_regions as usize;
        let head_len = head.as_slice().len();
        let region_len = VhostUserMemoryRegion::default().as_slice().len();
        if count == 0
            || count > MAX_MEM_SLOTS as usize
            || msg.payload.len() != head_len + count * region_len
        {
            return Err(RequestError::BadMemoryTable {
                count,
                bytes: msg.payload.len(),
            });
        }
        if msg.fds.len() != count {
            return Err(RequestError::RegionFdMismatch {
                regions: count,
                fds: msg.fds.len(),
            });
        }
        let mut regions = Vec::with_capacity(count);
        let fds = std::mem::take(&mut msg.fds);
        for (i, fd) in fds.into_iter().enumerate() {
            let at = head_len + i * region_len;
            let r = parse::<VhostUserMemoryRegion>(&msg.payload[at..at + region_len])?;
            regions.push((region_desc(&r), Some(fd)));
        }
        let mem = self.memory.replace(regions)?;
        Self::set_guest_memory(dev, mem)?;
        Ok(Outcome::Done)
    }

    fn set_vring_fd(
        &mut self,
        dev: &mut NetDevice,
        request: FrontendReq,
        index: usize,
        fd: Option<OwnedFd>,
    ) -> Result<(), RequestError> {
        let what = match request {
            FrontendReq::SET_VRING_KICK => Notifier::Kick,
            FrontendReq::SET_VRING_CALL => Notifier::Call,
            _ => Notifier::Error,
        };
        // Every notifier is non-blocking from here on: a call that would block means an
        // interrupt is already pending, and a write never holds the locks below for long.
        let event = fd.map(|fd| frontend_fd::notifier(fd, what)).transpose()?;
        let index = index as u32;
        match request {
            FrontendReq::SET_VRING_KICK => {
                let kick = event.ok_or(RequestError::PollingUnsupported)?;
                if Self::is_ctrl(dev, index) {
                    dev.ctrl().lock().set_kick(kick)?;
                } else {
                    let (pair, rx) = dev.vring(index)?;
                    {
                        let mut q = pair.lock();
                        q.set_kick(rx, kick)?;
                        q.update_interest();
                    }
                    // The first ring started takes the netdev's queues.
                    dev.rings_changed()?;
                }
            }
            FrontendReq::SET_VRING_CALL => Self::with_ring(dev, index, |ring| {
                ring.call = event;
                // Frontends swap call descriptors on running rings (QEMU sends the final one
                // after SET_VRING_KICK, and on MSI-X mask changes); an interrupt sent to the old
                // one in between is lost, and with EVENT_IDX never repeated. A spurious
                // interrupt on the new one makes the driver look again.
                if ring.started {
                    if let Some(call) = &ring.call {
                        let _ = call.write(1);
                    }
                }
            })?,
            _ => {} // SET_VRING_ERR: we never signal errors this way; the descriptor is closed.
        }
        Ok(())
    }
}

/// A request's handler: the connection, the device (locked) and the message.
type RequestFn = fn(&mut Handler, &mut NetDevice, &mut Message) -> Result<Outcome, RequestError>;

/// The handler of each request the daemon serves (`None`: refused as unsupported).
fn request_fn(request: FrontendReq) -> Option<RequestFn> {
    use FrontendReq as R;
    Some(match request {
        R::GET_FEATURES => Handler::get_features,
        R::SET_FEATURES => Handler::set_features,
        R::SET_OWNER => Handler::set_owner,
        R::RESET_OWNER | R::RESET_DEVICE => Handler::reset_device,
        R::GET_PROTOCOL_FEATURES => Handler::get_protocol_features,
        R::SET_PROTOCOL_FEATURES => Handler::set_protocol_features,
        R::GET_QUEUE_NUM => Handler::get_queue_num,
        R::GET_MAX_MEM_SLOTS => Handler::get_max_mem_slots,
        R::SET_MEM_TABLE => Handler::set_mem_table,
        R::ADD_MEM_REG => Handler::add_mem_reg,
        R::REM_MEM_REG => Handler::rem_mem_reg,
        R::SET_VRING_NUM => Handler::set_vring_num,
        R::SET_VRING_ADDR => Handler::set_vring_addr,
        R::SET_VRING_BASE => Handler::set_vring_base,
        R::GET_VRING_BASE => Handler::get_vring_base,
        R::SET_VRING_KICK | R::SET_VRING_CALL | R::SET_VRING_ERR => Handler::set_vring_notifier,
        R::SET_VRING_ENABLE => Handler::set_vring_enable,
        R::GET_CONFIG => Handler::get_config,
        R::SET_CONFIG => Handler::set_config,
        R::SET_LOG_BASE => Handler::set_log_base,
        R::SET_BACKEND_REQ_FD => Handler::set_backend_req_fd,
        R::SET_LOG_FD => Handler::set_log_fd,
        R::SEND_RARP => Handler::send_rarp,
        R::NET_SET_MTU => Handler::net_set_mtu,
        _ => return None,
    })
}

enum ReplyKind {
    U64,
    LogBase,
    VringState,
    Config,
    AckOnly,
}

fn request_kind(request: u32) -> ReplyKind {
    match FrontendReq::try_from(request) {
        Ok(
            FrontendReq::GET_FEATURES
            | FrontendReq::GET_PROTOCOL_FEATURES
            | FrontendReq::GET_QUEUE_NUM
            | FrontendReq::GET_MAX_MEM_SLOTS,
        ) => ReplyKind::U64,
        Ok(FrontendReq::GET_VRING_BASE) => ReplyKind::VringState,
        Ok(FrontendReq::GET_CONFIG) => ReplyKind::Config,
        Ok(FrontendReq::SET_LOG_BASE) => ReplyKind::LogBase,
        _ => ReplyKind::AckOnly,
    }
}
