//! Typed QMP command handlers. They see JSON arguments, the session's descriptors and the
//! daemon's control handle (the registry), never a queue.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use vhost_user_netd_backends::FdSource;
use vhost_user_netd_backends::{NetdevConfig, OptionError, OptionSource, Opts};

use super::protocol::QmpError;
use crate::announcer::{Announcer, Schedule, MAX_ROUNDS};
use crate::events::EventBus;
use crate::registry::{Registry, RegistryError};

/// The QEMU version whose net QAPI this daemon speaks.
pub const QEMU_VERSION: (u64, u64, u64) = (10, 0, 0);

/// What a command returns: its `return` value and what the session does next.
pub type CommandResult = Result<(Value, After), QmpError>;

/// A command's handler: the daemon's context, the session's descriptors, the arguments.
type CommandFn = fn(&QmpContext, &mut SessionFds, &Map<String, Value>) -> CommandResult;

/// Commands this server implements, in `query-commands` order, with their handlers.
/// (`qmp_capabilities` is handled by the session before negotiation; here it only refuses a
/// second negotiation.)
const COMMAND_TABLE: &[(&str, CommandFn)] = &[
    ("qmp_capabilities", qmp_capabilities),
    ("query-version", query_version),
    ("query-commands", query_commands),
    ("quit", quit),
    ("netdev_add", netdev_add),
    ("netdev_del", netdev_del),
    ("query-netdev", query_netdev),
    ("set_link", set_link),
    ("getfd", getfd),
    ("closefd", closefd),
    ("x-query-port-stats", x_query_port_stats),
    ("announce-self", announce_self),
    ("query-rx-filter", query_rx_filter),
    ("object-add", super::objects::object_add),
    ("object-del", super::objects::object_del),
    ("port-add", super::ports::port_add),
    ("port-del", super::ports::port_del),
    ("query-ports", super::ports::query_ports),
];

/// Names of the commands this server implements (`query-commands`).
pub fn commands() -> impl Iterator<Item = &'static str> {
    COMMAND_TABLE.iter().map(|(name, _)| *name)
}

/// What handlers may reach.
#[derive(Debug)]
pub struct QmpContext {
    pub events: Arc<EventBus>,
    /// `announce-self` timers.
    pub announcer: Announcer,
    /// Set by `quit`, so that the shutdown event names the right reason.
    pub quit_requested: AtomicBool,
    /// Netdevs and ports.
    pub registry: Arc<Registry>,
}

impl QmpContext {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self::with_events(registry, Arc::default())
    }

    /// A context sharing `events` with the ports (connect/disconnect events).
    pub fn with_events(registry: Arc<Registry>, events: Arc<EventBus>) -> Self {
        QmpContext {
            events,
            announcer: Announcer::default(),
            quit_requested: AtomicBool::new(false),
            registry,
        }
    }
}

/// Descriptors a session received: those that came with the command being handled, and those
/// Most descriptors one session may hold by name (each is a descriptor of the daemon's, which
/// every port shares).
pub const MAX_NAMED_FDS: usize = 64;

/// `getfd` named (consumed by `netdev_add fd=NAME`, closed by `closefd`).
#[derive(Debug, Default)]
pub struct SessionFds {
    /// Arrived with the current command; closed after it unless `getfd` took one.
    pub received: Vec<OwnedFd>,
    named: HashMap<String, OwnedFd>,
}

impl FdSource for SessionFds {
    fn take_fd(&mut self, name: &str) -> Result<OwnedFd, vhost_user_netd_backends::Error> {
        self.named.remove(name).ok_or_else(|| {
            OptionError::Invalid(format!("No file descriptor named {name} has been received"))
                .into()
        })
    }
}

/// What to do after the reply went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Nothing,
    /// Shut the daemon down (`quit`).
    Quit,
}

/// `query-version`'s answer, also used in the greeting.
pub fn version_info() -> Value {
    let (major, minor, micro) = QEMU_VERSION;
    json!({
        "qemu": { "major": major, "minor": minor, "micro": micro },
        "package": format!("vhost-user-netd {}", env!("CARGO_PKG_VERSION")),
    })
}

/// Maps a registry failure to its QMP error class.
fn registry_error(e: RegistryError) -> QmpError {
    match e {
        RegistryError::NotFound(_) => QmpError::device_not_found(e.to_string()),
        _ => QmpError::generic(e.to_string()),
    }
}

fn arguments(args: &Map<String, Value>) -> Opts {
    Opts::new(args.clone(), OptionSource::Json)
}

/// Rejects any argument (for commands that take none).
fn no_arguments(args: &Map<String, Value>) -> Result<(), QmpError> {
    arguments(args).finish().map_err(QmpError::from)
}

/// The one mandatory string argument `key` of a command that takes nothing else.
fn only_string(args: &Map<String, Value>, key: &str) -> Result<String, QmpError> {
    let mut opts = arguments(args);
    let value = opts.require_str(key)?;
    opts.finish()?;
    Ok(value)
}

/// Runs a negotiated session's command.
pub fn dispatch(
    ctx: &QmpContext,
    fds: &mut SessionFds,
    name: &str,
    args: &Map<String, Value>,
) -> CommandResult {
    match COMMAND_TABLE.iter().find(|(n, _)| *n == name) {
        Some((_, run)) => run(ctx, fds, args),
        None => Err(QmpError::command_not_found(format!(
            "The command {name} has not been found"
        ))),
    }
}

pub(super) fn done() -> CommandResult {
    Ok((json!({}), After::Nothing))
}

fn qmp_capabilities(_: &QmpContext, _: &mut SessionFds, _: &Map<String, Value>) -> CommandResult {
    Err(QmpError::command_not_found(
        "Capabilities negotiation is already complete, command ignored",
    ))
}

fn query_version(_: &QmpContext, _: &mut SessionFds, args: &Map<String, Value>) -> CommandResult {
    no_arguments(args)?;
    Ok((version_info(), After::Nothing))
}

fn query_commands(_: &QmpContext, _: &mut SessionFds, args: &Map<String, Value>) -> CommandResult {
    no_arguments(args)?;
    let list: Vec<Value> = commands().map(|c| json!({ "name": c })).collect();
    Ok((Value::Array(list), After::Nothing))
}

fn quit(ctx: &QmpContext, _: &mut SessionFds, args: &Map<String, Value>) -> CommandResult {
    no_arguments(args)?;
    ctx.quit_requested.store(true, Ordering::SeqCst);
    Ok((json!({}), After::Quit))
}

fn netdev_add(ctx: &QmpContext, fds: &mut SessionFds, args: &Map<String, Value>) -> CommandResult {
    let config = NetdevConfig::from_opts(arguments(args))?;
    ctx.registry.add(config, fds).map_err(registry_error)?;
    done()
}

fn netdev_del(ctx: &QmpContext, _: &mut SessionFds, args: &Map<String, Value>) -> CommandResult {
    ctx.registry
        .del(&only_string(args, "id")?)
        .map_err(registry_error)?;
    done()
}

fn query_netdev(ctx: &QmpContext, _: &mut SessionFds, args: &Map<String, Value>) -> CommandResult {
    no_arguments(args)?;
    Ok((Value::Array(ctx.registry.query()), After::Nothing))
}

fn set_link(ctx: &QmpContext, _: &mut SessionFds, args: &Map<String, Value>) -> CommandResult {
    let mut opts = arguments(args);
    let name = opts.require_str("name")?;
    let up = opts
        .take_bool("up")?
        .ok_or_else(|| QmpError::generic("Parameter 'up' is missing"))?;
    opts.finish()?;
    ctx.registry.set_link(&name, up).map_err(registry_error)?;
    done()
}

fn getfd(_: &QmpContext, fds: &mut SessionFds, args: &Map<String, Value>) -> CommandResult {
    let name = only_string(args, "fdname")?;
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(QmpError::generic(
            "Parameter 'fdname' expects a name not starting with a digit",
        ));
    }
    let fd = fds
        .received
        .pop()
        .ok_or_else(|| QmpError::generic("No file descriptor supplied via SCM_RIGHTS"))?;
    if fds.named.len() >= MAX_NAMED_FDS && !fds.named.contains_key(&name) {
        return Err(QmpError::generic(format!(
            "Too many file descriptors held by this session (at most {MAX_NAMED_FDS}); \
             use or close one first"
        )));
    }
    fds.named.insert(name, fd); // a reused name closes the old descriptor
    done()
}

fn closefd(_: &QmpContext, fds: &mut SessionFds, args: &Map<String, Value>) -> CommandResult {
    let name = only_string(args, "fdname")?;
    fds.named
        .remove(&name)
        .ok_or_else(|| QmpError::generic(format!("File descriptor named '{name}' not found")))?;
    done()
}

/// An `announce-self` delay: an integer in `0..=limit`, with QEMU's error texts.
fn announce_delay(opts: &mut Opts, key: &str, limit: u64) -> Result<u64, QmpError> {
    let wrong_type = || {
        QmpError::generic(format!(
            "Invalid parameter type for '{key}', expected: integer"
        ))
    };
    match opts.take_value(key) {
        None => Err(QmpError::generic(format!("Parameter '{key}' is missing"))),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) if v >= 0 && (v as u64) <= limit => Ok(v as u64),
            Some(_) => Err(QmpError::generic(format!(
                "Parameter '{key}' expects a value between 0 and {limit}"
            ))),
            None => Err(wrong_type()),
        },
        Some(_) => Err(wrong_type()),
    }
}

/// `announce-self`'s `interfaces`: a list of names, or absent (every port).
fn announce_interfaces(opts: &mut Opts) -> Result<Option<Vec<String>>, QmpError> {
    match opts.take_value("interfaces") {
        None => Ok(None),
        Some(Value::Array(list)) => list
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(QmpError::generic(
                    "Invalid parameter type for 'interfaces', expected: string",
                )),
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(QmpError::generic(
            "Invalid parameter type for 'interfaces', expected: array",
        )),
    }
}

fn announce_self(ctx: &QmpContext, _: &mut SessionFds, args: &Map<String, Value>) -> CommandResult {
    let mut opts = arguments(args);
    let schedule = Schedule {
        initial: announce_delay(&mut opts, "initial", 100_000)?,
        max: announce_delay(&mut opts, "max", 100_000)?,
        rounds: announce_delay(&mut opts, "rounds", MAX_ROUNDS)?,
        step: announce_delay(&mut opts, "step", 10_000)?,
    };
    let names = announce_interfaces(&mut opts)?;
    let id = opts.take_str("id")?.unwrap_or_default();
    opts.finish()?;
    // As in QEMU, names that match nothing are ignored.
    let ports = ctx
        .registry
        .ports()
        .iter()
        .filter(|p| {
            names
                .as_ref()
                .is_none_or(|n| n.iter().any(|n| n == p.id() || *n == p.config.netdev))
        })
        .cloned()
        .collect();
    ctx.announcer.start(id, schedule, ports);
    done()
}

fn query_rx_filter(
    ctx: &QmpContext,
    _: &mut SessionFds,
    args: &Map<String, Value>,
) -> CommandResult {
    let mut opts = arguments(args);
    let name = opts.take_str("name")?;
    opts.finish()?;
    let ports: Vec<crate::port::Port> = ctx
        .registry
        .ports()
        .into_iter()
        .filter(|p| name.as_deref().is_none_or(|n| n == p.id()))
        .collect();
    if let (Some(n), true) = (&name, ports.is_empty()) {
        return Err(QmpError::generic(format!("invalid net client name: {n}")));
    }
    let list = ports
        .iter()
        .map(|p| {
            p.rx_filter_queried();
            super::stats::rx_filter(p)
        })
        .collect();
    Ok((Value::Array(list), After::Nothing))
}

fn x_query_port_stats(
    ctx: &QmpContext,
    _: &mut SessionFds,
    args: &Map<String, Value>,
) -> CommandResult {
    no_arguments(args)?;
    let ports = ctx
        .registry
        .ports()
        .iter()
        .map(super::stats::port_stats)
        .collect();
    Ok((Value::Array(ports), After::Nothing))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmp::protocol::ErrorClass;

    fn ctx() -> QmpContext {
        QmpContext::new(Arc::new(Registry::new(Vec::new(), Vec::new(), None)))
    }

    #[test]
    fn arguments_are_checked_and_unknown_commands_refused() {
        let (ctx, mut fds) = (ctx(), SessionFds::default());
        let mut args = Map::new();
        assert_eq!(
            dispatch(&ctx, &mut fds, "query-version", &args).unwrap().0["qemu"]["major"],
            10
        );
        args.insert("x".into(), json!(1));
        assert_eq!(
            dispatch(&ctx, &mut fds, "query-version", &args)
                .unwrap_err()
                .desc,
            "Parameter 'x' is unexpected"
        );
        let e = dispatch(&ctx, &mut fds, "nope", &Map::new()).unwrap_err();
        assert_eq!(
            (e.class, e.desc.as_str()),
            (
                ErrorClass::CommandNotFound,
                "The command nope has not been found"
            )
        );
    }

    #[test]
    fn every_listed_command_is_handled() {
        let (ctx, mut fds) = (ctx(), SessionFds::default());
        for name in commands() {
            if let Err(e) = dispatch(&ctx, &mut fds, name, &Map::new()) {
                assert!(
                    !e.desc.contains("has not been found"),
                    "{name} is listed but not handled"
                );
            }
        }
    }

    #[test]
    fn getfd_and_closefd_follow_qemu() {
        let (ctx, mut fds) = (ctx(), SessionFds::default());
        let name = |n: &str| {
            let mut m = Map::new();
            m.insert("fdname".into(), json!(n));
            m
        };
        let e = dispatch(&ctx, &mut fds, "getfd", &name("a")).unwrap_err();
        assert_eq!(e.desc, "No file descriptor supplied via SCM_RIGHTS");
        fds.received
            .push(std::fs::File::open("/dev/null").unwrap().into());
        let e = dispatch(&ctx, &mut fds, "getfd", &name("1a")).unwrap_err();
        assert_eq!(
            e.desc,
            "Parameter 'fdname' expects a name not starting with a digit"
        );
        dispatch(&ctx, &mut fds, "getfd", &name("a")).unwrap();
        assert!(fds.take_fd("a").is_ok(), "netdev_add can take it");
        assert!(fds.take_fd("a").is_err(), "once");
        let e = dispatch(&ctx, &mut fds, "closefd", &name("a")).unwrap_err();
        assert_eq!(e.desc, "File descriptor named 'a' not found");
        let e = dispatch(&ctx, &mut fds, "getfd", &Map::new()).unwrap_err();
        assert_eq!(e.desc, "Parameter 'fdname' is missing");
        // A session holds a bounded number of descriptors.
        for i in 0..MAX_NAMED_FDS {
            fds.received
                .push(std::fs::File::open("/dev/null").unwrap().into());
            dispatch(&ctx, &mut fds, "getfd", &name(&format!("f{i}"))).unwrap();
        }
        fds.received
            .push(std::fs::File::open("/dev/null").unwrap().into());
        let e = dispatch(&ctx, &mut fds, "getfd", &name("one-more")).unwrap_err();
        assert!(
            e.desc.starts_with("Too many file descriptors"),
            "{}",
            e.desc
        );
        fds.received
            .push(std::fs::File::open("/dev/null").unwrap().into());
        dispatch(&ctx, &mut fds, "getfd", &name("f0")).expect("a reused name replaces");
    }
}
