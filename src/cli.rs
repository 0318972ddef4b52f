//! Command-line arguments, turned into a [`Config`] without side effects.

use std::path::PathBuf;

use clap::Parser;
use vhost_user_netd_backends::NetdevConfig;

use std::os::fd::RawFd;

use crate::config::{build_port, parse_port, Config, ConfigError, Listen, QmpAddr, RuntimeConfig};
use crate::sandbox::privileges::resolve_ids;
use crate::sandbox::{SandboxConfig, SandboxMode};

const EXAMPLES: &str = "\
Examples:
  # Zero configuration: one port on the user-mode stack (QEMU's -netdev user), no root:
  vhost-user-netd --socket-path /tmp/vm0.sock

  # One port, one tap (created if missing), two queue pairs:
  vhost-user-netd --socket-path /run/vm0.sock --netdev tap,id=n0,ifname=tap0,queues=2

  # Two ports, each with its own tap:
  vhost-user-netd --netdev tap,id=n0,ifname=tap0 --netdev tap,id=n1,ifname=tap1 \\
    --port socket-path=/run/a.sock,netdev=n0,mac=52:54:00:12:34:56,queues=2 \\
    --port socket-path=/run/b.sock,netdev=n1

  # QEMU on the other side:
  qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=1G,share=on \\
    -machine memory-backend=mem -chardev socket,id=c0,path=/run/vm0.sock,reconnect-ms=1000 \\
    -netdev vhost-user,id=v0,chardev=c0,queues=2 -device virtio-net-pci,netdev=v0,mq=on

--netdev takes QEMU's -netdev syntax (type,key=value,... or JSON).";

/// A vhost-user virtio-net backend with QEMU's netdevs.
#[derive(Debug, Parser)]
#[command(name = "vhost-user-netd", version, about, after_help = EXAMPLES)]
pub struct Args {
    /// Listen on this vhost-user socket path (implies one port for the single netdev).
    #[arg(long, value_name = "PATH", conflicts_with = "fd")]
    pub socket_path: Option<PathBuf>,

    /// Serve a socket inherited as this descriptor: a listening one (systemd, libvirt), or one
    /// already connected to its frontend (a socketpair end, as QEMU's and libvirt's launchers
    /// hand over), which is served once: the daemon exits when it closes.
    #[arg(long, value_name = "N")]
    pub fd: Option<i32>,

    /// Connect to a listening frontend at --socket-path instead of listening (reconnects).
    #[arg(long, requires = "socket_path")]
    pub client: bool,

    /// MAC address reported to the guest for the implied port (default: the frontend's own).
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,

    /// MTU reported to the guest for the implied port.
    #[arg(long, value_name = "N")]
    pub mtu: Option<u32>,

    /// Host-side network backend, in QEMU's -netdev syntax. Repeatable.
    #[arg(long = "netdev", value_name = "TYPE,id=ID,...")]
    pub netdevs: Vec<String>,

    /// A vhost-user port: `socket-path=P|fd=N,netdev=ID[,id=NAME][,mac=M][,mtu=N][,queues=N][,client=on]`.
    #[arg(long = "port", value_name = "OPTIONS")]
    pub ports: Vec<String>,

    /// QMP management socket: `unix:PATH[,server=on][,wait=off]`, a bare path, or
    /// `tcp:HOST:PORT` on loopback. Repeatable.
    #[arg(long = "qmp", value_name = "ADDRESS")]
    pub qmp: Vec<String>,

    /// A QEMU object: `filter-dump,id=ID,netdev=ID,file=PATH[,maxlen=N][,queue=all|rx|tx]
    /// [,x-max-frames=N][,x-max-bytes=SIZE]` captures a netdev's frames to a pcap file from
    /// the start (QMP's object-add/object-del start and stop captures at run time). Repeatable.
    #[arg(long = "object", value_name = "filter-dump,id=ID,...")]
    pub objects: Vec<String>,

    /// Capture the port's frames, both ways, to this pcap file (as passt's --pcap; with
    /// several ports, use --object filter-dump,netdev=ID,...).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,

    /// Confinement after set-up: capabilities dropped (--keep-caps), no new privileges and a
    /// seccomp filter on every thread; scripts, helpers and guestfwd commands are run by a
    /// launcher process forked before it. `on`: a forbidden system call ends the process;
    /// `log`: it fails with ENOSYS and is logged; `off`: none (for debugging).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = SandboxMode::On)]
    pub sandbox: SandboxMode,

    /// A program the sandbox's launcher may run besides those the command line's netdevs name
    /// (a tap script or helper path, or a guestfwd command): for netdevs added over QMP.
    /// Repeatable. QEMU's default /etc/qemu-ifup, /etc/qemu-ifdown and bridge helper are allowed.
    #[arg(long = "allow-spawn", value_name = "PROGRAM")]
    pub allow_spawn: Vec<String>,

    /// Capabilities kept after set-up (comma-separated names such as net_admin,net_raw, or
    /// `none`). `auto`: with a QMP listener CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF, which
    /// netdev_add needs for taps, l2tpv3 and af-xdp; without one, none; an af-xdp netdev that
    /// loaded its XDP program keeps CAP_NET_ADMIN, CAP_BPF and CAP_SYS_ADMIN to remove it at exit
    /// (inhibit=on with vhost-user-netd-xdp-helper needs none).
    #[arg(
        long = "keep-caps",
        value_name = "auto|none|CAP,...",
        default_value = "auto"
    )]
    pub keep_caps: crate::sandbox::KeepCaps,

    /// A directory the sandboxed daemon may still read, create, write and remove files and
    /// sockets in (for what QMP adds later: unix socket paths, TFTP roots, capture files).
    /// Repeatable. The directories of the command line's sockets, its TFTP roots and the
    /// resolver file are allowed already.
    #[arg(long = "allow-path", value_name = "DIR")]
    pub allow_paths: Vec<PathBuf>,

    /// Run as this user (name or number) once set-up is done.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Run as this group (name or number) once set-up is done; default: the --user's group.
    #[arg(long, value_name = "GROUP", requires = "user")]
    pub group: Option<String>,

    /// Print the vhost-user backend capabilities as JSON and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Print this program's man page (roff) and exit.
    #[arg(long)]
    pub print_man_page: bool,

    /// Print a completion script for SHELL and exit.
    #[arg(long, value_name = "SHELL")]
    pub print_completions: Option<clap_complete::Shell>,

    /// One system call per frame on the socket backends (no recvmmsg/sendmmsg batches, no
    /// coalesced writes or multi-frame reads). Only useful as the benchmarks' reference.
    #[arg(long)]
    pub no_batching: bool,

    /// Microseconds a queue worker keeps looking for work (yielding the CPU between looks)
    /// before it sleeps; meanwhile it reads the rings of the pairs that just had work instead of
    /// asking the guest to kick them. Under load this saves most kicks and wake-ups. 0: sleep at
    /// once, kicks always. Pairs on the user-mode stack never poll: it saves them next to nothing.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub poll_us: u64,

    /// Queue pairs share this many worker threads (an event loop each; a new pair goes to the
    /// least loaded) instead of a thread each. Ports joined by a hub on one worker then hand
    /// frames over without a context switch. 0: a thread per queue pair.
    #[arg(long, value_name = "COUNT", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=256))]
    pub workers: u16,

    /// Where the user-mode stack finds the host's resolvers for its virtual name server.
    #[arg(long, value_name = "PATH", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
}

/// A socket the service manager passed (`LISTEN_FDS`), with its `FileDescriptorName=`
/// (`unknown` when none was given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritedSocket {
    pub fd: RawFd,
    pub name: String,
}

/// The name that makes an inherited socket the QMP listener.
pub const QMP_SOCKET_NAME: &str = "qmp";

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, ConfigError> {
        Config::from_args(args, Vec::new())
    }
}

/// Gives each `--port id=NAME` without a socket the inherited socket named NAME; returns the
/// sockets no port asked for.
fn adopt_named_sockets(
    ports: &mut [crate::config::PortConfig],
    mut sockets: Vec<InheritedSocket>,
) -> Result<Vec<InheritedSocket>, ConfigError> {
    for port in ports.iter_mut().filter(|p| p.listen == Listen::Activated) {
        let at = sockets
            .iter()
            .position(|s| s.name == port.id)
            .ok_or_else(|| {
                ConfigError::new(
                    "--port",
                    format!(
                        "id={}: no socket of that name was passed (LISTEN_FDNAMES, systemd's \
                     FileDescriptorName=)",
                        port.id
                    ),
                )
            })?;
        port.listen = Listen::Fd(sockets.remove(at).fd);
    }
    Ok(sockets)
}

impl Config {
    /// The configuration from the command line and the sockets a service manager passed.
    pub fn from_args(args: Args, inherited: Vec<InheritedSocket>) -> Result<Self, ConfigError> {
        let (qmp_sockets, port_sockets): (Vec<_>, Vec<_>) = inherited
            .into_iter()
            .partition(|s| s.name == QMP_SOCKET_NAME);
        let mut netdevs = Vec::new();
        for text in &args.netdevs {
            let n = NetdevConfig::parse_cli(text)
                .map_err(|e| ConfigError::new("--netdev", format!("'{text}': {e}")))?;
            netdevs.push(n);
        }
        let mut ports = Vec::new();
        for text in &args.ports {
            ports.push(parse_port(text, &netdevs)?);
        }
        let mut port_sockets = adopt_named_sockets(&mut ports, port_sockets)?;
        let mut implied_id = None;
        let implied = match (&args.socket_path, args.fd) {
            (Some(p), None) => Some(Listen::Path(p.clone())),
            (None, Some(fd)) => Some(Listen::Fd(fd)),
            // Socket activation alone: the one socket passed is the implied port's.
            _ if ports.is_empty() && port_sockets.len() == 1 => {
                let socket = port_sockets.remove(0);
                implied_id = (socket.name != "unknown").then_some(socket.name);
                Some(Listen::Fd(socket.fd))
            }
            _ => None,
        };
        if let Some(left) = port_sockets.first() {
            return Err(ConfigError::new(
                "LISTEN_FDS",
                format!(
                    "the socket named '{}' (fd {}) matches no port: give --port id={},netdev=ID",
                    left.name, left.fd, left.name
                ),
            ));
        }
        if let Some(listen) = implied {
            if !ports.is_empty() {
                return Err(ConfigError::new(
                    "--socket-path",
                    "cannot be combined with --port",
                ));
            }
            if netdevs.is_empty() {
                // No netdev: the user-mode stack with QEMU's defaults, as `-nic user` is.
                netdevs.push(NetdevConfig::parse_cli("user,id=net0").map_err(|e| {
                    ConfigError::new("--netdev", format!("default user netdev: {e}"))
                })?);
            }
            let netdev = match netdevs.as_slice() {
                [n] => n.id.clone(),
                _ => {
                    return Err(ConfigError::new(
                        "--socket-path",
                        "several netdevs: use --port ...,netdev=ID for each",
                    ))
                }
            };
            let option = |e: ConfigError| ConfigError::new(format!("--{}", e.option), e.message);
            ports.push(
                build_port(
                    implied_id,
                    listen,
                    args.client,
                    netdev,
                    args.mac.as_deref(),
                    args.mtu,
                    None,
                    &netdevs,
                )
                .map_err(option)?,
            );
        } else if args.mac.is_some() || args.mtu.is_some() || args.client {
            return Err(ConfigError::new(
                "--mac",
                "--mac, --mtu and --client go with --socket-path; use --port keys",
            ));
        }
        let mut qmp = args
            .qmp
            .iter()
            .map(|q| crate::config::parse_qmp(q))
            .collect::<Result<Vec<_>, _>>()?;
        qmp.extend(qmp_sockets.iter().map(|s| QmpAddr::Fd(s.fd)));
        let runtime = RuntimeConfig {
            workers: args.workers,
            poll_budget: std::time::Duration::from_micros(args.poll_us),
            batching: !args.no_batching,
            resolv_conf: args.resolv_conf.clone(),
            sandbox: SandboxConfig {
                mode: args.sandbox,
                allow_spawn: args.allow_spawn.clone(),
                allow_paths: args.allow_paths.clone(),
                keep_caps: args.keep_caps.clone(),
                ids: args
                    .user
                    .as_deref()
                    .map(|u| resolve_ids(u, args.group.as_deref()))
                    .transpose()
                    .map_err(|e| ConfigError::new("--user", e))?,
            },
        };
        let mut captures = args
            .objects
            .iter()
            .map(|o| crate::config::parse_object(o))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(file) = &args.pcap {
            let [port] = &ports[..] else {
                return Err(ConfigError::new(
                    "--pcap",
                    "with several ports, name the netdev: --object \
                     filter-dump,id=ID,netdev=ID,file=PATH",
                ));
            };
            captures.push(crate::capture::FilterDump {
                id: "pcap".into(),
                netdev: port.netdev.clone(),
                spec: crate::capture::CaptureSpec::new(file),
                on: true,
            });
        }
        Config {
            netdevs,
            ports,
            qmp,
            runtime,
            captures,
        }
        .validate()
    }
}

/// The man page, from the same definition the command line is parsed with.
pub fn man_page() -> std::io::Result<Vec<u8>> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_mangen::Man::new(Args::command()).render(&mut out)?;
    Ok(out)
}

/// A completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Args::command(), "vhost-user-netd", &mut out);
    out
}

/// What `--print-capabilities` prints (QEMU's vhost-user backend conventions).
pub fn capabilities_json() -> String {
    serde_json::json!({ "type": "net" }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["vhost-user-netd"];
        v.extend_from_slice(args);
        Config::try_from(Args::try_parse_from(v).expect("clap parse"))
    }

    fn activated(args: &[&str], sockets: &[(RawFd, &str)]) -> Result<Config, ConfigError> {
        let mut v = vec!["vhost-user-netd"];
        v.extend_from_slice(args);
        let inherited = sockets
            .iter()
            .map(|&(fd, name)| InheritedSocket {
                fd,
                name: name.into(),
            })
            .collect();
        Config::from_args(Args::try_parse_from(v).expect("clap parse"), inherited)
    }

    #[test]
    fn socket_activation_names_ports_and_the_qmp_listener() {
        // One socket and nothing else: the implied port on the default user stack, named.
        let c = activated(&[], &[(3, "vm0"), (4, "qmp")]).unwrap();
        assert_eq!(c.ports.len(), 1);
        assert_eq!(
            (c.ports[0].id.as_str(), &c.ports[0].listen),
            ("vm0", &Listen::Fd(3))
        );
        assert_eq!(c.netdevs[0].kind.type_name(), "user");
        assert_eq!(c.qmp, vec![QmpAddr::Fd(4)]);
        // Unnamed (systemd without FileDescriptorName=): the port is named after the fd.
        let c = activated(&["--netdev", "user,id=u0"], &[(3, "unknown")]).unwrap();
        assert_eq!(c.ports[0].id, "fd3");
        // Several: each --port id= takes the socket of its name.
        let c = activated(
            &[
                "--netdev",
                "user,id=a",
                "--netdev",
                "user,id=b",
                "--port",
                "id=vm-a,netdev=a",
                "--port",
                "id=vm-b,netdev=b",
            ],
            &[(3, "vm-b"), (4, "vm-a")],
        )
        .unwrap();
        assert_eq!(c.ports[0].listen, Listen::Fd(4));
        assert_eq!(c.ports[1].listen, Listen::Fd(3));
    }

    #[test]
    fn socket_activation_mismatches_are_errors() {
        let e = activated(
            &["--port", "id=vm1,netdev=net0", "--netdev", "user,id=net0"],
            &[(3, "vm0")],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("id=vm1: no socket of that name"),
            "{e}"
        );
        let e = activated(
            &[
                "--netdev",
                "user,id=a",
                "--port",
                "socket-path=/tmp/a.sock,netdev=a",
            ],
            &[(3, "vm9")],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("'vm9' (fd 3) matches no port"),
            "{e}"
        );
        let e = activated(&["--port", "netdev=net0", "--netdev", "user,id=net0"], &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("one of socket-path= and fd= is needed"),
            "{e}"
        );
    }

    #[test]
    fn socket_path_alone_serves_the_user_stack() {
        let c = config(&["--socket-path", "/tmp/vm0.sock"]).unwrap();
        assert_eq!(c.netdevs.len(), 1);
        assert_eq!(c.netdevs[0].id, "net0");
        assert_eq!(c.netdevs[0].kind.type_name(), "user");
        assert_eq!(c.ports[0].netdev, "net0");
    }

    #[test]
    fn single_port_is_implied() {
        let c = config(&[
            "--socket-path",
            "/run/vm0.sock",
            "--netdev",
            "tap,id=n0,ifname=tap0,queues=2",
        ])
        .unwrap();
        assert_eq!(c.ports.len(), 1);
        assert_eq!(c.ports[0].queues, 2);
        assert_eq!(c.ports[0].listen, Listen::Path("/run/vm0.sock".into()));
    }

    #[test]
    fn errors_name_the_option() {
        let e = config(&["--socket-path", "/a", "--netdev", "tap,id=n0,queues=x"]).unwrap_err();
        assert_eq!(e.option, "--netdev");
        assert!(e.message.contains("queues"), "{e}");
        let e = config(&[
            "--socket-path",
            "/a",
            "--netdev",
            "tap,id=n0",
            "--mac",
            "zz",
        ])
        .unwrap_err();
        assert_eq!(e.option, "--mac");
        let e = config(&[
            "--socket-path",
            "/a",
            "--netdev",
            "user,id=u,ipv4=off,ipv6=off",
        ])
        .unwrap_err();
        assert_eq!(e.option, "--netdev");
        assert!(e.message.contains("IPv4 and IPv6 disabled"), "{e}");
        let e = config(&["--netdev", "tap,id=n0"]).unwrap_err();
        assert_eq!(e.option, "--socket-path");
        let e = config(&["--netdev", "tap,id=n0", "--mac", "52:54:00:00:00:01"]).unwrap_err();
        assert_eq!(e.option, "--mac");
    }

    #[test]
    fn json_netdev_and_ports() {
        let c = config(&[
            "--netdev",
            r#"{"type":"tap","id":"n0","ifname":"a"}"#,
            "--netdev",
            "tap,id=n1,ifname=b",
            "--port",
            "socket-path=/a,netdev=n0",
            "--port",
            "socket-path=/b,netdev=n1,mac=52:54:00:12:34:56",
        ])
        .unwrap();
        assert_eq!(c.ports.len(), 2);
    }
}
