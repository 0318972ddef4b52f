//! `-netdev bridge` (QEMU's `NetdevBridgeOptions`): a tap that QEMU's bridge helper creates and
//! attaches to a host bridge (as QEMU's `net_init_bridge` does), then served as any tap. The
//! helper runs through the launcher, so it works under the sandbox.

use serde_json::{Map, Value};

use super::options::{TapOptions, DEFAULT_BRIDGE, DEFAULT_HELPER};
use crate::options::{OptionError, Opts};

/// The bridge netdev's options as given (kept as given so that they can be reported back).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeOptions {
    /// The host bridge (QEMU's default `br0`).
    pub br: Option<String>,
    /// The helper that opens the tap (QEMU's default `qemu-bridge-helper`).
    pub helper: Option<String>,
}

impl BridgeOptions {
    pub fn from_opts(opts: &mut Opts) -> Result<Self, OptionError> {
        Ok(BridgeOptions {
            br: opts.take_str("br")?,
            helper: opts.take_str("helper")?,
        })
    }

    /// The helper that runs, QEMU's default unless given.
    pub fn helper(&self) -> &str {
        self.helper.as_deref().unwrap_or(DEFAULT_HELPER)
    }

    /// The tap this netdev is: the helper's, on the bridge.
    pub fn as_tap(&self) -> TapOptions {
        TapOptions {
            helper: Some(self.helper().to_string()),
            br: Some(self.br.as_deref().unwrap_or(DEFAULT_BRIDGE).to_string()),
            ..TapOptions::default()
        }
    }

    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        for (k, v) in [("br", &self.br), ("helper", &self.helper)] {
            if let Some(v) = v {
                m.insert(k.into(), Value::String(v.clone()));
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_qemus_and_options_round_trip() {
        let mut opts = Opts::parse_keyval("br=vubr0").unwrap();
        let b = BridgeOptions::from_opts(&mut opts).unwrap();
        assert_eq!(b.helper(), DEFAULT_HELPER);
        let tap = b.as_tap();
        assert_eq!(tap.br.as_deref(), Some("vubr0"));
        assert_eq!(tap.helper.as_deref(), Some(DEFAULT_HELPER));
        assert_eq!(
            b.to_json(),
            serde_json::json!({"br": "vubr0"})
                .as_object()
                .unwrap()
                .clone()
        );
        assert_eq!(
            BridgeOptions::default().as_tap().br.as_deref(),
            Some(DEFAULT_BRIDGE)
        );
    }
}
