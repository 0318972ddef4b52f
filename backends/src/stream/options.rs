//! `NetdevStreamOptions`: `addr`, `server`, `reconnect` (and QEMU 9.2+'s `reconnect-ms`).

use std::time::Duration;

use serde_json::{Map, Value};

use crate::options::{OptionError, Opts};
use crate::socket_address::SocketAddress;

/// Options of a `stream` netdev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    pub addr: SocketAddress,
    pub server: Option<bool>,
    /// Seconds between reconnection attempts of a client (0: never).
    pub reconnect: Option<u32>,
    /// The same in milliseconds.
    pub reconnect_ms: Option<u64>,
}

impl StreamOptions {
    pub fn from_opts(opts: &mut Opts) -> Result<Self, OptionError> {
        let addr = opts
            .take_nested("addr")?
            .ok_or_else(|| OptionError::Missing(opts.name_of("addr")))?;
        let options = StreamOptions {
            addr: SocketAddress::from_opts(addr)?,
            server: opts.take_bool("server")?,
            reconnect: opts.take_u32("reconnect")?,
            reconnect_ms: opts.take_u64("reconnect-ms")?,
        };
        if options.reconnect.is_some() && options.reconnect_ms.is_some() {
            return Err(OptionError::Invalid(
                "'reconnect' and 'reconnect-ms' are mutually exclusive".into(),
            ));
        }
        if options.is_server() && (options.reconnect.is_some() || options.reconnect_ms.is_some()) {
            return Err(OptionError::Invalid(
                "'reconnect' and 'reconnect-ms' options are incompatible with socket in server \
                 mode"
                    .into(),
            ));
        }
        Ok(options)
    }

    /// `server=on`.
    pub fn is_server(&self) -> bool {
        self.server == Some(true)
    }

    /// How long a client waits before connecting again, if it does.
    pub fn reconnect_delay(&self) -> Option<Duration> {
        match (self.reconnect, self.reconnect_ms) {
            (Some(s), _) if s > 0 => Some(Duration::from_secs(s.into())),
            (_, Some(ms)) if ms > 0 => Some(Duration::from_millis(ms)),
            _ => None,
        }
    }

    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("addr".into(), self.addr.to_json());
        if let Some(s) = self.server {
            m.insert("server".into(), s.into());
        }
        if let Some(r) = self.reconnect {
            m.insert("reconnect".into(), r.into());
        }
        if let Some(r) = self.reconnect_ms {
            m.insert("reconnect-ms".into(), r.into());
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StreamOptions, OptionError> {
        let mut opts = Opts::parse_keyval(text)?;
        opts.take_value("type");
        let o = StreamOptions::from_opts(&mut opts)?;
        opts.finish()?;
        Ok(o)
    }

    #[test]
    fn qemu_rules_and_wording() {
        let o =
            parse("stream,server=off,reconnect=2,addr.type=unix,addr.path=/run/p.sock").unwrap();
        assert_eq!(o.reconnect_delay(), Some(Duration::from_secs(2)));
        assert!(!o.is_server());
        assert_eq!(
            parse("stream,server=on").unwrap_err().to_string(),
            "Parameter 'addr' is missing"
        );
        assert_eq!(
            parse("stream,server=on,reconnect=1,addr.type=unix,addr.path=/x")
                .unwrap_err()
                .to_string(),
            "'reconnect' and 'reconnect-ms' options are incompatible with socket in server mode"
        );
        assert_eq!(
            parse("stream,reconnect=1,reconnect-ms=5,addr.type=unix,addr.path=/x")
                .unwrap_err()
                .to_string(),
            "'reconnect' and 'reconnect-ms' are mutually exclusive"
        );
        assert_eq!(
            parse("stream,server=maybe,addr.type=unix,addr.path=/x")
                .unwrap_err()
                .to_string(),
            "Parameter 'server' expects 'on' or 'off'"
        );
        assert_eq!(
            parse("stream,reconnect-ms=250,addr.type=unix,addr.path=/x")
                .unwrap()
                .reconnect_delay(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse("stream,reconnect=0,addr.type=unix,addr.path=/x")
                .unwrap()
                .reconnect_delay(),
            None
        );
    }
}
