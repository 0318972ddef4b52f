//! The daemon's netdevs and ports: one place for netdevs from the command line and from QMP
//! (`netdev_add`/`netdev_del`), and for what the control plane does to ports (rebinding a
//! port's backend live, `set_link`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use vhost_user_netd_backends::hub::uplink::Uplink;
use vhost_user_netd_backends::FdSource;
use vhost_user_netd_backends::{Backend, HostEnv, LinkEvent, LinkWatch, NetdevConfig, NetdevKind};

use crate::capture::{Capture, FilterDump};
use crate::device::queue_claim::QueueOwners;
use crate::events::EventBus;
use crate::port::{Port, Served};

/// A netdev and its open backend.
#[derive(Debug, Clone)]
pub struct Netdev {
    pub config: NetdevConfig,
    pub backend: Arc<dyn Backend>,
    /// The link state `set_link` last gave the netdev itself (QEMU keeps it per netdev, used
    /// by a port or not).
    pub link_up: bool,
    /// A hub port joined to another netdev (`hubport,netdev=`): the thread between them.
    pub uplink: Option<Arc<Uplink>>,
}

impl Netdev {
    pub fn new(config: NetdevConfig, backend: Arc<dyn Backend>) -> Self {
        Netdev {
            config,
            backend,
            link_up: true,
            uplink: None,
        }
    }

    /// The netdev a hub port is to be joined to (`hubport,netdev=`).
    fn joins(&self) -> Option<&str> {
        match &self.config.kind {
            NetdevKind::HubPort(h) => h.netdev.as_deref(),
            _ => None,
        }
    }
}

/// Why a control-plane request failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No netdev or port of that name (QMP `DeviceNotFound`).
    #[error("Device '{0}' not found")]
    NotFound(String),
    #[error("Duplicate ID '{0}'")]
    Duplicate(String),
    /// The netdev could not be opened.
    #[error(transparent)]
    Open(#[from] vhost_user_netd_backends::Error),
    /// A connected frontend's device cannot take the backend.
    #[error(transparent)]
    Bind(#[from] crate::device::DeviceError),
    /// A hub port cannot be joined to the netdev it names.
    #[error("{0}")]
    Uplink(String),
    /// A port cannot be added.
    #[error("{0}")]
    Port(String),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A capture (`filter-dump`) of a netdev's frames.
#[derive(Debug)]
struct CaptureEntry {
    id: String,
    netdev: String,
    capture: Arc<Capture>,
}

/// Netdevs and ports.
#[derive(Debug)]
pub struct Registry {
    netdevs: Mutex<Vec<Netdev>>,
    captures: Mutex<Vec<CaptureEntry>>,
    /// What netdevs added over QMP are opened in.
    env: HostEnv,
    /// The ports, from the command line and `port-add` (shared with the carrier watches).
    ports: Arc<Mutex<Vec<Port>>>,
    /// Each port's serving thread and socket file, by port id.
    served: Mutex<HashMap<String, Served>>,
    /// Where ports added later run their queue pairs.
    workers: Arc<crate::device::worker::Workers>,
    /// Which port's device holds each netdev's queues (ports may share a netdev).
    queue_owners: Arc<QueueOwners>,
    events: Option<Arc<EventBus>>,
}

impl Registry {
    /// The registry over the command line's netdevs and ports; carrier changes of the netdevs
    /// reach their ports and, as QMP events, `events`.
    pub fn new(netdevs: Vec<Netdev>, ports: Vec<Port>, events: Option<Arc<EventBus>>) -> Self {
        let queue_owners = Arc::new(QueueOwners::default());
        let ports = ports
            .into_iter()
            .map(|p| p.with_queue_owners(queue_owners.clone()))
            .collect();
        let registry = Registry {
            netdevs: Mutex::new(Vec::new()),
            captures: Mutex::new(Vec::new()),
            env: HostEnv::default(),
            ports: Arc::new(Mutex::new(ports)),
            served: Mutex::new(HashMap::new()),
            workers: Arc::default(),
            queue_owners,
            events,
        };
        for n in &netdevs {
            n.backend.watch_link(registry.link_watch(&n.config));
        }
        *registry.netdevs() = netdevs;
        registry
    }

    /// What happens when a netdev's carrier changes: its ports rebind, then QEMU's
    /// `NETDEV_STREAM_CONNECTED`/`NETDEV_STREAM_DISCONNECTED` go out for stream netdevs.
    fn link_watch(&self, config: &NetdevConfig) -> LinkWatch {
        let ports = self.ports.clone();
        let netdev = config.id.clone();
        let events = self
            .events
            .clone()
            .filter(|_| config.kind.type_name() == "stream");
        let id = config.id.clone();
        Arc::new(move |event: LinkEvent| {
            let ports: Vec<Port> = lock(&ports)
                .iter()
                .filter(|p| p.config.netdev == netdev)
                .cloned()
                .collect();
            for port in &ports {
                port.carrier_changed();
            }
            if let Some(events) = &events {
                match event {
                    LinkEvent::Up { peer } => events.emit(
                        "NETDEV_STREAM_CONNECTED",
                        Some(serde_json::json!({ "netdev-id": id, "addr": peer })),
                    ),
                    LinkEvent::Down => events.emit(
                        "NETDEV_STREAM_DISCONNECTED",
                        Some(serde_json::json!({ "netdev-id": id })),
                    ),
                }
            }
        })
    }

    fn netdevs(&self) -> std::sync::MutexGuard<'_, Vec<Netdev>> {
        self.netdevs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins every hub port that names a netdev (`hubport,netdev=`) to it: the command line's,
    /// once all are open.
    pub fn start_uplinks(&self) -> Result<(), RegistryError> {
        let mut netdevs = self.netdevs();
        for i in 0..netdevs.len() {
            if netdevs[i].joins().is_some() {
                let uplink = self.uplink_for(&netdevs, &netdevs[i])?;
                netdevs[i].uplink = Some(uplink);
            }
        }
        Ok(())
    }

    /// Starts the uplink of `hub_port` to the netdev it names, after QEMU's checks and ours:
    /// the netdev exists, is not a hub port, and no port or other hub port uses it.
    fn uplink_for(
        &self,
        netdevs: &[Netdev],
        hub_port: &Netdev,
    ) -> Result<Arc<Uplink>, RegistryError> {
        let target = hub_port.joins().unwrap_or_default();
        let host = netdevs
            .iter()
            .find(|n| n.config.id == target)
            .ok_or_else(|| RegistryError::Uplink(format!("netdev '{target}' not found")))?;
        if matches!(host.config.kind, NetdevKind::HubPort(_)) {
            return Err(RegistryError::Uplink(format!(
                "netdev '{target}' is a hub port: put both on one hub instead"
            )));
        }
        if let Some(port) = self.ports_of(target).first() {
            return Err(RegistryError::Uplink(format!(
                "netdev '{target}' is in use by port '{}'",
                port.id()
            )));
        }
        if let Some(other) = netdevs.iter().find(|n| {
            n.config.id != hub_port.config.id
                && n.uplink.as_ref().is_some_and(|u| u.netdev == target)
        }) {
            return Err(RegistryError::Uplink(format!(
                "netdev '{target}' is in use by hubport '{}'",
                other.config.id
            )));
        }
        let uplink = Uplink::start(
            &hub_port.config.id,
            hub_port.backend.as_ref(),
            host.backend.as_ref(),
            target,
        )?;
        log::info!("hubport {} joined to netdev {target}", hub_port.config.id);
        Ok(Arc::new(uplink))
    }

    /// Runs the queue pairs of ports added later on `workers`.
    pub fn with_workers(mut self, workers: Arc<crate::device::worker::Workers>) -> Self {
        self.workers = workers;
        self
    }

    pub fn workers(&self) -> Arc<crate::device::worker::Workers> {
        self.workers.clone()
    }

    /// The netdevs' configurations now.
    pub fn netdev_configs(&self) -> Vec<NetdevConfig> {
        self.netdevs().iter().map(|n| n.config.clone()).collect()
    }

    /// Takes over a command-line port's thread and socket file (removed at `port-del` or at
    /// shutdown).
    pub fn adopt(&self, id: &str, served: Served) {
        lock(&self.served).insert(id.to_string(), served);
    }

    /// Adds a port and serves it at once (`port-add`): `make` builds it from the backend of its
    /// netdev (which must exist, serve no other port and be none a hub port or dump uses).
    pub fn add_port(
        &self,
        config: crate::config::PortConfig,
        make: impl FnOnce(crate::config::PortConfig, Arc<dyn Backend>) -> Port,
    ) -> Result<(), RegistryError> {
        let backend = {
            let netdevs = self.netdevs();
            let n = netdevs
                .iter()
                .find(|n| n.config.id == config.netdev)
                .ok_or_else(|| RegistryError::NotFound(config.netdev.clone()))?;
            if let NetdevKind::Dump(_) = n.config.kind {
                return Err(RegistryError::Port(format!(
                    "netdev '{}' is a dump: no port can use it",
                    config.netdev
                )));
            }
            if let Some(h) = netdevs.iter().find(|h| h.joins() == Some(&config.netdev)) {
                return Err(RegistryError::Port(format!(
                    "netdev '{}' is in use by hubport '{}'",
                    config.netdev, h.config.id
                )));
            }
            n.backend.clone()
        };
        {
            let ports = lock(&self.ports);
            if ports.iter().any(|p| p.id() == config.id) {
                return Err(RegistryError::Port(format!(
                    "Duplicate ID '{}' for port",
                    config.id
                )));
            }
            if let Some(p) = ports.iter().find(|p| p.config.netdev == config.netdev) {
                log::info!(
                    "port {} shares netdev {} with port {}: only one of them runs rings at a time",
                    config.id,
                    config.netdev,
                    p.id()
                );
            }
        }
        let id = config.id.clone();
        let port = make(config, backend).with_queue_owners(self.queue_owners.clone());
        let served = port
            .serve()
            .map_err(|e| RegistryError::Port(e.to_string()))?;
        lock(&self.ports).push(port.clone());
        self.adopt(&id, served);
        log::info!("port {id} added on netdev {}", port.config.netdev);
        if let Some(events) = &self.events {
            events.emit(
                "VHOST_USER_PORT_ADDED",
                Some(serde_json::json!({"port-id": id, "netdev-id": port.config.netdev})),
            );
        }
        Ok(())
    }

    /// Removes a port (`port-del`): its frontend is disconnected, its device and queues go, its
    /// thread ends and the socket file it made is removed. Other ports never notice.
    pub fn del_port(&self, id: &str) -> Result<(), RegistryError> {
        let port = {
            let mut ports = lock(&self.ports);
            let pos = ports
                .iter()
                .position(|p| p.id() == id)
                .ok_or_else(|| RegistryError::NotFound(id.into()))?;
            ports.remove(pos)
        };
        port.stop();
        let served = lock(&self.served).remove(id);
        if let Some(served) = served {
            let _ = served.thread.join();
            if let Some(file) = served.socket_file {
                if let Err(e) = std::fs::remove_file(&file) {
                    log::warn!("port {id}: removing {}: {e}", file.display());
                }
            }
        }
        for capture in self.captures().iter() {
            port.capture().remove(&capture.id);
        }
        log::info!("port {id} deleted");
        if let Some(events) = &self.events {
            events.emit(
                "VHOST_USER_PORT_DELETED",
                Some(serde_json::json!({"port-id": id, "netdev-id": port.config.netdev})),
            );
        }
        Ok(())
    }

    /// Opens netdevs added later (`netdev_add`) in `env`, as those of the command line were.
    pub fn with_env(mut self, env: HostEnv) -> Self {
        self.env = env;
        self
    }

    /// The ports now.
    pub fn ports(&self) -> Vec<Port> {
        lock(&self.ports).clone()
    }

    /// The ports serving netdev `id`.
    fn ports_of(&self, id: &str) -> Vec<Port> {
        lock(&self.ports)
            .iter()
            .filter(|p| p.config.netdev == id)
            .cloned()
            .collect()
    }

    /// Opens and adds a netdev; a port waiting for this id gets it bound live.
    pub fn add(&self, config: NetdevConfig, fds: &mut dyn FdSource) -> Result<(), RegistryError> {
        let mut netdevs = self.netdevs();
        if netdevs.iter().any(|n| n.config.id == config.id) {
            return Err(RegistryError::Duplicate(config.id));
        }
        let backend = config.open(fds, &self.env)?;
        for port in self.ports_of(&config.id) {
            port.bind(Some(backend.clone()))?;
        }
        let mut netdev = Netdev::new(config, backend);
        if netdev.joins().is_some() {
            netdev.uplink = Some(self.uplink_for(&netdevs, &netdev)?);
        }
        log::info!(
            "netdev {} added: {}",
            netdev.config.id,
            netdev.backend.describe()
        );
        netdev.backend.watch_link(self.link_watch(&netdev.config));
        netdevs.push(netdev);
        Ok(())
    }

    /// Removes a netdev; its port stays, with the link down, until a netdev of that id returns.
    pub fn del(&self, id: &str) -> Result<(), RegistryError> {
        let mut netdevs = self.netdevs();
        let pos = netdevs
            .iter()
            .position(|n| n.config.id == id)
            .ok_or_else(|| RegistryError::NotFound(id.into()))?;
        for port in self.ports_of(id) {
            port.bind(None)?;
        }
        let removed = netdevs.remove(pos);
        // As in QEMU, a hub port joined to it stays on its hub, with nothing behind it.
        for n in netdevs.iter_mut() {
            if n.uplink.as_ref().is_some_and(|u| u.netdev == id) {
                n.uplink = None;
            }
        }
        drop(removed.uplink);
        // As in QEMU, the netdev's filters go with it.
        let ids: Vec<String> = self
            .captures()
            .iter()
            .filter(|c| c.netdev == id)
            .map(|c| c.id.clone())
            .collect();
        for capture in ids {
            let _ = self.remove_capture(&capture);
        }
        removed.backend.shutdown();
        log::info!("netdev {id} deleted");
        Ok(())
    }

    fn captures(&self) -> std::sync::MutexGuard<'_, Vec<CaptureEntry>> {
        self.captures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a `filter-dump` capture of a netdev's frames on the port serving it (recording
    /// nothing while `status=off`), with QEMU's errors.
    pub fn add_capture(&self, filter: &FilterDump) -> Result<(), String> {
        let (id, netdev) = (filter.id.as_str(), filter.netdev.as_str());
        // Lock order: netdevs (released here) before captures, as in `del`.
        let known = self.netdevs().iter().any(|n| n.config.id == netdev);
        let mut captures = self.captures();
        if captures.iter().any(|c| c.id == id) {
            return Err(format!(
                "attempt to add duplicate property '{id}' to object (type 'container')"
            ));
        }
        if !known {
            return Err("Parameter 'netdev' expects a network backend id".into());
        }
        let capture = Capture::start(filter.spec.clone())?;
        if filter.on {
            for port in self.ports_of(netdev) {
                port.capture().add(id, capture.clone());
            }
        }
        log::info!(
            "capture {id} of netdev {netdev} into {}",
            capture.spec.file.display()
        );
        captures.push(CaptureEntry {
            id: id.into(),
            netdev: netdev.into(),
            capture,
        });
        Ok(())
    }

    /// Stops capture `id` and closes its file.
    pub fn remove_capture(&self, id: &str) -> Result<(), String> {
        let entry = {
            let mut captures = self.captures();
            let pos = captures
                .iter()
                .position(|c| c.id == id)
                .ok_or_else(|| format!("object '{id}' not found"))?;
            captures.remove(pos)
        };
        for port in self.ports() {
            port.capture().remove(id);
        }
        entry.capture.stop();
        let c = &entry.capture.counters;
        use std::sync::atomic::Ordering::Relaxed;
        log::info!(
            "capture {id} stopped: {} records written, {} dropped (writer behind), {} over its limit",
            c.written.load(Relaxed),
            c.dropped.load(Relaxed),
            c.over_limit.load(Relaxed)
        );
        Ok(())
    }

    /// `query-netdev`: each netdev's configuration (as `netdev_add` takes it) and its port.
    pub fn query(&self) -> Vec<Value> {
        self.netdevs()
            .iter()
            .map(|n| {
                let mut m = n.config.to_json();
                // The port running the netdev's rings, else the first one naming it.
                let peer = self.queue_owners.holder(&n.config.id).or_else(|| {
                    self.ports_of(&n.config.id)
                        .first()
                        .map(|p| p.id().to_string())
                });
                if let Some(peer) = peer {
                    m.insert("peer-id".into(), Value::String(peer));
                }
                Value::Object(m)
            })
            .collect()
    }

    /// `set_link` on a port name, or on a netdev's name: the netdev keeps the state (as QEMU
    /// does for a netdev no device uses) and the port it serves, if any, takes it.
    pub fn set_link(&self, name: &str, up: bool) -> Result<(), RegistryError> {
        let port = lock(&self.ports).iter().find(|p| p.id() == name).cloned();
        if let Some(port) = port {
            port.set_link(up);
            return Ok(());
        }
        let mut netdevs = self.netdevs();
        let netdev = netdevs
            .iter_mut()
            .find(|n| n.config.id == name)
            .ok_or_else(|| RegistryError::NotFound(name.into()))?;
        netdev.link_up = up;
        for port in self.ports_of(name) {
            port.set_link(up);
        }
        Ok(())
    }

    /// Releases host-side state of every netdev (tap downscripts) at shutdown, after closing
    /// the captures' files.
    pub fn shutdown(&self) {
        for (_, served) in lock(&self.served).drain() {
            if let Some(file) = served.socket_file {
                if let Err(e) = std::fs::remove_file(&file) {
                    log::error!("removing {}: {e}", file.display());
                }
            }
        }
        let ids: Vec<String> = self.captures().iter().map(|c| c.id.clone()).collect();
        for id in ids {
            let _ = self.remove_capture(&id);
        }
        for n in self.netdevs().iter() {
            n.backend.shutdown();
        }
    }
}
