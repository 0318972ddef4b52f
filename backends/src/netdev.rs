//! The `Netdev` union: one typed configuration per `-netdev` type, and the backend factory.
//!
//! Netdevs from the command line and (later) from QMP's `netdev_add` both become a
//! [`NetdevConfig`] here; nothing else parses netdev options.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::af_xdp::AfXdpOptions;
use crate::dgram::{DgramBackend, DgramOptions};
use crate::fd_source::FdSource;
use crate::host_env::HostEnv;
use crate::hub::dump::{DumpBackend, DumpOptions};
use crate::hub::{HubPortBackend, HubPortOptions};
use crate::l2tpv3::{L2tpv3Backend, L2tpv3Options};
use crate::options::{OptionError, Opts};
use crate::socket_netdev::SocketOptions;
use crate::stream::{StreamBackend, StreamOptions};
use crate::tap::{BridgeOptions, TapBackend, TapOptions};
use crate::user::{UserBackend, UserOptions};
use crate::vde::VdeOptions;
use crate::{Backend, Error};

/// Netdev types QEMU knows; the ones not listed in [`NetdevKind`] are refused by name.
const QEMU_NETDEV_TYPES: &[&str] = &[
    "none",
    "nic",
    "user",
    "tap",
    "l2tpv3",
    "socket",
    "stream",
    "dgram",
    "vde",
    "bridge",
    "hubport",
    "netmap",
    "af-xdp",
    "vhost-user",
    "vhost-vdpa",
    "vmnet-host",
    "vmnet-shared",
    "vmnet-bridged",
    "passt",
];

/// A netdev's configuration: its id and its type's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetdevConfig {
    pub id: String,
    pub kind: NetdevKind,
}

/// Per-type options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetdevKind {
    Tap(TapOptions),
    Bridge(BridgeOptions),
    Socket(SocketOptions),
    Vde(VdeOptions),
    Stream(StreamOptions),
    Dgram(DgramOptions),
    L2tpv3(L2tpv3Options),
    User(Box<UserOptions>),
    HubPort(HubPortOptions),
    /// QEMU 1.x's `dump`: a hub's frames into a pcap file.
    Dump(DumpOptions),
    AfXdp(AfXdpOptions),
}

impl NetdevKind {
    /// QEMU's name for the type.
    pub fn type_name(&self) -> &'static str {
        match self {
            NetdevKind::Tap(_) => "tap",
            NetdevKind::Bridge(_) => "bridge",
            NetdevKind::Socket(_) => "socket",
            NetdevKind::Vde(_) => "vde",
            NetdevKind::Stream(_) => "stream",
            NetdevKind::Dgram(_) => "dgram",
            NetdevKind::L2tpv3(_) => "l2tpv3",
            NetdevKind::User(_) => "user",
            NetdevKind::HubPort(_) => "hubport",
            NetdevKind::Dump(_) => "dump",
            NetdevKind::AfXdp(_) => "af-xdp",
        }
    }

    /// Queue pairs the netdev can serve, known from its options alone.
    pub fn queue_pairs(&self) -> u16 {
        match self {
            NetdevKind::Tap(t) => t.queue_count() as u16,
            NetdevKind::AfXdp(x) => x.queue_count(),
            _ => 1,
        }
    }
}

/// Why a QEMU netdev type is not one the daemon serves.
fn refusal(kind: &str) -> String {
    let why = match kind {
        "none" | "nic" => "it is not a host backend (a guest NIC is the VMM's side of a port)",
        "vhost-user" => "vhost-user-netd is the vhost-user backend, not a client of one",
        "vhost-vdpa" => {
            "it hands the datapath to a vDPA device in the kernel, which a process cannot be; \
             use QEMU's own -netdev vhost-vdpa"
        }
        "netmap" => {
            "it needs the netmap kernel module (FreeBSD, or an out-of-tree Linux module), which \
             Debian's kernels and QEMU do not have"
        }
        "vmnet-host" | "vmnet-shared" | "vmnet-bridged" => "vmnet.framework exists on macOS only",
        "passt" => {
            "QEMU's passt netdev starts passt for QEMU itself; run `passt --vhost-user` instead, \
             or this daemon's user stack (the default)"
        }
        _ => "it is not implemented yet",
    };
    format!("netdev type '{kind}' is not supported by vhost-user-netd: {why}")
}

impl NetdevConfig {
    /// Builds a config from options, consuming all of them (unknown members are errors).
    pub fn from_opts(mut opts: Opts) -> Result<Self, OptionError> {
        let type_name = opts.require_str("type")?;
        let id = opts.take_id("id")?;
        let kind = match type_name.as_str() {
            "tap" => NetdevKind::Tap(TapOptions::from_opts(&mut opts)?),
            "bridge" => NetdevKind::Bridge(BridgeOptions::from_opts(&mut opts)?),
            "socket" => NetdevKind::Socket(SocketOptions::from_opts(&mut opts)?),
            "vde" => NetdevKind::Vde(VdeOptions::from_opts(&mut opts)?),
            "stream" => NetdevKind::Stream(StreamOptions::from_opts(&mut opts)?),
            "dgram" => NetdevKind::Dgram(DgramOptions::from_opts(&mut opts)?),
            "l2tpv3" => NetdevKind::L2tpv3(L2tpv3Options::from_opts(&mut opts)?),
            "user" => NetdevKind::User(Box::new(UserOptions::from_opts(&mut opts)?)),
            "hubport" => NetdevKind::HubPort(HubPortOptions::from_opts(&mut opts)?),
            "dump" => NetdevKind::Dump(DumpOptions::from_opts(&mut opts)?),
            "af-xdp" => NetdevKind::AfXdp(AfXdpOptions::from_opts(&mut opts)?),
            other if QEMU_NETDEV_TYPES.contains(&other) => {
                return Err(OptionError::Invalid(refusal(other)))
            }
            other => {
                return Err(OptionError::BadEnum {
                    name: "type".into(),
                    value: other.to_string(),
                })
            }
        };
        opts.finish()?;
        Ok(NetdevConfig { id, kind })
    }

    /// Parses a command-line `--netdev` value (QEMU's `type,key=value` text or JSON).
    pub fn parse_cli(text: &str) -> Result<Self, OptionError> {
        NetdevConfig::from_opts(Opts::parse_cli(text)?)
    }

    /// The configuration as QEMU's `Netdev` JSON object (what `netdev_add` takes).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = match &self.kind {
            NetdevKind::Tap(t) => t.to_json(),
            NetdevKind::Bridge(b) => b.to_json(),
            NetdevKind::Socket(s) => s.to_json(),
            NetdevKind::Vde(v) => v.to_json(),
            NetdevKind::Stream(s) => s.to_json(),
            NetdevKind::Dgram(d) => d.to_json(),
            NetdevKind::L2tpv3(l) => l.to_json(),
            NetdevKind::User(u) => u.to_json(),
            NetdevKind::HubPort(h) => h.to_json(),
            NetdevKind::Dump(d) => d.to_json(),
            NetdevKind::AfXdp(x) => x.to_json(),
        };
        m.insert("id".into(), Value::String(self.id.clone()));
        m.insert("type".into(), Value::String(self.kind.type_name().into()));
        m
    }

    /// Opens the backend this configuration describes.
    pub fn open(&self, fds: &mut dyn FdSource, env: &HostEnv) -> Result<Arc<dyn Backend>, Error> {
        match &self.kind {
            NetdevKind::Tap(t) => Ok(Arc::new(TapBackend::open(t, fds, &env.launcher)?)),
            NetdevKind::Bridge(b) => {
                Ok(Arc::new(TapBackend::open(&b.as_tap(), fds, &env.launcher)?))
            }
            NetdevKind::Socket(s) => s.open(fds, env.batching),
            NetdevKind::Vde(v) => crate::vde::open(v, env.batching),
            NetdevKind::Stream(s) => Ok(Arc::new(StreamBackend::open(s, fds, env.batching)?)),
            NetdevKind::Dgram(d) => Ok(Arc::new(DgramBackend::open(d, fds, env.batching)?)),
            NetdevKind::L2tpv3(l) => Ok(Arc::new(L2tpv3Backend::open(l, fds, env.batching)?)),
            NetdevKind::User(u) => Ok(Arc::new(UserBackend::open(
                u,
                &env.resolv_conf,
                &env.launcher,
            )?)),
            NetdevKind::HubPort(h) => Ok(Arc::new(HubPortBackend::open(h, &env.hubs)?)),
            NetdevKind::Dump(d) => Ok(Arc::new(DumpBackend::open(d, &env.hubs, &self.id)?)),
            NetdevKind::AfXdp(x) => open_af_xdp(x, fds),
        }
    }
}

#[cfg(feature = "af-xdp")]
fn open_af_xdp(opts: &AfXdpOptions, fds: &mut dyn FdSource) -> Result<Arc<dyn Backend>, Error> {
    Ok(Arc::new(crate::af_xdp::AfXdpBackend::open(opts, fds)?))
}

/// A build without libxdp refuses the type when it is opened, as QEMU without CONFIG_AF_XDP.
#[cfg(not(feature = "af-xdp"))]
fn open_af_xdp(_opts: &AfXdpOptions, _fds: &mut dyn FdSource) -> Result<Arc<dyn Backend>, Error> {
    Err(Error::Option(OptionError::Invalid(
        "netdev type 'af-xdp' is not built into this vhost-user-netd (build it with \
         `--features af-xdp`, which needs libxdp's build tools)"
            .into(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_text_and_json() {
        let a = NetdevConfig::parse_cli("tap,id=n0,ifname=tap0,queues=2").unwrap();
        let b = NetdevConfig::parse_cli(r#"{"type":"tap","id":"n0","ifname":"tap0","queues":2}"#)
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(
            NetdevConfig::from_opts(Opts::new(a.to_json(), crate::OptionSource::Json)).unwrap(),
            a
        );
    }

    #[test]
    fn unknown_and_unsupported_types() {
        assert_eq!(
            NetdevConfig::parse_cli("foo,id=x").unwrap_err().to_string(),
            "Parameter 'type' does not accept value 'foo'"
        );
        for (kind, why) in [
            ("netmap,id=x,ifname=y", "netmap kernel module"),
            ("vhost-vdpa,id=x", "vDPA device"),
            ("vmnet-shared,id=x", "macOS"),
            ("vhost-user,id=x,chardev=c", "is the vhost-user backend"),
            ("passt,id=x", "passt --vhost-user"),
        ] {
            let e = NetdevConfig::parse_cli(kind).unwrap_err().to_string();
            assert!(
                e.contains(kind.split(',').next().unwrap()) && e.contains(why),
                "{e}"
            );
        }
        assert_eq!(
            NetdevConfig::parse_cli("tap,queues=2")
                .unwrap_err()
                .to_string(),
            "Parameter 'id' is missing"
        );
        assert_eq!(
            NetdevConfig::parse_cli("tap,id=n0,bogus=1")
                .unwrap_err()
                .to_string(),
            "Invalid parameter 'bogus'"
        );
    }
}
