//! `NetdevHubPortOptions`: the hub a port joins (`hubid`, an `int32`) and, in QEMU, an optional
//! netdev to connect the hub to.

use serde_json::{Map, Value};

use crate::options::{OptionError, Opts};

/// Options of a `hubport` netdev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubPortOptions {
    pub hubid: i32,
}

impl HubPortOptions {
    pub fn from_opts(opts: &mut Opts) -> Result<Self, OptionError> {
        let hubid = opts
            .take_i32("hubid")?
            .ok_or_else(|| OptionError::Missing("hubid".into()))?;
        if let Some(netdev) = opts.take_str("netdev")? {
            return Err(OptionError::Invalid(format!(
                "hubport netdev={netdev}: connecting a hub to another netdev is not supported \
                 by vhost-user-netd yet; give that netdev's port its own socket instead"
            )));
        }
        Ok(HubPortOptions { hubid })
    }

    /// QEMU's `NetdevHubPortOptions` members.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("hubid".into(), Value::from(self.hubid));
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
        assert_eq!(c.kind, NetdevKind::HubPort(HubPortOptions { hubid: -1 }));
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
        assert!(parse("hubport,id=h,hubid=0,netdev=u")
            .unwrap_err()
            .contains("not supported"));
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
