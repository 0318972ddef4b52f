//! `-netdev tap` options (QEMU's `NetdevTapOptions`) and their cross-field rules.

use serde_json::{Map, Value};

use crate::options::{OptionError, Opts};

/// QEMU's default interface set-up script.
pub const DEFAULT_SCRIPT: &str = "/etc/qemu-ifup";
/// QEMU's default interface tear-down script.
pub const DEFAULT_DOWNSCRIPT: &str = "/etc/qemu-ifdown";
/// QEMU's default bridge helper.
pub const DEFAULT_HELPER: &str = "/usr/lib/qemu/qemu-bridge-helper";
/// QEMU's default bridge for `helper`.
pub const DEFAULT_BRIDGE: &str = "br0";
/// The most queue pairs a port serves.
pub const MAX_QUEUES: u32 = 16;

/// The tap netdev's options as given (kept as given so that they can be reported back).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TapOptions {
    pub ifname: Option<String>,
    pub fd: Option<String>,
    pub fds: Option<String>,
    pub script: Option<String>,
    pub downscript: Option<String>,
    pub br: Option<String>,
    pub helper: Option<String>,
    pub sndbuf: Option<u64>,
    pub vnet_hdr: Option<bool>,
    pub queues: Option<u32>,
}

impl TapOptions {
    /// Takes the tap members out of `opts` and checks QEMU's rules between them.
    pub fn from_opts(opts: &mut Opts) -> Result<Self, OptionError> {
        let o = TapOptions {
            ifname: opts.take_str("ifname")?,
            fd: opts.take_str("fd")?,
            fds: opts.take_str("fds")?,
            script: opts.take_str("script")?,
            downscript: opts.take_str("downscript")?,
            br: opts.take_str("br")?,
            helper: opts.take_str("helper")?,
            sndbuf: opts.take_size("sndbuf")?,
            vnet_hdr: opts.take_bool("vnet_hdr")?,
            queues: opts.take_u32("queues")?,
        };
        // vhost-net options: the daemon is the datapath, so "off" is what it does anyway.
        if opts.take_bool("vhost")? == Some(true) {
            return Err(OptionError::Invalid(
                "vhost=on is not supported: vhost-user-netd itself is the datapath".into(),
            ));
        }
        if opts.take_bool("vhostforce")? == Some(true) {
            return Err(OptionError::Invalid(
                "vhostforce=on is not supported".into(),
            ));
        }
        for key in ["vhostfd", "vhostfds", "poll-us"] {
            if opts.contains(key) {
                return Err(OptionError::Invalid(format!(
                    "tap option '{key}' is not supported by vhost-user-netd (it is for vhost-net)"
                )));
            }
        }
        o.validate()?;
        Ok(o)
    }

    fn validate(&self) -> Result<(), OptionError> {
        let set = |v: &Option<String>| v.is_some();
        if self.fd.is_some()
            && (set(&self.ifname)
                || set(&self.script)
                || set(&self.downscript)
                || self.vnet_hdr.is_some()
                || set(&self.helper)
                || self.queues.is_some()
                || set(&self.fds))
        {
            return Err(OptionError::Invalid(
                "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, fds=, and vhostfds= \
                 are invalid with fd="
                    .into(),
            ));
        }
        if self.fds.is_some()
            && (set(&self.ifname)
                || set(&self.script)
                || set(&self.downscript)
                || self.vnet_hdr.is_some()
                || set(&self.helper)
                || self.queues.is_some())
        {
            return Err(OptionError::Invalid(
                "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, and vhostfd= are \
                 invalid with fds="
                    .into(),
            ));
        }
        if self.helper.is_some()
            && (set(&self.ifname)
                || set(&self.script)
                || set(&self.downscript)
                || self.vnet_hdr.is_some()
                || self.queues.is_some())
        {
            return Err(OptionError::Invalid(
                "ifname=, script=, downscript=, vnet_hdr=, queues=, and vhostfds= are invalid \
                 with helper="
                    .into(),
            ));
        }
        if self.br.is_some() && self.helper.is_none() {
            return Err(OptionError::Invalid(
                "br= is only valid with helper=".into(),
            ));
        }
        if let Some(q) = self.queues {
            if q == 0 || q > MAX_QUEUES {
                return Err(OptionError::Invalid(format!(
                    "Parameter 'queues' expects a value between 1 and {MAX_QUEUES}"
                )));
            }
        }
        if let Some(fds) = &self.fds {
            let n = fds.split(':').count();
            if fds.split(':').any(str::is_empty) || n > MAX_QUEUES as usize {
                return Err(OptionError::Invalid(format!(
                    "Parameter 'fds' expects 1 to {MAX_QUEUES} descriptors separated by ':'"
                )));
            }
        }
        if let Some(sndbuf) = self.sndbuf {
            if sndbuf == 0 {
                return Err(OptionError::Invalid(
                    "Parameter 'sndbuf' must be non-zero".into(),
                ));
            }
        }
        Ok(())
    }

    /// Queue pairs this configuration asks for.
    pub fn queue_count(&self) -> u32 {
        match &self.fds {
            Some(fds) => fds.split(':').count() as u32,
            None => self.queues.unwrap_or(1),
        }
    }

    /// The options as a JSON object, in QEMU's member names (for `query-netdev`).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put_str = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                m.insert(k.into(), Value::String(v.clone()));
            }
        };
        put_str("ifname", &self.ifname);
        put_str("fd", &self.fd);
        put_str("fds", &self.fds);
        put_str("script", &self.script);
        put_str("downscript", &self.downscript);
        put_str("br", &self.br);
        put_str("helper", &self.helper);
        if let Some(v) = self.sndbuf {
            m.insert("sndbuf".into(), v.into());
        }
        if let Some(v) = self.vnet_hdr {
            m.insert("vnet_hdr".into(), v.into());
        }
        if let Some(v) = self.queues {
            m.insert("queues".into(), v.into());
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TapOptions, OptionError> {
        let mut o = Opts::parse_keyval(text)?;
        o.take_str("type")?;
        let t = TapOptions::from_opts(&mut o)?;
        o.finish()?;
        Ok(t)
    }

    #[test]
    fn fd_is_exclusive_like_qemu() {
        let e = parse("tap,fd=3,ifname=t").unwrap_err().to_string();
        assert!(e.ends_with("are invalid with fd="), "{e}");
        assert!(parse("tap,fd=3,queues=2").is_err());
        assert!(parse("tap,fd=3,vnet_hdr=on").is_err());
        assert!(parse("tap,fds=3:4,ifname=x")
            .unwrap_err()
            .to_string()
            .contains("with fds="));
        assert!(parse("tap,helper=/h,ifname=x")
            .unwrap_err()
            .to_string()
            .contains("helper="));
        assert!(parse("tap,br=br0").is_err());
        assert!(parse("tap,fd=3").is_ok());
        assert_eq!(parse("tap,fds=3:4:5").unwrap().queue_count(), 3);
        assert!(parse("tap,fds=3::5").is_err());
    }

    #[test]
    fn queues_range_and_vhost_options() {
        assert!(parse("tap,queues=0").is_err());
        assert!(parse("tap,queues=17").is_err());
        assert_eq!(parse("tap,queues=16").unwrap().queue_count(), 16);
        assert!(parse("tap,vhost=on").is_err());
        assert!(parse("tap,vhost=off,vhostforce=off").is_ok());
        assert!(parse("tap,vhostfd=3").is_err());
        assert!(parse("tap,poll-us=5").is_err());
        assert!(parse("tap,sndbuf=0").is_err());
    }

    #[test]
    fn round_trips_to_json() {
        let t = parse("tap,ifname=t0,queues=2,vnet_hdr=off,sndbuf=1k,script=no").unwrap();
        let json = Value::Object(t.to_json()).to_string();
        let mut o = Opts::parse_cli(&json).unwrap();
        assert_eq!(TapOptions::from_opts(&mut o).unwrap(), t);
    }
}
