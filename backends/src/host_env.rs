//! What the backends share with the rest of the process, handed to every `open` as one value
//! instead of process-wide statics: the `resolv.conf` the user stack reads, the batching switch
//! of the benchmarks, the in-process hubs (hub ports with the same `hubid` meet there), and who
//! starts the programs backends run.

use std::path::PathBuf;

use crate::batching::Batching;
use crate::hub::Hubs;
use crate::launcher::Launcher;

/// The environment backends are opened in.
#[derive(Debug, Clone)]
pub struct HostEnv {
    /// Where the user stack finds the host's resolvers for its virtual name server.
    pub resolv_conf: PathBuf,
    pub batching: Batching,
    pub hubs: Hubs,
    /// Who starts the scripts, helpers and `guestfwd` commands backends need.
    pub launcher: Launcher,
}

impl Default for HostEnv {
    fn default() -> Self {
        HostEnv {
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            batching: Batching::ON,
            hubs: Hubs::default(),
            launcher: Launcher::default(),
        }
    }
}
