//! A vhost-user port: its socket (listening or connecting), and one [`NetDevice`] per frontend
//! connection, bound to the port's backend. When a frontend goes away the device is torn down
//! and the next frontend gets a fresh one.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use log::{error, info, warn};
use vhost_user_netd_backends::{Backend, Capabilities};

use crate::config::{Listen, PortConfig};
use crate::device::lock;
use crate::device::queue_claim::{QueueClaim, QueueOwners};
use crate::device::queue_pair::MacWatch;
use crate::device::worker::Workers;
use crate::device::{DeviceConfig, DeviceError, NetDevice};
use crate::events::EventBus;
use crate::mac::MacAddr;
use crate::vhost_user::handler::{ConnectionError, Handler};
use crate::vhost_user::socket::Connection;

/// Longest wait between client-mode reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a port is bound to, shared between its connection thread and the control plane.
#[derive(Debug)]
struct Binding {
    /// The netdev's backend; `None` after `netdev_del` (the port stays, frames are dropped).
    backend: Option<Arc<dyn Backend>>,
    /// Capabilities features are offered for: the current backend's, or the last one's.
    caps: Capabilities,
    /// `set_link` state; survives reconnects.
    link_up: bool,
    /// The device of the connected frontend, if one is connected.
    device: Weak<Mutex<NetDevice>>,
}

/// What stops a port's thread (`port-del`): a flag, and the descriptors its thread may be
/// blocked on, shut down from the control plane.
#[derive(Debug, Default)]
struct Lifecycle {
    stopping: Mutex<bool>,
    /// Woken when `stopping` is set (a client waiting to reconnect).
    stopped: std::sync::Condvar,
    /// A copy of the listening socket (shutting it down ends `accept`).
    listener: Mutex<Option<std::os::fd::OwnedFd>>,
    /// A copy of the connected frontend's socket (shutting it down ends the connection).
    connection: Mutex<Option<std::os::fd::OwnedFd>>,
}

impl Lifecycle {
    fn stopping(&self) -> bool {
        *self.stopping.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `timeout` unless the port is stopping; true if it is.
    fn wait_stop(&self, timeout: Duration) -> bool {
        let guard = self.stopping.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .stopped
            .wait_timeout_while(guard, timeout, |stopping| !*stopping)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }

    fn keep(slot: &Mutex<Option<std::os::fd::OwnedFd>>, fd: &impl std::os::fd::AsFd) {
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = fd.as_fd().try_clone_to_owned().ok();
    }

    fn forget(slot: &Mutex<Option<std::os::fd::OwnedFd>>) {
        slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn stop(&self) {
        *self.stopping.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stopped.notify_all();
        for slot in [&self.listener, &self.connection] {
            if let Some(fd) = slot.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                vhost_user_netd_backends::sys::shutdown(std::os::fd::AsRawFd::as_raw_fd(fd));
            }
        }
    }
}

/// A port's serving thread, and the socket file it created (removed when the port goes).
#[derive(Debug)]
pub struct Served {
    pub thread: std::thread::JoinHandle<()>,
    pub socket_file: Option<std::path::PathBuf>,
}

/// Why a port could not be served: bad input (exit status 2 on the command line) or the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeError {
    Usage(String),
    Runtime(String),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Usage(m) | ServeError::Runtime(m) => f.write_str(m),
        }
    }
}

/// A port and the backend it serves.
#[derive(Debug, Clone)]
pub struct Port {
    pub config: PortConfig,
    binding: Arc<Mutex<Binding>>,
    /// Where connect/disconnect events go (QMP sessions).
    events: Option<Arc<EventBus>>,
    /// `NIC_RX_FILTER_CHANGED` may be sent (QEMU's rule: once, then again only after
    /// `query-rx-filter`).
    rx_filter_armed: Arc<AtomicBool>,
    /// Connections ended because the frontend's memory vanished under a mapping.
    memory_faults: Arc<AtomicU64>,
    /// Where each connection's queue pairs run.
    workers: Arc<Workers>,
    /// Captures of this port's frames (kept across frontend connections).
    capture: Arc<crate::capture::CaptureSlot>,
    lifecycle: Arc<Lifecycle>,
    /// Shared with the other ports: which one holds each netdev's queues.
    queue_owners: Arc<QueueOwners>,
}

impl Port {
    /// A port bound to `backend`.
    pub fn new(config: PortConfig, backend: Arc<dyn Backend>) -> Self {
        let binding = Binding {
            caps: backend.capabilities(),
            backend: Some(backend),
            link_up: true,
            device: Weak::new(),
        };
        Port {
            config,
            binding: Arc::new(Mutex::new(binding)),
            events: None,
            rx_filter_armed: Arc::new(AtomicBool::new(true)),
            memory_faults: Arc::new(AtomicU64::new(0)),
            workers: Arc::new(Workers::default()),
            capture: Arc::default(),
            lifecycle: Arc::default(),
            queue_owners: Arc::default(),
        }
    }

    /// Starts the port's thread: listening (or on an inherited socket), or connecting in client
    /// mode. Returns the thread and the socket file it created, if any.
    pub fn serve(&self) -> Result<Served, ServeError> {
        let pc: &PortConfig = &self.config;
        let name = format!("port-{}", pc.id);
        let port = self.clone();
        let mut created = None;
        let thread = match (&pc.listen, pc.client) {
            (Listen::Path(path), true) => {
                let path = path.clone();
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || port.serve_client(&path))
            }
            (listen, _) => {
                let listener = match listen {
                    Listen::Path(p) => {
                        let l = bind_listener(p).map_err(|e| {
                            ServeError::Runtime(format!("--socket-path {}: {e}", p.display()))
                        })?;
                        created = Some(p.clone());
                        l
                    }
                    Listen::Fd(fd) => match inherited_socket(*fd) {
                        Ok(InheritedSocket::Listening(l)) => l,
                        Ok(InheritedSocket::Connected(stream)) => {
                            info!("port {}: serving the frontend connected on fd {fd}", pc.id);
                            let id = pc.id.clone();
                            let thread = std::thread::Builder::new().name(name).spawn(move || {
                                port.serve_connection(stream);
                                // Like passt's --fd: the connection was the daemon's whole job.
                                info!("port {id}: its only frontend went away: exiting");
                                crate::signals::request_shutdown();
                            });
                            let thread = thread.map_err(|e| {
                                ServeError::Runtime(format!("spawning port thread: {e}"))
                            })?;
                            return Ok(Served {
                                thread,
                                socket_file: None,
                            });
                        }
                        Err(e) => return Err(ServeError::Usage(format!("--fd {fd}: {e}"))),
                    },
                    Listen::Activated => {
                        return Err(ServeError::Usage(format!(
                            "port {}: no socket was passed for it",
                            pc.id
                        )))
                    }
                };
                info!("port {}: listening on {:?}", pc.id, pc.listen);
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || port.serve_listener(listener))
            }
        };
        let thread =
            thread.map_err(|e| ServeError::Runtime(format!("spawning port thread: {e}")))?;
        Ok(Served {
            thread,
            socket_file: created,
        })
    }

    /// Ends the port's thread (`port-del`): no new frontend is accepted or connected to, and
    /// the connected one is disconnected. The thread returns soon after.
    pub fn stop(&self) {
        self.lifecycle.stop();
    }

    /// The captures of this port's frames.
    pub fn capture(&self) -> &Arc<crate::capture::CaptureSlot> {
        &self.capture
    }

    /// Runs this port's queue pairs on `workers` (else a worker per pair).
    pub fn with_workers(mut self, workers: Arc<Workers>) -> Self {
        self.workers = workers;
        self
    }

    /// Takes its netdev's queues only when `owners` says no other port's device holds them.
    pub fn with_queue_owners(mut self, owners: Arc<QueueOwners>) -> Self {
        self.queue_owners = owners;
        self
    }

    /// Whether this port's device holds its netdev's queues (its frontend runs rings).
    pub fn runs_rings(&self) -> bool {
        self.queue_owners.holder(&self.config.netdev).as_deref() == Some(self.id())
    }

    /// Sends this port's connect/disconnect events to `events`.
    pub fn with_events(mut self, events: Arc<EventBus>) -> Self {
        self.events = Some(events);
        self
    }

    fn emit(&self, name: &str) {
        if let Some(events) = &self.events {
            let data =
                serde_json::json!({ "port-id": self.config.id, "netdev-id": self.config.netdev });
            events.emit(name, Some(data));
        }
    }

    /// The MAC the port's guest uses: the configured one, else the one learned from its frames.
    pub fn main_mac(&self) -> Option<MacAddr> {
        self.config
            .mac
            .or_else(|| self.device().and_then(|d| lock(&d).guest_mac()))
    }

    /// `query-rx-filter` ran: the next filter change is reported again.
    pub fn rx_filter_queried(&self) {
        self.rx_filter_armed.store(true, Ordering::SeqCst);
    }

    /// Sends a RARP for the port's MAC out of its backend (`announce-self`). Returns whether one
    /// went out (no MAC known or no backend bound: nothing to announce).
    pub fn announce(&self) -> bool {
        let Some(mac) = self.main_mac() else {
            return false;
        };
        if let Some(device) = self.device() {
            return lock(&device).send_rarp(mac).is_ok();
        }
        let backend = self.binding().backend.clone();
        backend.is_some_and(|b| crate::device::announce::send_rarp_on(b.as_ref(), mac).is_ok())
    }

    fn mac_watch(&self) -> MacWatch {
        let (events, armed, id) = (
            self.events.clone(),
            self.rx_filter_armed.clone(),
            self.config.id.clone(),
        );
        MacWatch(Arc::new(move |_mac| {
            if let Some(events) = &events {
                if armed.swap(false, Ordering::SeqCst) {
                    let path = format!("/vhost-user-netd/port/{id}");
                    events.emit(
                        "NIC_RX_FILTER_CHANGED",
                        Some(serde_json::json!({ "name": id, "path": path })),
                    );
                }
            }
        }))
    }

    /// Administrative link state, and whether a backend is bound and has a carrier.
    pub fn link_state(&self) -> (bool, bool) {
        let b = self.binding();
        (b.link_up, b.backend.as_ref().is_some_and(|x| x.carrier()))
    }

    /// Connections ended because the frontend's memory vanished under a mapping.
    pub fn memory_faults(&self) -> u64 {
        self.memory_faults.load(Ordering::Relaxed)
    }

    /// The bound backend's own counters.
    pub fn backend_counters(&self) -> Vec<(&'static str, u64)> {
        self.binding()
            .backend
            .as_ref()
            .map(|b| b.counters())
            .unwrap_or_default()
    }

    fn binding(&self) -> std::sync::MutexGuard<'_, Binding> {
        self.binding.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The port's name (`set_link`, `peer-id`).
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// Binds another backend, or none, to the port and to a connected frontend's device, live.
    pub fn bind(&self, backend: Option<Arc<dyn Backend>>) -> Result<(), DeviceError> {
        let mut b = self.binding();
        if let Some(device) = b.device.upgrade() {
            lock(&device).bind(backend.clone())?;
        }
        if let Some(new) = &backend {
            b.caps = new.capabilities();
        }
        b.backend = backend;
        Ok(())
    }

    /// The bound backend's carrier came or went (a stream peer connected or left): the
    /// connected frontend's device gets fresh queues, or none, and its link follows.
    pub fn carrier_changed(&self) {
        let b = self.binding();
        if let Some(device) = b.device.upgrade() {
            if let Err(e) = lock(&device).bind(b.backend.clone()) {
                warn!(
                    "port {}: rebinding after a carrier change: {e}",
                    self.config.id
                );
            }
        }
    }

    /// Sets the administrative link state, now and for later connections.
    pub fn set_link(&self, up: bool) {
        let mut b = self.binding();
        b.link_up = up;
        if let Some(device) = b.device.upgrade() {
            lock(&device).set_link(up);
        }
    }

    /// The connected frontend's device, if any.
    pub fn device(&self) -> Option<Arc<Mutex<NetDevice>>> {
        self.binding().device.upgrade()
    }

    /// The device parameters for this port.
    pub fn device_config(&self) -> DeviceConfig {
        DeviceConfig {
            mac: self.config.mac,
            mtu: self.config.mtu,
            queue_pairs: self.config.queues,
        }
    }

    /// Serves one frontend connection until it ends, under the connection threads' seccomp
    /// filter once the daemon is confined.
    pub fn serve_connection(&self, stream: UnixStream) {
        self.workers
            .filter()
            .confine_this_thread(crate::device::role_filters::Role::Connection);
        Lifecycle::keep(&self.lifecycle.connection, &stream);
        if self.lifecycle.stopping() {
            Lifecycle::forget(&self.lifecycle.connection);
            return;
        }
        let device = {
            let mut b = self.binding();
            let device = NetDevice::new(
                self.device_config(),
                b.backend.clone(),
                b.caps,
                b.link_up,
                &self.workers,
            );
            match device {
                Ok(mut d) => {
                    d.set_queue_claim(QueueClaim::new(
                        self.queue_owners.clone(),
                        &self.config.netdev,
                        &self.config.id,
                    ));
                    d.set_mac_watch(self.mac_watch());
                    d.set_capture(&self.capture);
                    let d = Arc::new(Mutex::new(d));
                    b.device = Arc::downgrade(&d);
                    d
                }
                Err(e) => {
                    error!("port {}: cannot create device: {e}", self.config.id);
                    return;
                }
            }
        };
        let mut handler = match Handler::new(Connection::new(stream), device) {
            Ok(h) => h,
            Err(e) => {
                error!("port {}: cannot serve the connection: {e}", self.config.id);
                return;
            }
        };
        self.emit("VHOST_USER_PORT_CONNECTED");
        match handler.run() {
            Ok(()) => info!("port {}: frontend disconnected", self.config.id),
            Err(e @ ConnectionError::MemoryLost(_)) => {
                self.memory_faults.fetch_add(1, Ordering::Relaxed);
                error!("port {}: {e}", self.config.id);
            }
            Err(e) => warn!("port {}: connection ended: {e}", self.config.id),
        }
        // The device (and its workers) go with the handler, before the event goes out.
        drop(handler);
        Lifecycle::forget(&self.lifecycle.connection);
        self.emit("VHOST_USER_PORT_DISCONNECTED");
    }

    /// Accepts frontends one after the other, until the port is stopped.
    pub fn serve_listener(&self, listener: UnixListener) {
        Lifecycle::keep(&self.lifecycle.listener, &listener);
        while !self.lifecycle.stopping() {
            match listener.accept() {
                Ok((stream, _)) => {
                    info!("port {}: frontend connected", self.config.id);
                    self.serve_connection(stream);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) if self.lifecycle.stopping() => break,
                Err(e) => {
                    error!("port {}: accept: {e}", self.config.id);
                    self.lifecycle.wait_stop(Duration::from_millis(100));
                }
            }
        }
        Lifecycle::forget(&self.lifecycle.listener);
    }

    /// Connects to a listening frontend, and again (with backoff) whenever it goes away, until
    /// the port is stopped.
    pub fn serve_client(&self, path: &Path) {
        let mut backoff = Duration::from_millis(100);
        while !self.lifecycle.stopping() {
            match UnixStream::connect(path) {
                Ok(stream) => {
                    info!("port {}: connected to {}", self.config.id, path.display());
                    backoff = Duration::from_millis(100);
                    self.serve_connection(stream);
                }
                Err(e) => {
                    log::debug!("port {}: connect {}: {e}", self.config.id, path.display());
                    if self.lifecycle.wait_stop(backoff) {
                        break;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Binds a listening socket at `path`, replacing a stale socket file nobody listens on.
pub fn bind_listener(path: &Path) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process is listening on it",
            ));
        }
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

/// A unix stream socket inherited from the parent.
#[derive(Debug)]
pub enum InheritedSocket {
    /// Listening (systemd's socket units, libvirt): frontends connect to it.
    Listening(UnixListener),
    /// Already connected to its frontend (one end of a socketpair).
    Connected(UnixStream),
}

/// Takes over inherited descriptor `fd`, which must be a unix stream socket.
pub fn inherited_socket(fd: RawFd) -> io::Result<InheritedSocket> {
    use vhost_user_netd_backends::sys;
    let owned = sys::adopt_inherited_fd(fd)?;
    let unix_stream = sys::socket_domain(fd).ok() == Some(libc::AF_UNIX)
        && sys::socket_type(fd).ok() == Some(libc::SOCK_STREAM);
    if !unix_stream {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptor is not a unix stream socket",
        ));
    }
    Ok(if sys::socket_listens(fd)? {
        InheritedSocket::Listening(UnixListener::from(owned))
    } else {
        InheritedSocket::Connected(UnixStream::from(owned))
    })
}

/// Takes over an inherited listening socket.
pub fn inherited_listener(fd: RawFd) -> io::Result<UnixListener> {
    match inherited_socket(fd)? {
        InheritedSocket::Listening(l) => Ok(l),
        InheritedSocket::Connected(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptor is not a listening socket",
        )),
    }
}

/// Where a port listens, for clean-up.
pub fn socket_path(config: &PortConfig) -> Option<&Path> {
    match &config.listen {
        Listen::Path(p) if !config.client => Some(p),
        _ => None,
    }
}
