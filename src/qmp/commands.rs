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

/// Commands this server implements (`query-commands`); a unit test checks each dispatches.
pub const COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-version",
    "query-commands",
    "quit",
    "netdev_add",
    "netdev_del",
    "query-netdev",
    "set_link",
    "getfd",
    "closefd",
    "x-query-port-stats",
    "announce-self",
    "query-rx-filter",
];

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
) -> Result<(Value, After), QmpError> {
    let done = Ok((json!({}), After::Nothing));
    match name {
        "query-version" => {
            no_arguments(args)?;
            Ok((version_info(), After::Nothing))
        }
        "query-commands" => {
            no_arguments(args)?;
            let list: Vec<Value> = COMMANDS.iter().map(|c| json!({ "name": c })).collect();
            Ok((Value::Array(list), After::Nothing))
        }
        "quit" => {
            no_arguments(args)?;
            ctx.quit_requested.store(true, Ordering::SeqCst);
            Ok((json!({}), After::Quit))
        }
        "netdev_add" => {
            let config = NetdevConfig::from_opts(arguments(args))?;
            ctx.registry.add(config, fds).map_err(registry_error)?;
            done
        }
        "netdev_del" => {
            ctx.registry
                .del(&only_string(args, "id")?)
                .map_err(registry_error)?;
            done
        }
        "query-netdev" => {
            no_arguments(args)?;
            Ok((Value::Array(ctx.registry.query()), After::Nothing))
        }
        "set_link" => {
            let mut opts = arguments(args);
            let name = opts.require_str("name")?;
            let up = opts
                .take_bool("up")?
                .ok_or_else(|| QmpError::generic("Parameter 'up' is missing"))?;
            opts.finish()?;
            ctx.registry.set_link(&name, up).map_err(registry_error)?;
            done
        }
        "getfd" => {
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
            done
        }
        "closefd" => {
            let name = only_string(args, "fdname")?;
            fds.named.remove(&name).ok_or_else(|| {
                QmpError::generic(format!("File descriptor named '{name}' not found"))
            })?;
            done
        }
        "announce-self" => {
            let mut opts = arguments(args);
            let mut delay = |key: &str, limit: u64| -> Result<u64, QmpError> {
                match opts.take_value(key) {
                    None => Err(QmpError::generic(format!("Parameter '{key}' is missing"))),
                    Some(Value::Number(n)) => match n.as_i64() {
                        Some(v) if v >= 0 && (v as u64) <= limit => Ok(v as u64),
                        Some(_) => Err(QmpError::generic(format!(
                            "Parameter '{key}' expects a value between 0 and {limit}"
                        ))),
                        None => Err(QmpError::generic(format!(
                            "Invalid parameter type for '{key}', expected: integer"
                        ))),
                    },
                    Some(_) => Err(QmpError::generic(format!(
                        "Invalid parameter type for '{key}', expected: integer"
                    ))),
                }
            };
            let schedule = Schedule {
                initial: delay("initial", 100_000)?,
                max: delay("max", 100_000)?,
                rounds: delay("rounds", MAX_ROUNDS)?,
                step: delay("step", 10_000)?,
            };
            let names: Option<Vec<String>> = match opts.take_value("interfaces") {
                None => None,
                Some(Value::Array(list)) => Some(
                    list.into_iter()
                        .map(|v| match v {
                            Value::String(s) => Ok(s),
                            _ => Err(QmpError::generic(
                                "Invalid parameter type for 'interfaces', expected: string",
                            )),
                        })
                        .collect::<Result<_, _>>()?,
                ),
                Some(_) => {
                    return Err(QmpError::generic(
                        "Invalid parameter type for 'interfaces', expected: array",
                    ))
                }
            };
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
            done
        }
        "query-rx-filter" => {
            let mut opts = arguments(args);
            let name = opts.take_str("name")?;
            opts.finish()?;
            let ports: Vec<&crate::port::Port> = ctx
                .registry
                .ports()
                .iter()
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
        "x-query-port-stats" => {
            no_arguments(args)?;
            let ports = ctx
                .registry
                .ports()
                .iter()
                .map(super::stats::port_stats)
                .collect();
            Ok((Value::Array(ports), After::Nothing))
        }
        "qmp_capabilities" => Err(QmpError::command_not_found(
            "Capabilities negotiation is already complete, command ignored",
        )),
        other => Err(QmpError::command_not_found(format!(
            "The command {other} has not been found"
        ))),
    }
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
        for name in COMMANDS {
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
