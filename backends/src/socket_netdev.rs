//! `-netdev socket` (QEMU's `NetdevSocketOptions`): the legacy netdev that predates `stream` and
//! `dgram`, with the same wire formats, so it is served by those backends:
//!
//! - `listen=HOST:PORT` / `connect=HOST:PORT`: TCP, each frame after a 4-byte big-endian length
//!   (a `stream` server / client). `connect=` tries again every second until the listener is
//!   up, where QEMU's gives up after the first refusal.
//! - `mcast=GROUP:PORT[,localaddr=IP]`: one frame per UDP datagram to an IPv4 group (a
//!   multicast `dgram`).
//! - `udp=HOST:PORT,localaddr=HOST:PORT`: one frame per UDP datagram between two addresses (a
//!   unicast `dgram`).
//! - `fd=N`: a socket already open, connected stream or datagram by its type.
//!
//! Option rules and error texts are QEMU's (`net/socket.c`), checked against QEMU 10.

use std::net::{Ipv4Addr, SocketAddrV4, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::dgram::{DgramBackend, DgramOptions};
use crate::fd_source::{FdSource, OneFd};
use crate::options::{OptionError, Opts};
use crate::socket_address::{InetAddress, SocketAddress};
use crate::stream::{StreamBackend, StreamOptions};
use crate::{sys, Backend, Batching, Error};

/// The socket netdev's options as given (kept as given so that they can be reported back).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketOptions {
    pub fd: Option<String>,
    pub listen: Option<String>,
    pub connect: Option<String>,
    pub mcast: Option<String>,
    pub localaddr: Option<String>,
    pub udp: Option<String>,
}

/// What the options mean.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Stream(StreamOptions),
    Dgram(DgramOptions),
    Fd(String),
}

impl SocketOptions {
    pub fn from_opts(opts: &mut Opts) -> Result<Self, OptionError> {
        let o = SocketOptions {
            fd: opts.take_str("fd")?,
            listen: opts.take_str("listen")?,
            connect: opts.take_str("connect")?,
            mcast: opts.take_str("mcast")?,
            localaddr: opts.take_str("localaddr")?,
            udp: opts.take_str("udp")?,
        };
        o.mode()?;
        Ok(o)
    }

    /// QEMU's checks, in its order and words, and what the options come to.
    fn mode(&self) -> Result<Mode, OptionError> {
        let invalid = |s: String| OptionError::Invalid(s);
        let given = [
            &self.fd,
            &self.listen,
            &self.connect,
            &self.mcast,
            &self.udp,
        ]
        .iter()
        .filter(|o| o.is_some())
        .count();
        if given != 1 {
            return Err(invalid(
                "exactly one of listen=, connect=, mcast= or udp= is required".into(),
            ));
        }
        if self.localaddr.is_some() && self.mcast.is_none() && self.udp.is_none() {
            return Err(invalid(
                "localaddr= is only valid with mcast= or udp=".into(),
            ));
        }
        if let Some(fd) = &self.fd {
            return Ok(Mode::Fd(fd.clone()));
        }
        if let Some(text) = self.listen.as_ref().or(self.connect.as_ref()) {
            let server = self.listen.is_some();
            return Ok(Mode::Stream(StreamOptions {
                addr: SocketAddress::Inet(inet(host_port(text)?)),
                server: Some(server),
                reconnect: (!server).then_some(1),
                reconnect_ms: None,
            }));
        }
        if let Some(text) = &self.mcast {
            let group = host_port(text)?;
            if !group.ip().is_multicast() {
                return Err(invalid(format!(
                    "specified mcastaddr {} (0x{:08x}) does not contain a multicast address",
                    group.ip(),
                    u32::from(*group.ip())
                )));
            }
            let local = match &self.localaddr {
                None => None,
                Some(ip) => {
                    let ip: Ipv4Addr = ip.parse().map_err(|_| {
                        invalid(format!("localaddr '{ip}' is not a valid IPv4 address"))
                    })?;
                    Some(inet(SocketAddrV4::new(ip, 0)))
                }
            };
            return Ok(Mode::Dgram(DgramOptions {
                local: local.map(SocketAddress::Inet),
                remote: Some(SocketAddress::Inet(inet(group))),
            }));
        }
        let remote = host_port(self.udp.as_deref().unwrap_or_default())?;
        let Some(local) = &self.localaddr else {
            return Err(invalid("localaddr= is mandatory with udp=".into()));
        };
        Ok(Mode::Dgram(DgramOptions {
            local: Some(SocketAddress::Inet(inet(host_port(local)?))),
            remote: Some(SocketAddress::Inet(inet(remote))),
        }))
    }

    /// Opens the stream or dgram backend the options come to.
    pub fn open(
        &self,
        fds: &mut dyn FdSource,
        batching: Batching,
    ) -> Result<Arc<dyn Backend>, Error> {
        Ok(match self.mode()? {
            Mode::Stream(o) => Arc::new(StreamBackend::open(&o, fds, batching)?),
            Mode::Dgram(o) => Arc::new(DgramBackend::open(&o, fds, batching)?),
            Mode::Fd(name) => {
                let fd = fds.take_fd(&name)?;
                let kind = sys::socket_type(fd.as_raw_fd()).map_err(|_| {
                    Error::Option(OptionError::Invalid(
                        "can't get socket option SO_TYPE".into(),
                    ))
                })?;
                let mut this = OneFd::new(fd);
                let addr = SocketAddress::Fd(name.clone());
                match kind {
                    libc::SOCK_STREAM => Arc::new(StreamBackend::open(
                        &StreamOptions {
                            addr,
                            server: Some(false),
                            reconnect: None,
                            reconnect_ms: None,
                        },
                        &mut this,
                        batching,
                    )?),
                    libc::SOCK_DGRAM => Arc::new(DgramBackend::open(
                        &DgramOptions {
                            local: Some(addr),
                            remote: None,
                        },
                        &mut this,
                        batching,
                    )?),
                    other => {
                        return Err(Error::Option(OptionError::Invalid(format!(
                            "socket type={other} for fd={name} must be either SOCK_DGRAM or \
                             SOCK_STREAM"
                        ))))
                    }
                }
            }
        })
    }

    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        for (k, v) in [
            ("fd", &self.fd),
            ("listen", &self.listen),
            ("connect", &self.connect),
            ("mcast", &self.mcast),
            ("localaddr", &self.localaddr),
            ("udp", &self.udp),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), Value::String(v.clone()));
            }
        }
        m
    }
}

/// QEMU's `parse_host_port`: `HOST:PORT`, an empty host meaning any address.
fn host_port(text: &str) -> Result<SocketAddrV4, OptionError> {
    let invalid = |s: String| OptionError::Invalid(s);
    let (host, port) = text.rsplit_once(':').ok_or_else(|| {
        invalid(format!(
            "host address '{text}' doesn't contain ':' separating host from port"
        ))
    })?;
    let port: u16 = port
        .parse()
        .map_err(|_| invalid(format!("port number '{port}' is invalid")))?;
    if host.is_empty() {
        return Ok(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(SocketAddrV4::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut all| {
            all.find_map(|a| match a {
                std::net::SocketAddr::V4(v4) => Some(v4),
                std::net::SocketAddr::V6(_) => None,
            })
        })
        .ok_or_else(|| invalid(format!("can't resolve host address '{host}'")))
}

/// An `InetSocketAddress` for a resolved IPv4 address.
fn inet(a: SocketAddrV4) -> InetAddress {
    InetAddress {
        host: a.ip().to_string(),
        port: a.port().to_string(),
        numeric: Some(true),
        to: None,
        ipv4: None,
        ipv6: None,
        keep_alive: None,
        mptcp: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SocketOptions, String> {
        let mut opts = Opts::parse_keyval(text).map_err(|e| e.to_string())?;
        SocketOptions::from_opts(&mut opts).map_err(|e| e.to_string())
    }

    #[test]
    fn qemus_rules_and_texts() {
        // Each text as QEMU 10 prints it for the same options.
        for (text, error) in [
            (
                "",
                "exactly one of listen=, connect=, mcast= or udp= is required",
            ),
            (
                "listen=:1,connect=127.0.0.1:1",
                "exactly one of listen=, connect=, mcast= or udp= is required",
            ),
            (
                "listen=127.0.0.1:7777,localaddr=127.0.0.1",
                "localaddr= is only valid with mcast= or udp=",
            ),
            ("udp=127.0.0.1:7777", "localaddr= is mandatory with udp="),
            (
                "mcast=1.2.3.4:5",
                "specified mcastaddr 1.2.3.4 (0x01020304) does not contain a multicast address",
            ),
            (
                "listen=nohost",
                "host address 'nohost' doesn't contain ':' separating host from port",
            ),
            ("listen=:abc", "port number 'abc' is invalid"),
            (
                "listen=nosuchhost.invalid:1",
                "can't resolve host address 'nosuchhost.invalid'",
            ),
            (
                "udp=127.0.0.1:7777,localaddr=127.0.0.1",
                "host address '127.0.0.1' doesn't contain ':' separating host from port",
            ),
            (
                "mcast=230.0.0.1:7777,localaddr=bad",
                "localaddr 'bad' is not a valid IPv4 address",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err(), error, "{text}");
        }
    }

    #[test]
    fn each_form_comes_to_a_stream_or_dgram() {
        let o = parse("listen=:6010").unwrap();
        let Mode::Stream(s) = o.mode().unwrap() else {
            panic!()
        };
        assert!(s.is_server());
        assert_eq!(
            s.addr,
            SocketAddress::Inet(inet("0.0.0.0:6010".parse().unwrap()))
        );
        let Mode::Stream(c) = parse("connect=127.0.0.1:6011").unwrap().mode().unwrap() else {
            panic!()
        };
        assert!(!c.is_server());
        assert!(c.reconnect_delay().is_some());
        let dgram = |text: &str| match parse(text).unwrap().mode().unwrap() {
            Mode::Dgram(d) => d.mode().unwrap(),
            other => panic!("{text}: {other:?}"),
        };
        assert!(matches!(
            dgram("mcast=230.0.0.2:6012,localaddr=127.0.0.1"),
            crate::dgram::options::DgramMode::Multicast { .. }
        ));
        assert!(matches!(
            dgram("udp=127.0.0.1:6013,localaddr=127.0.0.1:6014"),
            crate::dgram::options::DgramMode::Unicast { .. }
        ));
        let o = parse("udp=127.0.0.1:6013,localaddr=127.0.0.1:6014").unwrap();
        assert_eq!(o.to_json()["udp"], "127.0.0.1:6013");
        assert_eq!(o.to_json().len(), 2);
    }
}
