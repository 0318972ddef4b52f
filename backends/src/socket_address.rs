//! QEMU's `SocketAddress` (a union on `type`: `unix`, `inet`, `fd`), as the stream and dgram
//! netdevs take it: parsed from options, written back for `query-netdev`, resolved and opened.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use serde_json::{json, Map, Value};

use crate::options::{OptionError, Opts};
use crate::Error;

/// Where a socket netdev listens, connects, binds or sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketAddress {
    Unix(UnixAddress),
    Inet(InetAddress),
    /// A descriptor named by `getfd` (QMP) or inherited by number (command line).
    Fd(String),
}

/// `UnixSocketAddress`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixAddress {
    pub path: String,
    /// Linux abstract namespace instead of a file.
    pub abstract_ns: Option<bool>,
    /// With `abstract`: the address length covers only the name (QEMU's default, on).
    pub tight: Option<bool>,
}

/// `InetSocketAddress`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InetAddress {
    pub host: String,
    pub port: String,
    /// The host is a numeric address: no name lookup.
    pub numeric: Option<bool>,
    /// Servers: if `port` is taken, try the following ports up to this one.
    pub to: Option<u16>,
    pub ipv4: Option<bool>,
    pub ipv6: Option<bool>,
    pub keep_alive: Option<bool>,
    pub mptcp: Option<bool>,
}

impl SocketAddress {
    /// Parses a nested `SocketAddress` member (`addr.type=inet,addr.host=...`).
    pub fn from_opts(mut opts: Opts) -> Result<Self, OptionError> {
        let kind = opts.require_str("type")?;
        let addr =
            match kind.as_str() {
                "unix" => SocketAddress::Unix(UnixAddress {
                    path: opts.require_str("path")?,
                    abstract_ns: opts.take_bool("abstract")?,
                    tight: opts.take_bool("tight")?,
                }),
                "inet" => SocketAddress::Inet(InetAddress {
                    host: opts.require_str("host")?,
                    port: opts.require_str("port")?,
                    numeric: opts.take_bool("numeric")?,
                    to: opts
                        .take_uint("to", u16::MAX.into(), "uint16_t")?
                        .map(|v| v as u16),
                    ipv4: opts.take_bool("ipv4")?,
                    ipv6: opts.take_bool("ipv6")?,
                    keep_alive: opts.take_bool("keep-alive")?,
                    mptcp: opts.take_bool("mptcp")?,
                }),
                "fd" => SocketAddress::Fd(opts.require_str("str")?),
                "vsock" => return Err(OptionError::Invalid(
                    "socket address type 'vsock' is not supported by vhost-user-netd; use unix, \
                     inet or fd"
                        .into(),
                )),
                other => {
                    return Err(OptionError::BadEnum {
                        name: opts.name_of("type"),
                        value: other.to_string(),
                    })
                }
            };
        opts.finish()?;
        if let SocketAddress::Unix(u) = &addr {
            if u.path.is_empty() || u.path.len() >= 108 {
                return Err(OptionError::Invalid(format!(
                    "UNIX socket path '{}' is empty or longer than 107 bytes",
                    u.path
                )));
            }
            if u.tight == Some(false) {
                return Err(OptionError::Invalid(
                    "tight=off (padded abstract addresses) is not supported".into(),
                ));
            }
        }
        Ok(addr)
    }

    /// The address as `SocketAddress` JSON, as given (for `query-netdev`/`netdev_add`).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        let opt = |m: &mut Map<String, Value>, k: &str, v: Option<bool>| {
            if let Some(v) = v {
                m.insert(k.into(), Value::Bool(v));
            }
        };
        match self {
            SocketAddress::Unix(u) => {
                m.insert("type".into(), "unix".into());
                m.insert("path".into(), u.path.clone().into());
                opt(&mut m, "abstract", u.abstract_ns);
                opt(&mut m, "tight", u.tight);
            }
            SocketAddress::Inet(i) => {
                m.insert("type".into(), "inet".into());
                m.insert("host".into(), i.host.clone().into());
                m.insert("port".into(), i.port.clone().into());
                opt(&mut m, "numeric", i.numeric);
                if let Some(to) = i.to {
                    m.insert("to".into(), to.into());
                }
                opt(&mut m, "ipv4", i.ipv4);
                opt(&mut m, "ipv6", i.ipv6);
                opt(&mut m, "keep-alive", i.keep_alive);
                opt(&mut m, "mptcp", i.mptcp);
            }
            SocketAddress::Fd(name) => {
                m.insert("type".into(), "fd".into());
                m.insert("str".into(), name.clone().into());
            }
        }
        Value::Object(m)
    }

    /// QEMU's name for the address type.
    pub fn type_name(&self) -> &'static str {
        match self {
            SocketAddress::Unix(_) => "unix",
            SocketAddress::Inet(_) => "inet",
            SocketAddress::Fd(_) => "fd",
        }
    }
}

impl InetAddress {
    /// Resolves host and port (IPv4/IPv6 restricted as asked); `port` overrides the configured
    /// one (a server walking `port..=to`).
    pub fn resolve(&self, port: Option<u16>) -> Result<Vec<SocketAddr>, Error> {
        let port = match port {
            Some(p) => p,
            None => self.first_port()?,
        };
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let candidates: Vec<SocketAddr> = if self.numeric == Some(true) || host.is_empty() {
            let ip: IpAddr = if host.is_empty() {
                IpAddr::from([0, 0, 0, 0])
            } else {
                host.parse().map_err(|_| {
                    Error::Option(OptionError::Invalid(format!(
                        "'{host}' is not a numeric address"
                    )))
                })?
            };
            vec![SocketAddr::new(ip, port)]
        } else {
            (host, port)
                .to_socket_addrs()
                .map_err(|e| Error::io(format!("address resolution failed for {host}"), e))?
                .collect()
        };
        let want_v4 = self.ipv4 != Some(false) && !(self.ipv6 == Some(true) && self.ipv4.is_none());
        let want_v6 = self.ipv6 != Some(false) && !(self.ipv4 == Some(true) && self.ipv6.is_none());
        let found: Vec<SocketAddr> = candidates
            .into_iter()
            .filter(|a| if a.is_ipv4() { want_v4 } else { want_v6 })
            .collect();
        if found.is_empty() {
            return Err(Error::Option(OptionError::Invalid(format!(
                "no usable address for '{}' with the requested address family",
                self.host
            ))));
        }
        Ok(found)
    }

    /// The configured port as a number.
    pub fn first_port(&self) -> Result<u16, Error> {
        self.port.parse().map_err(|_| {
            Error::Option(OptionError::Invalid(format!(
                "port '{}' is not a port number",
                self.port
            )))
        })
    }
}

/// A connected or bound peer as QEMU reports it in events: `inet` with the numeric host, the port
/// as a string and `ipv4`/`ipv6`, or `unix` with its path.
pub fn describe_inet(addr: &SocketAddr) -> Value {
    let family = if addr.is_ipv4() { "ipv4" } else { "ipv6" };
    json!({
        "type": "inet",
        "host": addr.ip().to_string(),
        "port": addr.port().to_string(),
        family: true,
    })
}

/// A unix socket address in event form.
pub fn describe_unix(path: &str) -> Value {
    json!({ "type": "unix", "path": path })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OptionSource;

    fn parse(text: &str) -> Result<SocketAddress, OptionError> {
        let mut opts = Opts::parse_keyval(&format!("x,{text}")).unwrap();
        SocketAddress::from_opts(opts.take_nested("addr").unwrap().unwrap())
    }

    #[test]
    fn parses_the_three_types_and_writes_them_back() {
        for text in [
            "addr.type=unix,addr.path=/run/a.sock",
            "addr.type=inet,addr.host=127.0.0.1,addr.port=5000,addr.to=5010,addr.ipv4=on",
            "addr.type=fd,addr.str=myfd",
        ] {
            let a = parse(text).unwrap();
            let back = SocketAddress::from_opts(Opts::new(
                a.to_json().as_object().unwrap().clone(),
                OptionSource::Json,
            ))
            .unwrap();
            assert_eq!(a, back, "{text}");
        }
    }

    #[test]
    fn refuses_bad_addresses_with_the_member_named() {
        assert_eq!(
            parse("addr.type=inet,addr.host=h").unwrap_err().to_string(),
            "Parameter 'addr.port' is missing"
        );
        assert_eq!(
            parse("addr.path=/x").unwrap_err().to_string(),
            "Parameter 'addr.type' is missing"
        );
        assert_eq!(
            parse("addr.type=pipe,addr.path=/x")
                .unwrap_err()
                .to_string(),
            "Parameter 'addr.type' does not accept value 'pipe'"
        );
        assert!(parse("addr.type=vsock,addr.cid=3,addr.port=1")
            .unwrap_err()
            .to_string()
            .contains("vsock"));
        assert_eq!(
            parse("addr.type=unix,addr.path=/x,addr.bogus=1")
                .unwrap_err()
                .to_string(),
            "Invalid parameter 'addr.bogus'"
        );
        assert!(parse(&format!("addr.type=unix,addr.path=/{}", "a".repeat(120))).is_err());
    }

    #[test]
    fn resolves_numeric_and_family_restricted() {
        let SocketAddress::Inet(mut i) =
            parse("addr.type=inet,addr.host=127.0.0.1,addr.port=80").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            i.resolve(None).unwrap(),
            vec!["127.0.0.1:80".parse().unwrap()]
        );
        i.ipv6 = Some(true);
        assert!(i.resolve(None).is_err());
        i.port = "http".into();
        assert!(i.first_port().is_err());
    }

    #[test]
    fn describes_peers_like_qemu() {
        assert_eq!(
            describe_inet(&"127.0.0.1:37954".parse().unwrap()),
            json!({"type":"inet","host":"127.0.0.1","port":"37954","ipv4":true})
        );
        assert_eq!(
            describe_inet(&"[::1]:5".parse().unwrap())["ipv6"],
            json!(true)
        );
    }
}
