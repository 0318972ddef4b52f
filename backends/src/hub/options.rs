//! `NetdevHubPortOptions`: the hub a port joins (`hubid`, an `int32`) and an optional netdev
//! the hub port is joined to instead of a guest (`netdev`, see `uplink`).

use serde_json::{Map, Value};

use crate::options::{OptionError, Opts};

/// Options of a `hubport` netdev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubPortOptions {
    pub hubid: i32,
    /// The netdev this hub port is joined to, instead of a vhost-user port.
    pub netdev: Option<String>,
}

impl HubPortOptions {
    pub fn from_opts(opts: &mut Opts) -> Result<Self, OptionError> {
        let hubid = opts
            .take_i32("hubid")?
            .ok_or_else(|| OptionError::Missing("hubid".into()))?;
        let netdev = opts.take_str("netdev")?;
        Ok(HubPortOptions { hubid, netdev })
    }

    /// QEMU's `NetdevHubPortOptions` members.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("hubid".into(), Value::from(self.hubid));
        if let Some(n) = &self.netdev {
            m.insert("netdev".into(), Value::String(n.clone()));
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netdev::{NetdevConfig, NetdevKind};

    fn parse(text: &str) -> Result<NetdevConfig, String> {
        NetdevConfig::parse_cli(text).map_err(|e| e.to_string())
    }

    #[test]
    fn hubid_is_a_mandatory_int32_as_in_qemu() {
        let c = parse("hubport,id=h,hubid=-1").unwrap();
        assert_eq!(
            c.kind,
            NetdevKind::HubPort(HubPortOptions {
                hubid: -1,
                netdev: None
            })
        );
        assert_eq!(
            parse("hubport,id=h").unwrap_err(),
            "Parameter 'hubid' is missing"
        );
        assert_eq!(
            parse("hubport,id=h,hubid=x").unwrap_err(),
            "Parameter 'hubid' expects an int64 value"
        );
        assert_eq!(
            parse("hubport,id=h,hubid=2147483648").unwrap_err(),
            "Parameter 'hubid' expects int32_t"
        );
        let joined = parse("hubport,id=h,hubid=0,netdev=u").unwrap();
        assert_eq!(joined.to_json()["netdev"], "u");
        let json = c.to_json();
        assert_eq!(json["hubid"], -1);
        assert_eq!(json["type"], "hubport");
        let back = NetdevConfig::from_opts(crate::options::Opts::new(
            json,
            crate::options::OptionSource::Json,
        ))
        .unwrap();
        assert_eq!(back, c);
    }
}
