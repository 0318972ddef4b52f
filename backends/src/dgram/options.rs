//! `NetdevDgramOptions`: `local` and `remote` socket addresses, with QEMU's table of valid
//! combinations and its error texts.

use std::net::{IpAddr, SocketAddr};

use serde_json::{Map, Value};

use crate::options::{OptionError, Opts};
use crate::socket_address::{InetAddress, SocketAddress};

/// Options of a `dgram` netdev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DgramOptions {
    pub local: Option<SocketAddress>,
    pub remote: Option<SocketAddress>,
}

/// What a valid combination means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DgramMode {
    /// Join the IPv4 group `group`; send from `interface` if given; or use a descriptor.
    Multicast {
        group: SocketAddr,
        interface: Option<MulticastLocal>,
    },
    /// Bind `local`, send to `remote` (both inet or both unix).
    Unicast {
        local: SocketAddress,
        remote: SocketAddress,
    },
    /// A ready descriptor (connected, or bound and only received on).
    Fd(String),
}

/// `local` of a multicast netdev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MulticastLocal {
    Interface(std::net::Ipv4Addr),
    Fd(String),
}

impl DgramOptions {
    pub fn from_opts(opts: &mut Opts) -> Result<Self, OptionError> {
        let local = opts
            .take_nested("local")?
            .map(SocketAddress::from_opts)
            .transpose()?;
        let remote = opts
            .take_nested("remote")?
            .map(SocketAddress::from_opts)
            .transpose()?;
        let options = DgramOptions { local, remote };
        options.mode()?;
        Ok(options)
    }

    /// Decides what the combination means, refusing the ones QEMU refuses, in its words.
    pub fn mode(&self) -> Result<DgramMode, OptionError> {
        let invalid = |s: &str| Err(OptionError::Invalid(s.to_string()));
        if let Some(SocketAddress::Inet(r)) = &self.remote {
            let group = inet_v4(r)?;
            if group.ip().is_multicast() {
                let interface = match &self.local {
                    None => None,
                    Some(SocketAddress::Inet(l)) => {
                        let ip: std::net::Ipv4Addr = l.host.parse().map_err(|_| {
                            OptionError::Invalid(format!(
                                "localaddr '{}' is not a valid IPv4 address",
                                l.host
                            ))
                        })?;
                        Some(MulticastLocal::Interface(ip))
                    }
                    Some(SocketAddress::Fd(name)) => Some(MulticastLocal::Fd(name.clone())),
                    Some(_) => return invalid("only support inet or fd type for local"),
                };
                return Ok(DgramMode::Multicast {
                    group: SocketAddr::new(IpAddr::V4(*group.ip()), group.port()),
                    interface,
                });
            }
        }
        let Some(local) = &self.local else {
            return invalid("dgram requires local= parameter");
        };
        match (&self.remote, local) {
            (Some(_), SocketAddress::Fd(_)) => invalid("don't set remote with local.fd"),
            (Some(remote), local) if remote.type_name() != local.type_name() => {
                invalid("remote and local types must be the same")
            }
            (Some(remote), local) => {
                if let (SocketAddress::Inet(l), SocketAddress::Inet(r)) = (local, remote) {
                    // Check both now so that errors come at creation.
                    inet_v4(l)?;
                    inet_v4(r)?;
                }
                Ok(DgramMode::Unicast {
                    local: local.clone(),
                    remote: remote.clone(),
                })
            }
            (None, SocketAddress::Fd(name)) => Ok(DgramMode::Fd(name.clone())),
            (None, _) => invalid("type=inet or type=unix requires remote parameter"),
        }
    }

    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(l) = &self.local {
            m.insert("local".into(), l.to_json());
        }
        if let Some(r) = &self.remote {
            m.insert("remote".into(), r.to_json());
        }
        m
    }
}

/// An inet address as QEMU's dgram netdev takes it: IPv4, numeric or a name, numeric port.
fn inet_v4(i: &InetAddress) -> Result<std::net::SocketAddrV4, OptionError> {
    let port: u16 = i
        .port
        .parse()
        .map_err(|_| OptionError::Invalid(format!("error parsing port '{}'", i.port)))?;
    if let Ok(ip) = i.host.parse::<std::net::Ipv4Addr>() {
        return Ok(std::net::SocketAddrV4::new(ip, port));
    }
    use std::net::ToSocketAddrs;
    (i.host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| {
            a.find_map(|a| match a {
                SocketAddr::V4(v4) => Some(v4),
                SocketAddr::V6(_) => None,
            })
        })
        .ok_or_else(|| OptionError::Invalid(format!("host not found: {}", i.host)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DgramOptions, OptionError> {
        let mut opts = Opts::parse_keyval(text)?;
        opts.take_value("type");
        let o = DgramOptions::from_opts(&mut opts)?;
        opts.finish()?;
        Ok(o)
    }

    const L: &str = "local.type=inet,local.host=127.0.0.1,local.port=7000";
    const R: &str = "remote.type=inet,remote.host=127.0.0.1,remote.port=7001";
    const M: &str = "remote.type=inet,remote.host=230.0.0.1,remote.port=7000";
    const LU: &str = "local.type=unix,local.path=/tmp/l";
    const RU: &str = "remote.type=unix,remote.path=/tmp/r";
    const LF: &str = "local.type=fd,local.str=x";

    #[test]
    fn qemu_validity_table() {
        let err = |t: &str| parse(t).unwrap_err().to_string();
        // remote absent
        assert_eq!(err("dgram"), "dgram requires local= parameter");
        assert_eq!(
            err(&format!("dgram,{L}")),
            "type=inet or type=unix requires remote parameter"
        );
        assert!(matches!(
            parse(&format!("dgram,{LF}")).unwrap().mode().unwrap(),
            DgramMode::Fd(_)
        ));
        // multicast remote, with or without local
        assert!(matches!(
            parse(&format!("dgram,{M}")).unwrap().mode().unwrap(),
            DgramMode::Multicast {
                interface: None,
                ..
            }
        ));
        assert!(matches!(
            parse(&format!("dgram,{M},{L}")).unwrap().mode().unwrap(),
            DgramMode::Multicast {
                interface: Some(MulticastLocal::Interface(_)),
                ..
            }
        ));
        assert_eq!(
            err(&format!("dgram,{M},{LU}")),
            "only support inet or fd type for local"
        );
        // unicast remote needs local of the same type, not fd
        assert_eq!(
            err(&format!("dgram,{R}")),
            "dgram requires local= parameter"
        );
        assert!(matches!(
            parse(&format!("dgram,{R},{L}")).unwrap().mode().unwrap(),
            DgramMode::Unicast { .. }
        ));
        assert!(parse(&format!("dgram,{RU},{LU}")).is_ok());
        assert_eq!(
            err(&format!("dgram,{RU},{L}")),
            "remote and local types must be the same"
        );
        assert_eq!(
            err(&format!("dgram,{RU},{LF}")),
            "don't set remote with local.fd"
        );
        assert_eq!(
            err("dgram,local.type=inet,local.host=127.0.0.1,local.port=x,remote.type=inet,remote.host=127.0.0.1,remote.port=1"),
            "error parsing port 'x'"
        );
    }

    #[test]
    fn round_trips_through_json() {
        let o = parse(&format!("dgram,{M},{L}")).unwrap();
        let mut back = Opts::new(o.to_json(), crate::OptionSource::Json);
        assert_eq!(DgramOptions::from_opts(&mut back).unwrap(), o);
    }
}
