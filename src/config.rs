//! The daemon's validated, immutable configuration.
//!
//! The command line is parsed without side effects into [`Config`]; every check that can be made
//! without opening anything happens here, so a bad option fails before any tap is created.

use std::collections::HashSet;
use std::net::ToSocketAddrs;
use std::os::fd::RawFd;
use std::path::PathBuf;

use vhost_user_netd_backends::launcher::LaunchPolicy;
use vhost_user_netd_backends::{NetdevConfig, NetdevKind, Opts};

use crate::mac::MacAddr;

/// Most queue pairs a port serves.
pub const MAX_QUEUE_PAIRS: u16 = 16;

/// A configuration error: the option it concerns and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{option}: {message}")]
pub struct ConfigError {
    pub option: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(option: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            option: option.into(),
            message: message.into(),
        }
    }
}

/// Where a port's vhost-user socket comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// Listen on (or with `client`, connect to) this path.
    Path(PathBuf),
    /// A socket inherited from the parent: listening (systemd, libvirt), or already connected
    /// to its frontend (one end of a socketpair; served once, then the daemon exits).
    Fd(RawFd),
    /// The socket the service manager passes under the port's id (socket activation); becomes
    /// [`Listen::Fd`] when the configuration is built, or an error if there is none.
    Activated,
}

/// One vhost-user port: a socket, and the netdev that serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    /// The port's name for QMP (`set_link`, `peer-id`): `id=`, else the socket file's stem.
    pub id: String,
    pub listen: Listen,
    /// Connect to a listening frontend instead of listening.
    pub client: bool,
    /// Id of the netdev that backs this port.
    pub netdev: String,
    pub mac: Option<MacAddr>,
    pub mtu: Option<u16>,
    /// Queue pairs; defaults to the netdev's queue count.
    pub queues: u16,
}

/// Where a QMP server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpAddr {
    Unix(PathBuf),
    /// A listening unix socket inherited from the service manager (named `qmp`).
    Fd(RawFd),
    /// Host and port; loopback only.
    Tcp(String, u16),
}

/// Parses QEMU's `-object` syntax for the one object type the daemon has: `filter-dump,id=...`
/// (or its JSON form).
pub fn parse_object(text: &str) -> Result<crate::capture::FilterDump, ConfigError> {
    let err = |m: String| ConfigError::new("--object", m);
    let mut opts = Opts::parse_cli(text).map_err(|e| err(e.to_string()))?;
    let qom_type = match opts.take_str("qom-type").map_err(|e| err(e.to_string()))? {
        Some(t) => t,
        None => opts.require_str("type").map_err(|e| err(e.to_string()))?,
    };
    if qom_type != "filter-dump" {
        return Err(err(format!(
            "object type '{qom_type}' is not supported by vhost-user-netd (only filter-dump)"
        )));
    }
    let filter = crate::capture::FilterDump::from_opts(&mut opts).map_err(err)?;
    opts.finish().map_err(|e| err(e.to_string()))?;
    Ok(filter)
}

/// Parses QEMU's `-qmp` syntax: `unix:PATH[,server=on][,wait=off]`, `tcp:HOST:PORT[,...]`, or a
/// bare path.
pub fn parse_qmp(text: &str) -> Result<QmpAddr, ConfigError> {
    let err = |m: &str| ConfigError::new("--qmp", format!("'{text}': {m}"));
    let mut parts = text.split(',');
    let target = parts.next().unwrap_or_default();
    for opt in parts {
        match opt {
            "server" | "server=on" | "wait=off" | "wait=on" | "nowait" => {}
            "server=off" => return Err(err("only server mode is supported")),
            other => return Err(err(&format!("unknown option '{other}'"))),
        }
    }
    if let Some(rest) = target.strip_prefix("tcp:") {
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| err("expected tcp:HOST:PORT"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port: u16 = port.parse().map_err(|_| err("port is not a number"))?;
        if !is_loopback(&host, port) {
            return Err(err("QMP over TCP is only offered on loopback addresses"));
        }
        return Ok(QmpAddr::Tcp(host, port));
    }
    let path = target.strip_prefix("unix:").unwrap_or(target);
    if path.is_empty() {
        return Err(err("empty path"));
    }
    Ok(QmpAddr::Unix(PathBuf::from(path)))
}

/// Everything the daemon was asked to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub netdevs: Vec<NetdevConfig>,
    pub ports: Vec<PortConfig>,
    pub qmp: Vec<QmpAddr>,
    pub runtime: RuntimeConfig,
    /// Captures started with the daemon (`--object filter-dump`, `--pcap`).
    pub captures: Vec<crate::capture::FilterDump>,
}

/// How the datapath runs, whatever the netdevs and ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Shared queue workers (`--workers`; 0: a worker per queue pair).
    pub workers: u16,
    /// How long a worker keeps looking for work before it sleeps (`--poll-us`).
    pub poll_budget: std::time::Duration,
    /// Several frames per system call (off with `--no-batching`).
    pub batching: bool,
    /// Where the user stack finds the host's resolvers (`--resolv-conf`).
    pub resolv_conf: PathBuf,
    /// Confinement after set-up (`--sandbox`, `--allow-spawn`, `--keep-caps`, `--user`).
    pub sandbox: crate::sandbox::SandboxConfig,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: 0,
            poll_budget: std::time::Duration::from_micros(50),
            batching: true,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            sandbox: crate::sandbox::SandboxConfig::default(),
        }
    }
}

/// Whether `host` resolves only to loopback addresses (QMP over TCP is for local use).
fn is_loopback(host: &str, port: u16) -> bool {
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs.all(|a| a.ip().is_loopback()),
        Err(_) => false,
    }
}

/// Queue pairs a netdev can serve, known from its options alone.
fn netdev_queues(n: &NetdevConfig) -> u16 {
    n.kind.queue_pairs()
}

/// A port's default name: its socket file's stem (`/run/vm0.sock` → `vm0`), or `fdN`.
fn default_port_id(listen: &Listen) -> String {
    match listen {
        Listen::Path(p) => p
            .file_stem()
            .map_or_else(|| "port".into(), |s| s.to_string_lossy().into_owned()),
        Listen::Fd(fd) => format!("fd{fd}"),
        Listen::Activated => "port".into(),
    }
}

/// Parses a `--port` value: `socket-path=P|fd=N,netdev=ID[,mac=M][,mtu=N][,queues=N][,client=on]`.
pub fn parse_port(text: &str, netdevs: &[NetdevConfig]) -> Result<PortConfig, ConfigError> {
    let err = |m: String| ConfigError::new("--port", format!("'{text}': {m}"));
    // key=value with QEMU's escaping; no implied key.
    let mut opts = Opts::parse_keyval(&format!("port,{text}")).map_err(|e| err(e.to_string()))?;
    let _ = opts.take_str("type");
    let path = opts
        .take_str("socket-path")
        .map_err(|e| err(e.to_string()))?;
    let fd = opts.take_u32("fd").map_err(|e| err(e.to_string()))?;
    let client = opts
        .take_bool("client")
        .map_err(|e| err(e.to_string()))?
        .unwrap_or(false);
    let netdev = opts.take_str("netdev").map_err(|e| err(e.to_string()))?;
    let mac = opts.take_str("mac").map_err(|e| err(e.to_string()))?;
    let mtu = opts.take_u32("mtu").map_err(|e| err(e.to_string()))?;
    let queues = opts.take_u32("queues").map_err(|e| err(e.to_string()))?;
    let id = if opts.contains("id") {
        Some(opts.take_id("id").map_err(|e| err(e.to_string()))?)
    } else {
        None
    };
    opts.finish().map_err(|e| err(e.to_string()))?;
    let listen =
        match (path, fd) {
            (Some(p), None) => Listen::Path(PathBuf::from(p)),
            (None, Some(fd)) => Listen::Fd(
                RawFd::try_from(fd).map_err(|_| err(format!("fd={fd} is out of range")))?,
            ),
            (None, None) if id.is_some() => Listen::Activated,
            _ => return Err(err(
                "one of socket-path= and fd= is needed (or, with socket activation, id= naming \
                 the inherited socket)"
                    .into(),
            )),
        };
    let netdev = match netdev {
        Some(n) => n,
        None if netdevs.len() == 1 => netdevs[0].id.clone(),
        None => {
            return Err(err(
                "netdev= is needed when there are several netdevs".into()
            ))
        }
    };
    build_port(
        id,
        listen,
        client,
        netdev,
        mac.as_deref(),
        mtu,
        queues,
        netdevs,
    )
    .map_err(|e| err(e.message))
}

/// Checks and assembles a port.
#[allow(clippy::too_many_arguments)]
pub fn build_port(
    id: Option<String>,
    listen: Listen,
    client: bool,
    netdev: String,
    mac: Option<&str>,
    mtu: Option<u32>,
    queues: Option<u32>,
    netdevs: &[NetdevConfig],
) -> Result<PortConfig, ConfigError> {
    let Some(n) = netdevs.iter().find(|n| n.id == netdev) else {
        return Err(ConfigError::new(
            "netdev",
            format!("no netdev with id '{netdev}'"),
        ));
    };
    if client && matches!(listen, Listen::Fd(_)) {
        return Err(ConfigError::new(
            "client",
            "a client port needs a socket path, not fd=",
        ));
    }
    let mac = match mac {
        Some(m) => Some(
            m.parse::<MacAddr>()
                .ok()
                .ok_or_else(|| ConfigError::new("mac", format!("'{m}' is not a MAC address")))?,
        ),
        None => None,
    };
    let mtu = match mtu {
        Some(m) if (68..=65535).contains(&m) => Some(m as u16),
        Some(m) => {
            return Err(ConfigError::new(
                "mtu",
                format!("{m} is out of range (68-65535)"),
            ))
        }
        None => None,
    };
    let available = netdev_queues(n);
    let queues = match queues {
        None => available,
        Some(q) if q >= 1 && q <= u32::from(MAX_QUEUE_PAIRS) && q <= u32::from(available) => q as u16,
        Some(q) => {
            return Err(ConfigError::new(
                "queues",
                format!("{q} queue pairs requested; netdev '{netdev}' has {available} (at most {MAX_QUEUE_PAIRS})"),
            ))
        }
    };
    let id = id.unwrap_or_else(|| default_port_id(&listen));
    Ok(PortConfig {
        id,
        listen,
        client,
        netdev,
        mac,
        mtu,
        queues,
    })
}

/// What the sandbox lets the user stack read for the host's resolvers: the directory the
/// resolver file really lives in (resolved through symlinks), since network managers replace
/// the file by renaming a new one over it, which a rule on the file alone would not cover;
/// the file alone when that directory is `/etc` itself.
fn resolver_rule(resolv_conf: &std::path::Path) -> PathBuf {
    let real = std::fs::canonicalize(resolv_conf).unwrap_or_else(|_| resolv_conf.to_path_buf());
    match real.parent() {
        Some(dir) if dir != std::path::Path::new("/etc") && dir != std::path::Path::new("/") => {
            dir.to_path_buf()
        }
        _ => real,
    }
}

/// The paths a netdev's options name, wherever they sit in QEMU's schema: a unix socket's
/// `path` (its directory gets sockets made and removed) and a `tftp` root (read).
fn netdev_paths(value: &serde_json::Value, fs: &mut crate::sandbox::filesystem::FsAccess) {
    use serde_json::Value;
    match value {
        Value::Object(members) => {
            for (key, v) in members {
                match (key.as_str(), v) {
                    ("path", Value::String(p)) => {
                        fs.socket_dirs
                            .extend(crate::sandbox::filesystem::socket_dir(p.as_ref()));
                    }
                    ("tftp", Value::String(p)) => fs.read.push(PathBuf::from(p)),
                    _ => netdev_paths(v, fs),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| netdev_paths(v, fs)),
        _ => {}
    }
}

impl Config {
    /// The programs the sandbox's launcher may run: QEMU's defaults, those the netdevs name,
    /// and `--allow-spawn`.
    pub fn launch_policy(&self) -> LaunchPolicy {
        let mut policy = LaunchPolicy::default();
        for n in &self.netdevs {
            policy.allow_netdev(n);
        }
        for p in &self.runtime.sandbox.allow_spawn {
            policy.allow(p.clone());
        }
        policy
    }

    /// What the configuration needs at run time: capabilities (for `--keep-caps=auto`) and the
    /// filesystem (sockets' directories, TFTP roots, the resolver file, `--allow-path`).
    pub fn runtime_needs(&self) -> crate::sandbox::RuntimeNeeds {
        use crate::sandbox::filesystem::{socket_dir, FsAccess};
        let mut fs = FsAccess {
            read: vec![resolver_rule(&self.runtime.resolv_conf)],
            socket_dirs: Vec::new(),
            state_dirs: Vec::new(),
        };
        for p in &self.ports {
            if let Listen::Path(path) = &p.listen {
                fs.socket_dirs.extend(socket_dir(path));
            }
        }
        for q in &self.qmp {
            if let QmpAddr::Unix(path) = q {
                fs.socket_dirs.extend(socket_dir(path));
            }
        }
        for n in &self.netdevs {
            netdev_paths(&serde_json::Value::Object(n.to_json()), &mut fs);
        }
        for p in &self.runtime.sandbox.allow_paths {
            fs.state_dirs.push(p.clone());
        }
        let qmp = !self.qmp.is_empty();
        let af_xdp = self
            .netdevs
            .iter()
            .any(|n| matches!(&n.kind, NetdevKind::AfXdp(_)));
        if af_xdp || (qmp && cfg!(feature = "af-xdp")) {
            fs.state_dirs.extend(
                crate::sandbox::filesystem::XDP_STATE_DIRS
                    .iter()
                    .map(PathBuf::from),
            );
        }
        crate::sandbox::RuntimeNeeds {
            fs,
            qmp,
            xdp_program: self
                .netdevs
                .iter()
                .any(|n| matches!(&n.kind, NetdevKind::AfXdp(x) if x.inhibit != Some(true))),
        }
    }

    pub fn validate(self) -> Result<Self, ConfigError> {
        let mut ids = HashSet::new();
        for n in &self.netdevs {
            if !ids.insert(n.id.as_str()) {
                return Err(ConfigError::new(
                    "--netdev",
                    format!("duplicate netdev id '{}'", n.id),
                ));
            }
        }
        let mut port_ids = HashSet::new();
        for p in &self.ports {
            if !port_ids.insert(p.id.as_str()) {
                return Err(ConfigError::new(
                    "--port",
                    format!("two ports are named '{}' (give id=)", p.id),
                ));
            }
        }
        let mut paths = HashSet::new();
        for p in &self.ports {
            let kind = self
                .netdevs
                .iter()
                .find(|n| n.id == p.netdev)
                .map(|n| &n.kind);
            if let Some(NetdevKind::Dump(_)) = kind {
                return Err(ConfigError::new(
                    "--port",
                    format!(
                        "netdev '{}' is a dump: it records its hub's frames, no port can use it",
                        p.netdev
                    ),
                ));
            }
            let key = format!("{:?}", p.listen);
            if !paths.insert(key) {
                return Err(ConfigError::new(
                    "--port",
                    format!("socket {:?} is used twice", p.listen),
                ));
            }
        }
        if self.ports.is_empty() && self.qmp.is_empty() {
            return Err(ConfigError::new(
                "--socket-path",
                "no port: give --socket-path, --fd or --port (or --qmp to add netdevs later)",
            ));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netdevs() -> Vec<NetdevConfig> {
        vec![
            NetdevConfig::parse_cli("tap,id=n0,ifname=t0,queues=2").unwrap(),
            NetdevConfig::parse_cli("tap,id=n1,ifname=t1").unwrap(),
        ]
    }

    #[test]
    fn ports_parse_and_check() {
        let n = netdevs();
        let p = parse_port(
            "socket-path=/run/a.sock,netdev=n0,mac=52:54:00:12:34:56,queues=2",
            &n,
        )
        .unwrap();
        assert_eq!((p.queues, p.mac.is_some(), p.client), (2, true, false));
        assert_eq!(
            parse_port("socket-path=/a,netdev=n1", &n).unwrap().queues,
            1
        );
        for bad in [
            "socket-path=/a,netdev=n1,queues=2",
            "socket-path=/a,netdev=nx",
            "socket-path=/a",
            "netdev=n0",
            "socket-path=/a,fd=3,netdev=n0",
            "fd=3,client=on,netdev=n0",
            "socket-path=/a,netdev=n0,mtu=20",
            "socket-path=/a,netdev=n0,mac=zz",
            "socket-path=/a,netdev=n0,what=1",
        ] {
            let e = parse_port(bad, &n).unwrap_err();
            assert_eq!(e.option, "--port", "{bad}");
        }
    }

    #[test]
    fn config_cross_checks() {
        let n = netdevs();
        let a = parse_port("socket-path=/a,netdev=n0", &n).unwrap();
        let b = parse_port("socket-path=/a,netdev=n1", &n).unwrap();
        let c = parse_port("socket-path=/b,netdev=n0", &n).unwrap();
        assert!(Config {
            netdevs: n.clone(),
            ports: vec![a.clone(), b],
            qmp: vec![],
            ..Default::default()
        }
        .validate()
        .is_err());
        // Two ports may share a netdev (a migration on this host).
        assert!(Config {
            netdevs: n.clone(),
            ports: vec![a.clone(), c],
            qmp: vec![],
            ..Default::default()
        }
        .validate()
        .is_ok());
        assert!(Config {
            netdevs: n.clone(),
            ports: vec![],
            qmp: vec![],
            ..Default::default()
        }
        .validate()
        .is_err());
        let mut dup = n.clone();
        dup.push(n[0].clone());
        assert!(Config {
            netdevs: dup,
            ports: vec![a.clone()],
            qmp: vec![],
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(Config {
            netdevs: n,
            ports: vec![a],
            qmp: vec![],
            ..Default::default()
        }
        .validate()
        .is_ok());
    }
}
