//! The vhost-user-netd daemon (see the library's module map).

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use log::{error, info};
use vhost_user_netd::cli::{capabilities_json, Args};
use vhost_user_netd::config::{Config, Listen, QmpAddr};
use vhost_user_netd::port::{bind_listener, inherited_listener, socket_path, Port};
use vhost_user_netd::qmp::commands::QmpContext;
use vhost_user_netd::signals;
use vhost_user_netd_backends::netdev::InheritedFds;

/// Exit code for bad command-line input (as clap uses).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    if args.print_capabilities {
        println!("{}", capabilities_json());
        return ExitCode::SUCCESS;
    }
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
    match run(config) {
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

fn run(config: Config) -> Result<(), Failure> {
    let mut fds = InheritedFds::default();
    let mut backends = Vec::new();
    for n in &config.netdevs {
        let backend = n.open(&mut fds).map_err(|e| {
            let message = format!("--netdev '{}': {e}", n.id);
            match e {
                vhost_user_netd_backends::Error::Option(_) => Failure::Usage(message),
                _ => Failure::Runtime(message),
            }
        })?;
        info!("netdev {}: {}", n.id, backend.describe());
        backends.push((n.id.clone(), backend));
    }
    let mut created = Vec::new();
    let mut threads = Vec::new();
    for pc in &config.ports {
        let backend = backends
            .iter()
            .find(|(id, _)| *id == pc.netdev)
            .map(|(_, b)| Arc::clone(b))
            .ok_or_else(|| format!("port: netdev '{}' missing", pc.netdev))?;
        let available = backend.capabilities().queue_pairs;
        if pc.queues > available {
            return Err(Failure::Usage(format!(
                "--port on '{}': {} queue pairs, backend has {available}",
                pc.netdev, pc.queues
            )));
        }
        let port = Port {
            config: pc.clone(),
            backend,
        };
        let thread = match (&pc.listen, pc.client) {
            (Listen::Path(path), true) => {
                let path = path.clone();
                std::thread::Builder::new()
                    .name(format!("port-{}", pc.netdev))
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
                info!("port {}: listening on {:?}", pc.netdev, pc.listen);
                std::thread::Builder::new()
                    .name(format!("port-{}", pc.netdev))
                    .spawn(move || port.serve_listener(listener))
            }
        };
        threads.push(thread.map_err(|e| format!("spawning port thread: {e}"))?);
    }
    let qmp = Arc::new(QmpContext::default());
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
    for path in &created {
        if let Err(e) = std::fs::remove_file(path) {
            error!("removing {}: {e}", path.display());
        }
    }
    for pc in &config.ports {
        debug_assert!(
            socket_path(pc).is_none()
                || created.iter().any(|p| Some(p.as_path()) == socket_path(pc))
        );
    }
    // Backends (tap downscripts) are shut down by the process exit; run their scripts first.
    for (_, backend) in &backends {
        backend.shutdown();
    }
    Ok(())
}
