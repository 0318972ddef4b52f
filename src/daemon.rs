//! The daemon as a library call: [`Daemon::start`] opens the netdevs, starts a thread per port
//! and the QMP listeners from a [`Config`]; [`Daemon::shutdown`] ends it in order (`SHUTDOWN`
//! event, sockets removed, tap downscripts run). `main.rs` only parses the command line, starts
//! the daemon and waits for a signal; a test can start one in its own process.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use log::{error, info};
use vhost_user_netd_backends::hub::Hubs;
use vhost_user_netd_backends::launcher::Launcher;
use vhost_user_netd_backends::{Batching, HostEnv, InheritedFds};

use crate::config::{Config, QmpAddr};
use crate::device::worker::Workers;
use crate::events::EventBus;
use crate::port::{Port, ServeError};
use crate::qmp::commands::QmpContext;
use crate::registry::{Netdev, Registry};
use crate::service_manager::ServiceManager;

/// How long shutdown waits for QMP clients to read `SHUTDOWN`.
const SHUTDOWN_EVENT_WAIT: Duration = Duration::from_millis(500);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad input (the command line's exit status 2).
    #[error("{0}")]
    Usage(String),
    /// The host refused something (exit status 1).
    #[error("{0}")]
    Runtime(String),
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    registry: Arc<Registry>,
    qmp: Arc<QmpContext>,
    /// Socket files the daemon created (removed at shutdown).
    created: Vec<PathBuf>,
    /// The systemd notifier, when a service manager listens.
    service_manager: Option<ServiceManager>,
    /// The queue workers (for their seccomp filter).
    workers: Arc<Workers>,
}

impl Daemon {
    /// Opens every netdev, then serves every port and QMP address of `config`; the daemon
    /// starts scripts and commands itself.
    pub fn start(config: &Config) -> Result<Daemon, StartError> {
        Daemon::start_with(config, Launcher::InProcess)
    }

    /// As [`Daemon::start`], with `launcher` starting the scripts, helpers and `guestfwd`
    /// commands (the launcher process of a sandboxed daemon).
    pub fn start_with(config: &Config, launcher: Launcher) -> Result<Daemon, StartError> {
        let env = host_env(config, launcher);
        let rt = &config.runtime;
        let workers = Workers::start(usize::from(rt.workers), rt.poll_budget, env.batching)
            .map_err(|e| StartError::Runtime(format!("--workers: {e}")))?;
        let netdevs = open_netdevs(config, &env)?;
        let events = Arc::new(EventBus::default());
        let workers = Arc::new(workers);
        let ports = make_ports(config, &netdevs, &events, &workers)?;
        let registry = Arc::new(
            Registry::new(netdevs, ports, Some(events.clone()))
                .with_env(env)
                .with_workers(workers.clone()),
        );
        registry
            .start_uplinks()
            .map_err(|e| StartError::Usage(format!("--netdev hubport: {e}")))?;
        for filter in &config.captures {
            registry
                .add_capture(filter)
                .map_err(|e| StartError::Usage(format!("--object {}: {e}", filter.id)))?;
        }
        let mut created = Vec::new();
        for port in registry.ports() {
            let served = port.serve().map_err(|e| match e {
                ServeError::Usage(m) => StartError::Usage(m),
                ServeError::Runtime(m) => StartError::Runtime(m),
            })?;
            registry.adopt(port.id(), served);
        }
        let qmp = Arc::new(QmpContext::with_events(registry.clone(), events));
        crate::qmp::server::start(&config.qmp, qmp.clone())
            .map_err(|e| StartError::Runtime(format!("--qmp: {e}")))?;
        for addr in &config.qmp {
            if let QmpAddr::Unix(path) = addr {
                created.push(path.clone());
            }
        }
        let service_manager = ServiceManager::start(registry.clone(), workers.clone(), &qmp.events);
        if let Some(sm) = &service_manager {
            sm.ready();
        }
        Ok(Daemon {
            registry,
            qmp,
            created,
            service_manager,
            workers,
        })
    }

    /// Sets the filters threads of each role put on top of the process's: `connection` for
    /// those serving a frontend from now on, `queue` for every queue thread, running or started
    /// later; true once every running queue worker is under it.
    pub fn confine_threads(
        &self,
        connection: seccompiler::BpfProgram,
        queue: seccompiler::BpfProgram,
    ) -> bool {
        self.workers.confine(connection, queue)
    }

    /// Ends the daemon: `SHUTDOWN` to QMP clients that read, the sockets it created removed,
    /// the netdevs shut down (tap downscripts). Port threads stop with the process.
    pub fn shutdown(self) {
        if let Some(sm) = self.service_manager {
            sm.stopping();
        }
        let reason = if self.qmp.quit_requested.load(Ordering::SeqCst) {
            "host-qmp-quit"
        } else {
            "host-signal"
        };
        self.qmp.events.emit(
            "SHUTDOWN",
            Some(serde_json::json!({ "guest": false, "reason": reason })),
        );
        // A client that does not read is not waited for beyond this.
        self.qmp.events.drain(SHUTDOWN_EVENT_WAIT);
        for path in &self.created {
            if let Err(e) = std::fs::remove_file(path) {
                error!("removing {}: {e}", path.display());
            }
        }
        self.registry.shutdown();
    }
}

/// What the backends are opened in, from the runtime settings.
fn host_env(config: &Config, launcher: Launcher) -> HostEnv {
    HostEnv {
        resolv_conf: config.runtime.resolv_conf.clone(),
        batching: if config.runtime.batching {
            Batching::ON
        } else {
            Batching::OFF
        },
        hubs: Hubs::default(),
        launcher,
    }
}

fn open_netdevs(config: &Config, env: &HostEnv) -> Result<Vec<Netdev>, StartError> {
    let mut fds = InheritedFds::default();
    let mut netdevs = Vec::new();
    for n in &config.netdevs {
        let backend = n.open(&mut fds, env).map_err(|e| {
            let message = format!("--netdev '{}': {e}", n.id);
            match e {
                vhost_user_netd_backends::Error::Option(_) => StartError::Usage(message),
                _ => StartError::Runtime(message),
            }
        })?;
        info!("netdev {}: {}", n.id, backend.describe());
        netdevs.push(Netdev::new(n.clone(), backend));
    }
    Ok(netdevs)
}

fn make_ports(
    config: &Config,
    netdevs: &[Netdev],
    events: &Arc<EventBus>,
    workers: &Arc<Workers>,
) -> Result<Vec<Port>, StartError> {
    let mut ports = Vec::new();
    for pc in &config.ports {
        let backend = netdevs
            .iter()
            .find(|n| n.config.id == pc.netdev)
            .map(|n| Arc::clone(&n.backend))
            .ok_or_else(|| StartError::Runtime(format!("port: netdev '{}' missing", pc.netdev)))?;
        let available = backend.capabilities().queue_pairs;
        if pc.queues > available {
            return Err(StartError::Usage(format!(
                "--port on '{}': {} queue pairs, backend has {available}",
                pc.netdev, pc.queues
            )));
        }
        ports.push(
            Port::new(pc.clone(), backend)
                .with_events(events.clone())
                .with_workers(workers.clone()),
        );
    }
    Ok(ports)
}
