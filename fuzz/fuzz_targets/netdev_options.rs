//! The operator's option text: `--netdev` in QEMU's `-netdev` syntax and in its JSON form (as
//! `netdev_add` takes it), and `--port`. Parsing must not open anything, and a netdev that
//! parses must come back unchanged through its `query-netdev` form.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vhost_user_netd::config::parse_port;
use vhost_user_netd_backends::{NetdevConfig, OptionSource, Opts};

/// A parsed netdev, written as `query-netdev` shows it, parses back to itself.
fn round_trips(config: &NetdevConfig) {
    let again = NetdevConfig::from_opts(Opts::new(config.to_json(), OptionSource::Json))
        .unwrap_or_else(|e| panic!("{config:?} does not parse back from its JSON: {e}"));
    assert_eq!(&again, config, "query-netdev form changes the netdev");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parsed = Vec::new();
    if let Ok(config) = NetdevConfig::parse_cli(text) {
        round_trips(&config);
        parsed.push(config);
    }
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) {
        if let Ok(config) = NetdevConfig::from_opts(Opts::new(map, OptionSource::Json)) {
            round_trips(&config);
            parsed.push(config);
        }
    }
    if parsed.is_empty() {
        parsed.push(NetdevConfig::parse_cli("hubport,id=n0,hubid=0").expect("a fixed netdev"));
    }
    // The same text as a --port value, against what parsed.
    let _ = parse_port(text, &parsed);
});
