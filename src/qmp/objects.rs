//! QMP `object-add` and `object-del` for the one QOM object type the daemon has: `filter-dump`,
//! a pcap capture of a netdev's frames started and stopped at run time. QEMU's other object
//! types are refused by name; anything else as QEMU refuses an unknown `qom-type`.

use serde_json::{Map, Value};
use vhost_user_netd_backends::{OptionSource, Opts};

use super::commands::{done, CommandResult, QmpContext, SessionFds};
use super::protocol::QmpError;
use crate::capture::FilterDump;

/// QOM types QEMU 10 offers besides `filter-dump` that a network daemon may be asked for.
const OTHER_QEMU_TYPES: &[&str] = &[
    "filter-buffer",
    "filter-mirror",
    "filter-redirector",
    "filter-rewriter",
    "colo-compare",
    "iothread",
    "memory-backend-file",
    "memory-backend-memfd",
    "memory-backend-ram",
    "secret",
    "rng-random",
    "rng-egd",
    "throttle-group",
];

pub fn object_add(
    ctx: &QmpContext,
    _: &mut SessionFds,
    args: &Map<String, Value>,
) -> CommandResult {
    let mut opts = Opts::new(args.clone(), OptionSource::Json);
    let qom_type = opts.require_str("qom-type")?;
    if qom_type != "filter-dump" {
        return Err(QmpError::generic(
            if OTHER_QEMU_TYPES.contains(&qom_type.as_str()) {
                format!("object type '{qom_type}' is not supported by vhost-user-netd")
            } else {
                format!("Parameter 'qom-type' does not accept value '{qom_type}'")
            },
        ));
    }
    let filter = FilterDump::from_opts(&mut opts).map_err(QmpError::generic)?;
    opts.finish()?;
    ctx.registry
        .add_capture(&filter)
        .map_err(QmpError::generic)?;
    done()
}

pub fn object_del(
    ctx: &QmpContext,
    _: &mut SessionFds,
    args: &Map<String, Value>,
) -> CommandResult {
    let mut opts = Opts::new(args.clone(), OptionSource::Json);
    let id = opts.require_str("id")?;
    opts.finish()?;
    ctx.registry
        .remove_capture(&id)
        .map_err(QmpError::generic)?;
    done()
}
