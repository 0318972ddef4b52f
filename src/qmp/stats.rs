//! `x-query-port-stats`: per-port, per-queue-pair counters of the connected frontend's device.

use serde_json::{json, Map, Value};

use crate::device::lock;
use crate::mac::MacAddr;
use crate::port::Port;

/// One port's statistics; counters are those of the current connection.
pub fn port_stats(port: &Port) -> Value {
    let (link, bound) = port.link_state();
    let device = port.device();
    let pairs: Vec<Value> = device
        .as_ref()
        .map(|d| lock(d).counters())
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(index, counts)| {
            let mut m = Map::new();
            m.insert("queue-pair".into(), json!(index));
            for (name, value) in counts.fields() {
                m.insert(name.replace('_', "-"), json!(value));
            }
            Value::Object(m)
        })
        .collect();
    let backend: Map<String, Value> = port
        .backend_counters()
        .into_iter()
        .map(|(name, value)| (name.to_string(), json!(value)))
        .collect();
    let mut captures = Vec::new();
    port.capture().each_with_id(|id, c| {
        use std::sync::atomic::Ordering::Relaxed;
        captures.push(json!({
            "id": id,
            "file": c.spec.file,
            "written": c.counters.written.load(Relaxed),
            "dropped-writer-behind": c.counters.dropped.load(Relaxed),
            "over-limit": c.counters.over_limit.load(Relaxed),
        }));
    });
    json!({
        "port-id": port.id(),
        "netdev-id": port.config.netdev,
        "connected": device.is_some(),
                "link-up": link && bound,
        "vhost-user-failed-requests": device.as_ref().map_or(0, |d| lock(d).failed_requests()),
        "memory-faults": port.memory_faults(),
        "queue-pairs": pairs,
        "backend": backend,
        "captures": captures,
    })
}

/// `query-rx-filter` for a port. With QEMU as frontend the control queue and its filters stay
/// in QEMU, so the daemon filters nothing and says so, with the MAC it knows (the port's `mac=`,
/// else the one learned from the guest's frames). A frontend that hands the control queue over
/// gets the filter its guest set, which the rx path enforces.
pub fn rx_filter(port: &Port) -> Value {
    let name = port.id();
    let filter = port.device().and_then(|d| lock(&d).rx_filter());
    let Some(f) = filter else {
        let mac = port
            .main_mac()
            .map_or_else(|| "00:00:00:00:00:00".to_string(), |m| m.to_string());
        return json!({
            "name": name,
            "promiscuous": true,
            "multicast": "all",
            "unicast": "all",
            "vlan": "all",
            "broadcast-allowed": true,
            "multicast-overflow": false,
            "unicast-overflow": false,
            "main-mac": mac,
            "vlan-table": [],
            "unicast-table": [],
            "multicast-table": [],
        });
    };
    let state = |none: bool, all: bool| {
        if none {
            "none"
        } else if all {
            "all"
        } else {
            "normal"
        }
    };
    let vlans = f.vlan_ids();
    let vlan = if !f.vlan_filtering {
        "all"
    } else if vlans.is_empty() {
        "none"
    } else {
        "normal"
    };
    let macs = |list: &[MacAddr]| -> Vec<String> { list.iter().map(MacAddr::to_string).collect() };
    json!({
        "name": name,
        "promiscuous": f.promisc,
        "multicast": state(f.nomulti, f.allmulti),
        "unicast": state(f.nouni, f.alluni),
        "vlan": vlan,
        "broadcast-allowed": !f.nobcast,
        "multicast-overflow": f.multicast_overflow,
        "unicast-overflow": f.unicast_overflow,
        "main-mac": f.mac.to_string(),
        "vlan-table": vlans,
        "unicast-table": macs(&f.unicast),
        "multicast-table": macs(&f.multicast),
    })
}
