//! `vhost-user-netd-xdp-helper`: the privileged step that lets the daemon use AF_XDP without
//! CAP_NET_ADMIN or CAP_BPF (`-netdev af-xdp,inhibit=on,...`).
//!
//! It attaches libxdp's XSK program to an interface, optionally pins the program's XSK map on a
//! bpf filesystem (`--pin-map`, for `map-path=`), creates one unbound AF_XDP socket per queue,
//! puts each in the map, raises `RLIMIT_MEMLOCK` for their UMEMs and runs the given command with
//! the sockets inherited, `{sock-fds}` in its arguments replaced by their numbers (for
//! `sock-fds=`). Drop privileges in that command (`setpriv`, `capsh`), not here.
//!
//! The helper stays as the command's parent: the program stays attached as long as the command
//! runs and, if the helper attached it, is taken off the interface when the command ends. SIGTERM, SIGINT and SIGHUP are passed on to
//! the command, which gets SIGTERM if the helper dies; the helper exits with the command's status.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use vhost_user_netd::signals;
use vhost_user_netd_backends::af_xdp::prepare::{raise_memlock, XskProgram};
use vhost_user_netd_backends::af_xdp::UMEM_BYTES_PER_QUEUE;

/// Attach the AF_XDP program to an interface and hand sockets (or the map) to an unprivileged
/// vhost-user-netd.
#[derive(Debug, Parser)]
#[command(name = "vhost-user-netd-xdp-helper", version)]
struct Args {
    /// The interface the af-xdp netdev uses.
    #[arg(long)]
    ifname: String,
    /// Sockets to create, one per queue pair of the netdev.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    queues: u32,
    /// The interface queue of the first socket (the netdev's `start-queue`).
    #[arg(long, default_value_t = 0)]
    start_queue: u32,
    /// Pin the program's XSK map at this path (on a mounted bpf filesystem) for `map-path=`.
    #[arg(long)]
    pin_map: Option<String>,
    /// Create no sockets (the command uses `map-path=`).
    #[arg(long)]
    no_sockets: bool,
    /// The command to run with the sockets; `{sock-fds}` in an argument becomes `fd:fd...`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = signals::block_shutdown_signals() {
        eprintln!("vhost-user-netd-xdp-helper: blocking signals: {e}");
        return ExitCode::FAILURE;
    }
    let program = match XskProgram::attach(&args.ifname) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "vhost-user-netd-xdp-helper: attaching the XSK program to '{}': {e}",
                args.ifname
            );
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.pin_map {
        if let Err(e) = program.pin_map(path) {
            eprintln!("vhost-user-netd-xdp-helper: pinning the XSK map at {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let Some((program_name, rest)) = args.command.split_first() else {
        return ExitCode::from(2);
    };
    let mut sockets: Vec<OwnedFd> = Vec::new();
    let queues = if args.no_sockets { 0 } else { args.queues };
    for queue in args.start_queue..args.start_queue + queues {
        match program.socket_for_queue(queue) {
            Ok(s) => sockets.push(s),
            Err(e) => {
                eprintln!("vhost-user-netd-xdp-helper: socket for queue {queue}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    raise_memlock(args.queues as usize * UMEM_BYTES_PER_QUEUE);
    let fds = sockets
        .iter()
        .map(|s| s.as_raw_fd().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut command = Command::new(program_name);
    command.args(rest.iter().map(|a| a.replace("{sock-fds}", &fds)));
    signals::supervised_child(&mut command);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vhost-user-netd-xdp-helper: running {program_name}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The child has its copies; ours would keep the sockets alive after it ends.
    drop(sockets);
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let waiter = std::thread::spawn({
        let done = done.clone();
        move || {
            let status = child.wait();
            done.store(true, Ordering::SeqCst);
            // Wakes the main thread's wait for a signal.
            signals::request_shutdown();
            status
        }
    });
    loop {
        let signal = signals::wait_for_shutdown();
        if done.load(Ordering::SeqCst) {
            break;
        }
        signals::forward(pid, signal);
    }
    if let Err(e) = program.detach_if_attached_here() {
        eprintln!(
            "vhost-user-netd-xdp-helper: taking the program off '{}': {e}",
            args.ifname
        );
    }
    match waiter.join() {
        Ok(Ok(status)) => ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8),
        _ => ExitCode::FAILURE,
    }
}
