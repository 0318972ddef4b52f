//! Typed QMP command handlers. They see JSON arguments and the daemon's control handle, never a
//! queue.

use std::sync::Arc;

use serde_json::{json, Map, Value};
use vhost_user_netd_backends::netdev::FdSource;
use vhost_user_netd_backends::{NetdevConfig, OptionSource, Opts};

use super::events::EventBus;
use super::protocol::QmpError;
use crate::registry::{Registry, RegistryError};

/// The QEMU version whose net QAPI this daemon speaks.
pub const QEMU_VERSION: (u64, u64, u64) = (10, 0, 0);

/// Commands this server implements (`query-commands`).
pub const COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-version",
    "query-commands",
    "quit",
];

/// What handlers may reach.
#[derive(Debug)]
pub struct QmpContext {
    pub events: Arc<EventBus>,
    /// Set by `quit`, so that the shutdown event names the right reason.
    pub quit_requested: std::sync::atomic::AtomicBool,
    /// Netdevs and ports.
    pub registry: Arc<Registry>,
}

impl QmpContext {
    pub fn new(registry: Arc<Registry>) -> Self {
        QmpContext {
            events: Arc::default(),
            quit_requested: Default::default(),
            registry,
        }
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

/// Descriptors named in `netdev_add` options (`fd=NAME`): only those passed with `getfd`.
struct PassedFds;

impl FdSource for PassedFds {
    fn take_fd(
        &mut self,
        name: &str,
    ) -> Result<std::os::fd::OwnedFd, vhost_user_netd_backends::Error> {
        Err(vhost_user_netd_backends::Error::Option(
            vhost_user_netd_backends::OptionError::Invalid(format!(
                "No file descriptor named {name} has been received"
            )),
        ))
    }
}

/// Rejects any argument (for commands that take none).
fn no_arguments(args: &Map<String, Value>) -> Result<(), QmpError> {
    Opts::new(args.clone(), OptionSource::Json)
        .finish()
        .map_err(QmpError::from)
}

/// Runs a negotiated session's command.
pub fn dispatch(
    ctx: &QmpContext,
    name: &str,
    args: &Map<String, Value>,
) -> Result<(Value, After), QmpError> {
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
            ctx.quit_requested
                .store(true, std::sync::atomic::Ordering::SeqCst);
            Ok((json!({}), After::Quit))
        }
        "netdev_add" => {
            let config = NetdevConfig::from_opts(Opts::new(args.clone(), OptionSource::Json))?;
            ctx.registry
                .add(config, &mut PassedFds)
                .map_err(registry_error)?;
            Ok((json!({}), After::Nothing))
        }
        "netdev_del" => {
            let mut opts = Opts::new(args.clone(), OptionSource::Json);
            let id = opts.require_str("id")?;
            opts.finish()?;
            ctx.registry.del(&id).map_err(registry_error)?;
            Ok((json!({}), After::Nothing))
        }
        "query-netdev" => {
            no_arguments(args)?;
            Ok((Value::Array(ctx.registry.query()), After::Nothing))
        }
        "set_link" => {
            let mut opts = Opts::new(args.clone(), OptionSource::Json);
            let name = opts.require_str("name")?;
            let up = opts
                .take_bool("up")?
                .ok_or_else(|| QmpError::generic("Parameter 'up' is missing"))?;
            opts.finish()?;
            ctx.registry.set_link(&name, up).map_err(registry_error)?;
            Ok((json!({}), After::Nothing))
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

    #[test]
    fn arguments_are_checked_and_unknown_commands_refused() {
        let ctx = QmpContext::new(Arc::new(Registry::new(Vec::new(), Vec::new())));
        let mut args = Map::new();
        assert_eq!(
            dispatch(&ctx, "query-version", &args).unwrap().0["qemu"]["major"],
            10
        );
        args.insert("x".into(), json!(1));
        assert_eq!(
            dispatch(&ctx, "query-version", &args).unwrap_err().desc,
            "Parameter 'x' is unexpected"
        );
        let e = dispatch(&ctx, "nope", &Map::new()).unwrap_err();
        assert_eq!(
            (e.class, e.desc.as_str()),
            (
                super::super::protocol::ErrorClass::CommandNotFound,
                "The command nope has not been found"
            )
        );
        let list = dispatch(&ctx, "query-commands", &Map::new()).unwrap().0;
        assert!(list.as_array().unwrap().contains(&json!({"name": "quit"})));
    }
}
