//! The vhost-user-netd daemon (see the library's module map).

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use log::{error, info};
use vhost_user_netd::cli::{capabilities_json, Args};
use vhost_user_netd::config::{Config, Listen, QmpAddr};
use vhost_user_netd::device::worker::Workers;
use vhost_user_netd::events::EventBus;
use vhost_user_netd::port::{bind_listener, inherited_listener, Port};
use vhost_user_netd::qmp::commands::QmpContext;
use vhost_user_netd::registry::{Netdev, Registry};
use vhost_user_netd::signals;
use vhost_user_netd_backends::hub::Hubs;
use vhost_user_netd_backends::{Batching, HostEnv, InheritedFds};

/// Exit code for bad command-line input (as clap uses).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    if args.print_capabilities {
        println!("{}", capabilities_json());
        return ExitCode::SUCCESS;
    }
    let env = HostEnv {
        resolv_conf: args.resolv_conf.clone(),
        batching: if args.no_batching {
            Batching::OFF
        } else {
            Batching::ON
        },
        hubs: Hubs::default(),
    };
    let workers = match Workers::start(
        usize::from(args.workers),
        std::time::Duration::from_micros(args.poll_us),
        env.batching,
    ) {
        Ok(w) => Arc::new(w),
        Err(e) => {
            eprintln!("vhost-user-netd: --workers: {e}");
            return ExitCode::FAILURE;
        }
    };
    vhost_user_netd_backends::sys::raise_fd_limit();
    let config = match Config::try_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vhost-user-netd: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(e) = signals::block_shutdown_signals() {
        eprintln!("vhost-user-netd: blocking signals: {e}");
        return ExitCode::FAILURE;
    }
    match run(config, workers, env) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("vhost-user-netd: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("vhost-user-netd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why the daemon could not start: bad input (exit 2) or a host failure (exit 1).
enum Failure {
    Usage(String),
    Runtime(String),
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure::Runtime(s)
    }
}

fn run(config: Config, workers: Arc<Workers>, env: HostEnv) -> Result<(), Failure> {
    let mut fds = InheritedFds::default();
    let mut netdevs = Vec::new();
    for n in &config.netdevs {
        let backend = n.open(&mut fds, &env).map_err(|e| {
            let message = format!("--netdev '{}': {e}", n.id);
            match e {
                vhost_user_netd_backends::Error::Option(_) => Failure::Usage(message),
                _ => Failure::Runtime(message),
            }
        })?;
        info!("netdev {}: {}", n.id, backend.describe());
        netdevs.push(Netdev {
            config: n.clone(),
            backend,
        });
    }
    let events = Arc::new(EventBus::default());
    let mut ports = Vec::new();
    for pc in &config.ports {
        let backend = netdevs
            .iter()
            .find(|n| n.config.id == pc.netdev)
            .map(|n| Arc::clone(&n.backend))
            .ok_or_else(|| format!("port: netdev '{}' missing", pc.netdev))?;
        let available = backend.capabilities().queue_pairs;
        if pc.queues > available {
            return Err(Failure::Usage(format!(
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
    let registry = Arc::new(Registry::new(netdevs, ports, Some(events.clone())).with_env(env));

    let mut created = Vec::new();
    for port in registry.ports() {
        let pc = &port.config;
        let port = port.clone();
        let name = format!("port-{}", pc.id);
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
                        let l = bind_listener(p)
                            .map_err(|e| format!("--socket-path {}: {e}", p.display()))?;
                        created.push(p.clone());
                        l
                    }
                    Listen::Fd(fd) => inherited_listener(*fd)
                        .map_err(|e| Failure::Usage(format!("--fd {fd}: {e}")))?,
                };
                info!("port {}: listening on {:?}", pc.id, pc.listen);
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || port.serve_listener(listener))
            }
        };
        thread.map_err(|e| format!("spawning port thread: {e}"))?;
    }
    let qmp = Arc::new(QmpContext::with_events(registry.clone(), events));
    vhost_user_netd::qmp::server::start(&config.qmp, qmp.clone())
        .map_err(|e| Failure::Runtime(format!("--qmp: {e}")))?;
    for addr in &config.qmp {
        if let QmpAddr::Unix(path) = addr {
            created.push(path.clone());
        }
    }
    let signal = signals::wait_for_shutdown();
    info!("signal {signal}: shutting down");
    let reason = if qmp.quit_requested.load(std::sync::atomic::Ordering::SeqCst) {
        "host-qmp-quit"
    } else {
        "host-signal"
    };
    qmp.events.emit(
        "SHUTDOWN",
        Some(serde_json::json!({ "guest": false, "reason": reason })),
    );
    // Clients that read get SHUTDOWN before the sockets close; one that does not is not waited
    // for beyond this.
    qmp.events.drain(std::time::Duration::from_millis(500));
    for path in &created {
        if let Err(e) = std::fs::remove_file(path) {
            error!("removing {}: {e}", path.display());
        }
    }
    // The process exit closes the backends; run their tap downscripts first.
    registry.shutdown();
    Ok(())
}
