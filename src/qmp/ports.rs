//! Ports at run time: `port-add`, `port-del` and `query-ports`. A port added here is the same
//! as one from `--port` (same members, same checks), listening (or connecting) at once; one
//! deleted disconnects its frontend, releases its queues and removes the socket file it made,
//! and no other port notices.

use std::os::fd::{AsRawFd, IntoRawFd};
use std::path::PathBuf;

use serde_json::{json, Map, Value};
use vhost_user_netd_backends::{FdSource, OptionSource, Opts};

use super::commands::{done, CommandResult, QmpContext, SessionFds};
use super::protocol::QmpError;
use crate::config::{build_port, Listen};
use crate::port::Port;
use crate::registry::RegistryError;

pub fn port_add(
    ctx: &QmpContext,
    fds: &mut SessionFds,
    args: &Map<String, Value>,
) -> CommandResult {
    let mut opts = Opts::new(args.clone(), OptionSource::Json);
    let id = opts.take_id("id")?;
    let path = opts.take_str("socket-path")?;
    let fd = opts.take_str("fd")?;
    let netdev = opts.require_str("netdev")?;
    let mac = opts.take_str("mac")?;
    let mtu = opts.take_u32("mtu")?;
    let queues = opts.take_u32("queues")?;
    let client = opts.take_bool("client")?.unwrap_or(false);
    opts.finish()?;
    let netdevs = ctx.registry.netdev_configs();
    if !netdevs.iter().any(|n| n.id == netdev) {
        return Err(QmpError::device_not_found(format!(
            "Device '{netdev}' not found"
        )));
    }
    let listen = match (path, fd) {
        (Some(p), None) => Listen::Path(PathBuf::from(p)),
        (None, Some(name)) => {
            let fd = fds
                .take_fd(&name)
                .map_err(|e| QmpError::generic(e.to_string()))?;
            if !vhost_user_netd_backends::sys::socket_listens(fd.as_raw_fd()).unwrap_or(false) {
                return Err(QmpError::generic(format!(
                    "Parameter 'fd': '{name}' is not a listening socket"
                )));
            }
            Listen::Fd(fd.into_raw_fd())
        }
        _ => {
            return Err(QmpError::generic(
                "exactly one of 'socket-path' and 'fd' is needed",
            ))
        }
    };
    let config = build_port(
        Some(id),
        listen,
        client,
        netdev,
        mac.as_deref(),
        mtu,
        queues,
        &netdevs,
    )
    .map_err(|e| QmpError::generic(format!("Parameter '{}': {}", e.option, e.message)))?;
    let (events, workers) = (ctx.events.clone(), ctx.registry.workers());
    ctx.registry
        .add_port(config, |config, backend| {
            Port::new(config, backend)
                .with_events(events)
                .with_workers(workers)
        })
        .map_err(|e| match e {
            RegistryError::NotFound(_) => QmpError::device_not_found(e.to_string()),
            _ => QmpError::generic(e.to_string()),
        })?;
    done()
}

pub fn port_del(ctx: &QmpContext, _: &mut SessionFds, args: &Map<String, Value>) -> CommandResult {
    let mut opts = Opts::new(args.clone(), OptionSource::Json);
    let id = opts.require_str("id")?;
    opts.finish()?;
    ctx.registry
        .del_port(&id)
        .map_err(|e| QmpError::device_not_found(e.to_string()))?;
    done()
}

pub fn query_ports(
    ctx: &QmpContext,
    _: &mut SessionFds,
    args: &Map<String, Value>,
) -> CommandResult {
    Opts::new(args.clone(), OptionSource::Json).finish()?;
    let list = ctx
        .registry
        .ports()
        .iter()
        .map(|p| {
            let c = &p.config;
            let mut m = Map::new();
            m.insert("id".into(), json!(c.id));
            match &c.listen {
                Listen::Path(path) => m.insert("socket-path".into(), json!(path)),
                Listen::Fd(fd) => m.insert("fd".into(), json!(fd)),
                Listen::Activated => m.insert("activated".into(), json!(true)),
            };
            m.insert("netdev".into(), json!(c.netdev));
            if let Some(mac) = c.mac.or_else(|| p.main_mac()) {
                m.insert("mac".into(), json!(mac.to_string()));
            }
            if let Some(mtu) = c.mtu {
                m.insert("mtu".into(), json!(mtu));
            }
            m.insert("queues".into(), json!(c.queues));
            m.insert("client".into(), json!(c.client));
            let device = p.device();
            m.insert("connected".into(), json!(device.is_some()));
            // Ports sharing a netdev (a migration on this host): which one has its queues.
            m.insert("running".into(), json!(p.runs_rings()));
            if let Some(d) = device {
                let features = crate::device::lock(&d).acked_features();
                m.insert("features".into(), json!(features));
            }
            Value::Object(m)
        })
        .collect();
    Ok((Value::Array(list), super::commands::After::Nothing))
}
