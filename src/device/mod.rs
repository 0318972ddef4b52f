//! The virtio-net device: the only code that knows virtio-net (feature bits, the virtio-net
//! header, queue pairs, the control queue). Rings, chains, guest memory mappings and the dirty
//! log are the `vhost-user-netd-ring` crate's (`ring/`).
//!
//! - [`queue_pair`]: a pair's state, lock and worker thread; `rx` and `tx`: its two paths.
//! - [`ctrl_queue`] and [`rx_filter`]: the control queue, when the frontend hands it over, and
//!   the receive filter its commands set.
//! - [`features`], [`config_space`]: what is offered and reported.
//! - [`counters`]: per-pair statistics; [`announce`]: RARP frames.

pub mod announce;
pub mod config_space;
pub mod counters;
pub mod ctrl_queue;
pub mod features;
pub mod queue_claim;
pub mod queue_pair;
pub mod role_filters;
mod rx;
pub mod rx_filter;
#[cfg(feature = "fuzzing")]
pub mod standalone_pair;
mod tx;
pub mod worker;

use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use log::{info, warn};
use vhost_user_netd_backends::{Backend, Capabilities, Offloads};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use self::config_space::NetConfigSpace;
use self::counters::Counts;
use self::ctrl_queue::CtrlHandle;
use self::queue_pair::{DatapathParams, PairHandle};
use crate::mac::MacAddr;

/// Locks the device, recovering from a poisoned lock (a panicked holder left consistent state:
/// every mutation is a single assignment or a completed call).
pub fn lock(device: &Mutex<NetDevice>) -> MutexGuard<'_, NetDevice> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

/// Default MTU when neither the port nor the frontend set one.
pub const DEFAULT_MTU: u16 = 1500;

/// Errors the device reports to the vhost-user layer.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("features {0:#x} were not offered")]
    UnofferedFeatures(u64),
    #[error("vring {0} does not exist")]
    NoSuchVring(u32),
    #[error("MTU {0} is out of range (68-65535)")]
    BadMtu(u64),
    #[error(
        "{backend} cannot carry what the port offered ({queue_pairs} queue pairs, \
         vnet_hdr={vnet_hdr}, offloads {offloads:?})"
    )]
    Incompatible {
        backend: String,
        queue_pairs: u16,
        vnet_hdr: bool,
        offloads: Offloads,
    },
    #[error(
        "netdev '{netdev}' runs the rings of port '{holder}': port '{port}' may start its own \
         once that port's frontend stopped them"
    )]
    QueuesBusy {
        netdev: String,
        holder: String,
        port: String,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A port's fixed device parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceConfig {
    /// MAC reported in config space (`VIRTIO_NET_F_MAC`); without it the frontend uses its own.
    pub mac: Option<MacAddr>,
    /// MTU reported in config space (`VIRTIO_NET_F_MTU`).
    pub mtu: Option<u16>,
    /// Queue pairs served (1–16).
    pub queue_pairs: u16,
}

/// One frontend's virtio-net device, bound to a backend.
#[derive(Debug)]
pub struct NetDevice {
    config: DeviceConfig,
    /// The bound backend; `None` while the port's netdev is deleted (frames dropped, counted).
    backend: Option<Arc<dyn Backend>>,
    /// What the features were offered for; a backend bound later must be able to honour them.
    caps: Capabilities,
    offered: u64,
    acked: u64,
    mtu: Option<u16>,
    /// Administrative link state (`set_link`).
    link_up: bool,
    /// The bound backend had a carrier (a connected peer) when it was last bound.
    carrier: bool,
    /// Who else may want the netdev's queues (`None`: nobody, they are always ours).
    claim: Option<queue_claim::QueueClaim>,
    /// The frontend runs rings and this device holds the netdev's queues: the backend's queues
    /// are only taken while this is true.
    holds_queues: bool,
    /// The channel on which the frontend takes our notifications (`SET_BACKEND_REQ_FD`; the
    /// spec calls the daemon the vhost-user "backend", which here means the host netdev).
    notify_channel: Option<std::os::unix::net::UnixStream>,
    /// vhost-user requests refused on this connection.
    failed_requests: u64,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    pairs: Vec<PairHandle>,
    /// The control queue (vring `2 × queue_pairs`), used if the frontend hands it over.
    ctrl: CtrlHandle,
    batching: vhost_user_netd_backends::Batching,
}

impl NetDevice {
    /// Creates the device and puts its queue pairs on `workers`. Features are offered for `caps`
    /// (the backend's, or the last one's while the port has none).
    pub fn new(
        config: DeviceConfig,
        backend: Option<Arc<dyn Backend>>,
        caps: Capabilities,
        link_up: bool,
        workers: &worker::Workers,
    ) -> io::Result<Self> {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut pairs = Vec::new();
        for index in 0..config.queue_pairs {
            pairs.push(PairHandle::spawn(index, mem.clone(), workers)?);
        }
        let ctrl = CtrlHandle::spawn(
            &pairs,
            config.mac.unwrap_or_default(),
            mem.clone(),
            workers.filter(),
        )?;
        let offered = features::offered(
            &caps,
            config.queue_pairs,
            config.mac.is_some(),
            config.mtu.is_some(),
        );
        let mut device = NetDevice {
            config,
            backend: None,
            caps,
            offered,
            acked: 0,
            mtu: config.mtu,
            link_up,
            carrier: false,
            claim: None,
            holds_queues: false,
            notify_channel: None,
            failed_requests: 0,
            mem,
            pairs,
            ctrl,
            batching: workers.batching(),
        };
        device.bind(backend).map_err(io::Error::other)?;
        Ok(device)
    }

    /// Binds another backend (or none) to the running device, without the frontend noticing
    /// anything but a link change: the hot-swap behind `netdev_del`/`netdev_add`. Its queues are
    /// taken at once if the frontend runs rings, else when it starts them.
    pub fn bind(&mut self, backend: Option<Arc<dyn Backend>>) -> Result<(), DeviceError> {
        if let Some(b) = &backend {
            let c = b.capabilities();
            let offloads_kept = c.offloads.intersect(self.caps.offloads) == self.caps.offloads;
            if c.queue_pairs < self.config.queue_pairs
                || (self.caps.vnet_hdr && (!c.vnet_hdr || !offloads_kept))
            {
                return Err(DeviceError::Incompatible {
                    backend: b.describe(),
                    queue_pairs: self.config.queue_pairs,
                    vnet_hdr: self.caps.vnet_hdr,
                    offloads: self.caps.offloads,
                });
            }
        }
        let before = self.effective_link();
        // No peer yet (a stream netdev): the link is down until it comes.
        let carrier = backend.as_ref().is_some_and(|b| b.carrier());
        let old = (
            std::mem::replace(&mut self.backend, backend),
            std::mem::replace(&mut self.carrier, carrier),
        );
        if let Err(e) = self.attach_queues() {
            // A backend that cannot hand out its queues is not bound: the old one stays.
            (self.backend, self.carrier) = old;
            let _ = self.attach_queues();
            self.apply_params();
            return Err(e);
        }
        self.apply_params();
        if before != self.effective_link() {
            self.notify_config_change();
        }
        Ok(())
    }

    /// Gives each pair its queue of the backend while the device holds them and the backend
    /// has a carrier; else takes them away.
    fn attach_queues(&mut self) -> Result<(), DeviceError> {
        let mut queues = Vec::new();
        let mut failed = None;
        if let (true, true, Some(b)) = (self.holds_queues, self.carrier, &self.backend) {
            for index in 0..self.config.queue_pairs {
                match b.queue(index) {
                    Ok(q) => queues.push(q),
                    Err(e) => {
                        failed = Some(DeviceError::Io(io::Error::other(e)));
                        queues.clear();
                        break;
                    }
                }
            }
        }
        let mut queues = queues.into_iter();
        for pair in &self.pairs {
            let mut queue = queues.next();
            if let Some(q) = queue.as_mut() {
                q.set_rx_waker(pair.rx_waker(self.mem.clone()));
            }
            pair.lock().set_backend(queue);
        }
        failed.map_or(Ok(()), Err)
    }

    /// Lets the device take its netdev's queues only through `claim`, shared with the other
    /// ports of the netdev.
    pub fn set_queue_claim(&mut self, claim: queue_claim::QueueClaim) {
        self.claim = Some(claim);
    }

    /// A ring started or stopped: the device takes the netdev's queues when its frontend
    /// starts the first ring, and gives them back when it has stopped the last. Taking fails,
    /// and leaves the rings without a backend, while another port's device holds them.
    pub fn rings_changed(&mut self) -> Result<(), DeviceError> {
        let running = self.pairs.iter().any(|p| {
            let p = p.lock();
            p.rx.ring.started || p.tx.ring.started
        });
        match (running, self.holds_queues) {
            (true, false) => {
                if let Some(claim) = &self.claim {
                    claim.take().map_err(|holder| DeviceError::QueuesBusy {
                        netdev: claim.netdev.clone(),
                        holder,
                        port: claim.port.clone(),
                    })?;
                }
                self.holds_queues = true;
                if let Some(claim) = &self.claim {
                    info!(
                        "port {}: its frontend started its rings; it runs netdev {}",
                        claim.port, claim.netdev
                    );
                }
                let attached = self.attach_queues();
                if attached.is_err() {
                    self.release_queues();
                }
                self.apply_params();
                attached
            }
            (false, true) => {
                if let Some(claim) = &self.claim {
                    info!(
                        "port {}: its frontend stopped its rings; netdev {} is free",
                        claim.port, claim.netdev
                    );
                }
                self.release_queues();
                self.apply_params();
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn release_queues(&mut self) {
        self.holds_queues = false;
        let _ = self.attach_queues();
        if let Some(claim) = &self.claim {
            claim.release();
        }
    }

    /// `set_link`: the administrative link state.
    pub fn set_link(&mut self, up: bool) {
        let before = self.effective_link();
        self.link_up = up;
        self.apply_params();
        if before != self.effective_link() {
            self.notify_config_change();
        }
    }

    /// Keeps the channel for notifications to the frontend (config changes). It must
    /// be non-blocking: it is written with the device locked.
    pub fn set_notify_channel(&mut self, channel: std::os::unix::net::UnixStream) {
        self.notify_channel = Some(channel);
    }

    /// Tells the frontend the config space changed (`VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`), if
    /// it gave us a channel. No reply is asked for: nothing waits on this channel. A channel
    /// that cannot take the message at once belongs to a frontend that stopped reading it; it is
    /// dropped rather than waited for (the device lock is held here).
    fn notify_config_change(&mut self) {
        let Some(channel) = self.notify_channel.as_ref() else {
            return;
        };
        const CONFIG_CHANGE_MSG: u32 = 2;
        const VERSION_1: u32 = 1;
        let mut msg = [0u8; 12];
        msg[..4].copy_from_slice(&CONFIG_CHANGE_MSG.to_le_bytes());
        msg[4..8].copy_from_slice(&VERSION_1.to_le_bytes());
        match vhost_user_netd_backends::sys::write(channel.as_raw_fd(), &msg) {
            Ok(n) if n == msg.len() => {}
            Ok(n) => {
                warn!("config-change notification cut after {n} bytes; channel dropped");
                self.notify_channel = None;
            }
            Err(e) => {
                warn!("config-change notification failed ({e}); channel dropped");
                self.notify_channel = None;
            }
        }
    }

    /// Whether frames can flow: link up, a backend bound, and the backend has a carrier.
    pub fn effective_link(&self) -> bool {
        self.link_up && self.backend.is_some() && self.carrier
    }

    /// virtio feature bits offered (with `VHOST_USER_F_PROTOCOL_FEATURES`).
    pub fn offered_features(&self) -> u64 {
        self.offered
    }

    /// virtio feature bits acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    /// Accepts the driver's features and reconfigures the datapath for them.
    pub fn set_features(&mut self, acked: u64) -> Result<(), DeviceError> {
        let extra = acked & !self.offered;
        if extra != 0 {
            return Err(DeviceError::UnofferedFeatures(extra));
        }
        self.acked = acked;
        {
            let mut ctrl = self.ctrl.lock();
            ctrl.set_features(
                features::ctrl_features(acked, self.config.queue_pairs),
                acked & features::VIRTIO_RING_F_INDIRECT_DESC != 0,
            );
            ctrl.log_all = acked & features::VHOST_F_LOG_ALL != 0;
        }
        self.apply_params();
        Ok(())
    }

    fn apply_params(&mut self) {
        let acked = self.acked;
        let hdr_len = features::header_len(acked);
        let guest_offloads = features::guest_offloads(acked);
        let mtu = usize::from(self.mtu.unwrap_or(DEFAULT_MTU));
        let max_frame = if guest_offloads.any_gso() {
            vhost_user_netd_backends::MAX_FRAME_LEN
        } else {
            14 + 4 + mtu
        };
        let params = DatapathParams {
            batching: self.batching,
            hdr_len,
            mrg_rxbuf: acked & features::VIRTIO_NET_F_MRG_RXBUF != 0,
            indirect: acked & features::VIRTIO_RING_F_INDIRECT_DESC != 0,
            backend_vnet_hdr: self
                .backend
                .as_ref()
                .is_some_and(|b| b.capabilities().vnet_hdr),
            max_rx_frame: hdr_len + max_frame,
            link_up: self.effective_link(),
            log_all: acked & features::VHOST_F_LOG_ALL != 0,
        };
        let offloads = match &self.backend {
            Some(b) if params.backend_vnet_hdr => {
                guest_offloads.intersect(b.capabilities().offloads)
            }
            _ => Offloads::default(),
        };
        let event_idx = acked & features::VIRTIO_RING_F_EVENT_IDX != 0;
        self.ctrl.lock().ring.set_event_idx(event_idx);
        for pair in &self.pairs {
            let mut p = pair.lock();
            p.params = params;
            p.rx.ring.set_event_idx(event_idx);
            p.tx.ring.set_event_idx(event_idx);
            if let Some(b) = p.backend.as_mut() {
                if params.backend_vnet_hdr {
                    if let Err(e) = b.set_vnet_hdr_len(hdr_len) {
                        warn!("backend: setting vnet header length {hdr_len}: {e}");
                    }
                }
                if let Err(e) = b.set_offloads(offloads) {
                    warn!("backend: setting offloads {offloads:?}: {e}");
                }
            }
            p.update_interest();
        }
    }

    /// The guest's MAC as learned from its frames, if any was seen.
    pub fn guest_mac(&self) -> Option<MacAddr> {
        self.pairs.iter().find_map(|p| p.lock().tx.guest_mac)
    }

    /// Calls `watch` whenever the datapath learns a new guest MAC or the guest changes its
    /// receive filter through the control queue.
    pub fn set_mac_watch(&self, watch: queue_pair::MacWatch) {
        for pair in &self.pairs {
            pair.lock().tx.mac_watch = Some(watch.clone());
        }
        self.ctrl.lock().set_watch(watch);
    }

    /// Feeds every frame of every pair to the port's captures.
    pub fn set_capture(&self, slot: &Arc<crate::capture::CaptureSlot>) {
        for pair in &self.pairs {
            pair.lock().capture = slot.clone();
        }
    }

    /// The control queue (vring `2 × queue_pairs`).
    pub fn ctrl(&self) -> &CtrlHandle {
        &self.ctrl
    }

    /// The receive filter the guest set through the control queue, if it did.
    pub fn rx_filter(&self) -> Option<rx_filter::RxFilter> {
        self.ctrl.lock().filter().cloned()
    }

    /// Installs the frontend's dirty bitmap (`SET_LOG_BASE`) in every pair.
    pub fn set_dirty_log(&self, log: Option<Arc<vhost_user_netd_ring::dirty_log::DirtyLog>>) {
        for pair in &self.pairs {
            pair.lock().dirty_log = log.clone();
        }
        self.ctrl.lock().dirty_log = log;
    }

    /// Number of queue pairs.
    pub fn queue_pairs(&self) -> u16 {
        self.config.queue_pairs
    }

    /// The pair serving vring `index`, and whether the vring is its rx ring.
    pub fn vring(&self, index: u32) -> Result<(&PairHandle, bool), DeviceError> {
        let pair = self
            .pairs
            .get((index / 2) as usize)
            .ok_or(DeviceError::NoSuchVring(index))?;
        Ok((pair, index % 2 == 0))
    }

    /// Guest memory as the workers see it.
    pub fn memory(&self) -> &GuestMemoryAtomic<GuestMemoryMmap> {
        &self.mem
    }

    /// The config space as the driver reads it.
    pub fn config_space(&self) -> NetConfigSpace {
        NetConfigSpace {
            mac: self.config.mac.unwrap_or_default(),
            link_up: self.effective_link(),
            max_queue_pairs: self.config.queue_pairs,
            mtu: self.mtu.unwrap_or(DEFAULT_MTU),
        }
    }

    /// `NET_SET_MTU`: the frontend's `host_mtu`.
    pub fn set_mtu(&mut self, mtu: u64) -> Result<(), DeviceError> {
        if !(68..=65535).contains(&mtu) {
            return Err(DeviceError::BadMtu(mtu));
        }
        self.mtu = Some(mtu as u16);
        self.apply_params();
        Ok(())
    }

    /// Sends a RARP for `mac` out of the backend (`SEND_RARP`, `announce-self`).
    pub fn send_rarp(&self, mac: MacAddr) -> io::Result<()> {
        let frame = announce::rarp_frame(mac);
        if let Some(pair) = self.pairs.first() {
            let mut p = pair.lock();
            let hdr_len = p.params.hdr_len;
            let vnet = p.params.backend_vnet_hdr;
            if let Some(backend) = p.backend.as_mut() {
                let zero = [0u8; features::HDR_LEN];
                let hdr: &[u8] = if vnet { &zero[..hdr_len] } else { &[] };
                backend.send(&[IoSlice::new(hdr), IoSlice::new(&frame)])?;
                info!("sent RARP for {mac}");
                return Ok(());
            }
        }
        // No rings running yet (a migration's destination may announce before it starts them).
        match &self.backend {
            Some(b) if self.carrier => {
                announce::send_rarp_on(b.as_ref(), mac)?;
                info!("sent RARP for {mac}");
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Counters summed over all pairs.
    pub fn counters(&self) -> Vec<Counts> {
        self.pairs.iter().map(|p| p.counters.snapshot()).collect()
    }

    /// Counts a vhost-user request from the frontend that was refused.
    pub fn count_failed_request(&mut self) {
        self.failed_requests += 1;
    }

    /// vhost-user requests refused on this connection.
    pub fn failed_requests(&self) -> u64 {
        self.failed_requests
    }
}

impl Drop for NetDevice {
    fn drop(&mut self) {
        // Stop the workers first so that their last batch is counted.
        let pairs = std::mem::take(&mut self.pairs);
        for (index, pair) in pairs.into_iter().enumerate() {
            let counters = pair.counters.clone();
            drop(pair);
            let c = counters.snapshot();
            info!(
                "pair {index}: rx {} frames {} bytes, tx {} frames {} bytes, dropped rx {} tx {}, \
                 malformed chains {}, ring errors {}, kicks {}, interrupts {}, largest frame rx {} tx {}",
                c.rx_frames,
                c.rx_bytes,
                c.tx_frames,
                c.tx_bytes,
                c.rx_dropped_link_down + c.rx_dropped_too_big,
                c.tx_dropped_link_down + c.tx_dropped_backend_error,
                c.malformed_chains(),
                c.ring_errors,
                c.kicks,
                c.interrupts,
                c.rx_max_frame,
                c.tx_max_frame
            );
        }
        if self.holds_queues {
            if let Some(claim) = &self.claim {
                claim.release();
            }
        }
    }
}
