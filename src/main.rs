//! The vhost-user-netd daemon (see the library's module map): parses the command line, starts
//! the daemon, waits for SIGTERM/SIGINT (or QMP `quit`) and ends it.

use std::process::ExitCode;

use clap::Parser;
use log::info;
use vhost_user_netd::cli::{capabilities_json, Args};
use vhost_user_netd::config::Config;
use vhost_user_netd::daemon::{Daemon, StartError};
use vhost_user_netd::sandbox::SandboxMode;
use vhost_user_netd::signals;
use vhost_user_netd_backends::launcher::Launcher;

/// Exit code for bad command-line input (as clap uses).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    if args.print_capabilities {
        println!("{}", capabilities_json());
        return ExitCode::SUCCESS;
    }
    let generated = if args.print_man_page {
        Some(vhost_user_netd::cli::man_page())
    } else {
        args.print_completions
            .map(|shell| Ok(vhost_user_netd::cli::completions(shell)))
    };
    if let Some(text) = generated {
        use std::io::Write;
        return match text.and_then(|t| std::io::stdout().write_all(&t)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vhost-user-netd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    vhost_user_netd_backends::sys::raise_fd_limit();
    let inherited = match vhost_user_netd::service_manager::inherited_sockets() {
        Ok(sockets) => sockets,
        Err(e) => {
            eprintln!("vhost-user-netd: LISTEN_FDS: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let config = match Config::from_args(args, inherited) {
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
    let sandbox = &config.runtime.sandbox;
    // Forked while the process has one thread: nothing has started one yet.
    let launcher = if sandbox.mode == SandboxMode::Off {
        Launcher::InProcess
    } else {
        match Launcher::fork(config.launch_policy()) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("vhost-user-netd: starting the launcher process: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let daemon = match Daemon::start_with(&config, launcher) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("vhost-user-netd: {e}");
            return match e {
                StartError::Usage(_) => ExitCode::from(EXIT_USAGE),
                StartError::Runtime(_) => ExitCode::FAILURE,
            };
        }
    };
    let confined = vhost_user_netd::sandbox::confine(sandbox, &config.runtime_needs()).and_then(
        |confinement| {
            info!("{confinement}");
            if sandbox.mode != SandboxMode::Off {
                use vhost_user_netd::sandbox::seccomp::{connection_filter, queue_worker_filter};
                let connection = connection_filter(sandbox.mode)?;
                if daemon.confine_threads(connection, queue_worker_filter(sandbox.mode)?) {
                    info!("connection and queue threads: their own seccomp filters on top");
                }
            }
            Ok(())
        },
    );
    if let Err(e) = confined {
        eprintln!("vhost-user-netd: --sandbox: {e}");
        daemon.shutdown();
        return ExitCode::FAILURE;
    }
    #[cfg(feature = "sandbox-probe")]
    if std::env::var_os("VUNETD_SANDBOX_PROBE").is_some_and(|v| v != "worker") {
        let ret = vhost_user_netd::sandbox::make_forbidden_call();
        info!("sandbox probe: the forbidden call returned {ret}");
    }
    let signal = signals::wait_for_shutdown();
    info!("signal {signal}: shutting down");
    daemon.shutdown();
    ExitCode::SUCCESS
}
