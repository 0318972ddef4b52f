//! `-netdev af-xdp` options (QEMU's `NetdevAFXDPOptions`, with 10.1's `map-path` and
//! `map-start-index`) and QEMU's rules between them.
//!
//! Parsed in every build, so that a build without the `af-xdp` feature still checks a
//! configuration the same way and only refuses to open it.

use serde_json::{Map, Value};

use crate::options::{OptionError, Opts};
use crate::tap::options::MAX_QUEUES;

/// How the XDP program is attached (`AFXDPMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// Generic, on the skb (`XDP_FLAGS_SKB_MODE`): works on every interface, slower.
    Skb,
}

impl XdpMode {
    /// QEMU's name for the mode.
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Skb => "skb",
        }
    }
}

/// The af-xdp netdev's options as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AfXdpOptions {
    pub ifname: String,
    /// Unset: native, falling back to skb.
    pub mode: Option<XdpMode>,
    pub force_copy: Option<bool>,
    pub queues: Option<i64>,
    pub start_queue: Option<i64>,
    pub inhibit: Option<bool>,
    /// Colon-separated descriptor names (numbers on the command line, `getfd` names over QMP).
    pub sock_fds: Option<String>,
    /// A pinned XSK map the sockets are inserted into.
    pub map_path: Option<String>,
    pub map_start_index: Option<i32>,
}

impl AfXdpOptions {
    /// Takes the af-xdp members out of `opts` and checks QEMU's rules between them.
    pub fn from_opts(opts: &mut Opts) -> Result<Self, OptionError> {
        let mode = match opts.take_str("mode")? {
            None => None,
            Some(m) => Some(match m.as_str() {
                "native" => XdpMode::Native,
                "skb" => XdpMode::Skb,
                _ => {
                    return Err(OptionError::BadEnum {
                        name: opts.name_of("mode"),
                        value: m,
                    })
                }
            }),
        };
        let o = AfXdpOptions {
            ifname: opts.require_str("ifname")?,
            mode,
            force_copy: opts.take_bool("force-copy")?,
            queues: opts.take_i64("queues")?,
            start_queue: opts.take_i64("start-queue")?,
            inhibit: opts.take_bool("inhibit")?,
            sock_fds: opts.take_str("sock-fds")?,
            map_path: opts.take_str("map-path")?,
            map_start_index: opts.take_i32("map-start-index")?,
        };
        o.validate()?;
        Ok(o)
    }

    fn validate(&self) -> Result<(), OptionError> {
        let invalid = |text: String| Err(OptionError::Invalid(text));
        let queues = self.queues.unwrap_or(1);
        if queues < 1 {
            return invalid(format!(
                "invalid number of queues ({queues}) for '{}'",
                self.ifname
            ));
        }
        if queues > i64::from(MAX_QUEUES) {
            return invalid(format!(
                "invalid number of queues ({queues}) for '{}': at most {MAX_QUEUES}",
                self.ifname
            ));
        }
        if let Some(start) = self.start_queue {
            // QEMU ignores a negative value; a typo is better reported than ignored.
            if !(0..=i64::from(u32::MAX)).contains(&start) {
                return invalid(format!("'start-queue' cannot be negative ({start})"));
            }
        }
        let inhibit = self.inhibit == Some(true);
        let (fds, map) = (self.sock_fds.is_some(), self.map_path.is_some());
        if inhibit && !fds && !map {
            return invalid("'inhibit=on' requires 'sock-fds' or 'map-path'".into());
        }
        if !inhibit && (fds || map) {
            return invalid("'sock-fds' and 'map-path' require 'inhibit=on'".into());
        }
        if fds && map {
            return invalid("'sock-fds' and 'map-path' are mutually exclusive".into());
        }
        if !map && self.map_start_index.is_some() {
            return invalid("'map-start-index' requires 'map-path'".into());
        }
        if let Some(index) = self.map_start_index {
            if index < 0 {
                return invalid(format!("'map-start-index' cannot be negative ({index})"));
            }
        }
        if let Some(list) = &self.sock_fds {
            let n = i64::try_from(list.split(':').count()).unwrap_or(i64::MAX);
            if n != queues {
                return invalid(format!("expected {queues} socket fds, got {n}"));
            }
            if list.split(':').any(str::is_empty) {
                return invalid("Parameter 'sock-fds' has an empty descriptor name".into());
            }
        }
        Ok(())
    }

    /// Queue pairs: one AF_XDP socket per queue.
    pub fn queue_count(&self) -> u16 {
        self.queues.unwrap_or(1).clamp(1, i64::from(MAX_QUEUES)) as u16
    }

    /// The interface queue the first socket binds to.
    pub fn first_queue(&self) -> u32 {
        self.start_queue.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32
    }

    /// The XSK map slot of the first socket (with `map-path`).
    pub fn first_map_index(&self) -> u32 {
        self.map_start_index.unwrap_or(0).max(0) as u32
    }

    /// The descriptor names of `sock-fds`, in queue order.
    pub fn sock_fd_names(&self) -> Vec<&str> {
        self.sock_fds
            .as_deref()
            .map(|s| s.split(':').collect())
            .unwrap_or_default()
    }

    /// The options as a JSON object, in QEMU's member names (for `query-netdev`).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("ifname".into(), Value::String(self.ifname.clone()));
        if let Some(mode) = self.mode {
            m.insert("mode".into(), mode.name().into());
        }
        if let Some(v) = self.force_copy {
            m.insert("force-copy".into(), v.into());
        }
        if let Some(v) = self.queues {
            m.insert("queues".into(), v.into());
        }
        if let Some(v) = self.start_queue {
            m.insert("start-queue".into(), v.into());
        }
        if let Some(v) = self.inhibit {
            m.insert("inhibit".into(), v.into());
        }
        if let Some(v) = &self.sock_fds {
            m.insert("sock-fds".into(), v.clone().into());
        }
        if let Some(v) = &self.map_path {
            m.insert("map-path".into(), v.clone().into());
        }
        if let Some(v) = self.map_start_index {
            m.insert("map-start-index".into(), v.into());
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OptionSource;

    fn parse(text: &str) -> Result<AfXdpOptions, OptionError> {
        let mut o = Opts::parse_keyval(text)?;
        o.take_str("type")?;
        let x = AfXdpOptions::from_opts(&mut o)?;
        o.finish()?;
        Ok(x)
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_and_members() {
        let o = parse("af-xdp,ifname=veth0").unwrap();
        assert_eq!((o.queue_count(), o.first_queue(), o.mode), (1, 0, None));
        let o = parse(
            "af-xdp,ifname=v,mode=skb,force-copy=on,queues=2,start-queue=3,inhibit=on,sock-fds=7:8",
        )
        .unwrap();
        assert_eq!(o.mode, Some(XdpMode::Skb));
        assert_eq!((o.queue_count(), o.first_queue()), (2, 3));
        assert_eq!(o.sock_fd_names(), ["7", "8"]);
        let back = AfXdpOptions::from_opts(&mut Opts::new(o.to_json(), OptionSource::Json));
        assert_eq!(back.unwrap(), o);
    }

    #[test]
    fn qemu_rules_and_wording() {
        assert_eq!(error("af-xdp,mode=skb"), "Parameter 'ifname' is missing");
        assert_eq!(
            error("af-xdp,ifname=v,mode=zc"),
            "Parameter 'mode' does not accept value 'zc'"
        );
        assert_eq!(
            error("af-xdp,ifname=v,queues=0"),
            "invalid number of queues (0) for 'v'"
        );
        assert_eq!(
            error("af-xdp,ifname=v,inhibit=on"),
            "'inhibit=on' requires 'sock-fds' or 'map-path'"
        );
        assert_eq!(
            error("af-xdp,ifname=v,sock-fds=3"),
            "'sock-fds' and 'map-path' require 'inhibit=on'"
        );
        assert_eq!(
            error("af-xdp,ifname=v,map-path=/sys/fs/bpf/m"),
            "'sock-fds' and 'map-path' require 'inhibit=on'"
        );
        assert_eq!(
            error("af-xdp,ifname=v,inhibit=on,sock-fds=3,map-path=/m"),
            "'sock-fds' and 'map-path' are mutually exclusive"
        );
        assert_eq!(
            error("af-xdp,ifname=v,inhibit=on,sock-fds=3,map-start-index=1"),
            "'map-start-index' requires 'map-path'"
        );
        assert_eq!(
            error("af-xdp,ifname=v,inhibit=on,map-path=/m,map-start-index=-1"),
            "'map-start-index' cannot be negative (-1)"
        );
        assert_eq!(
            error("af-xdp,ifname=v,queues=2,inhibit=on,sock-fds=3"),
            "expected 2 socket fds, got 1"
        );
        assert_eq!(
            error("af-xdp,ifname=v,start-queue=-1"),
            "'start-queue' cannot be negative (-1)"
        );
        assert!(parse("af-xdp,ifname=v,inhibit=on,map-path=/m,map-start-index=4").is_ok());
    }
}
