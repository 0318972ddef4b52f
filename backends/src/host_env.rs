//! What the backends share with the rest of the process, handed to every `open` as one value
//! instead of process-wide statics: the `resolv.conf` the user stack reads, the batching switch
//! of the benchmarks, and the in-process hubs (hub ports with the same `hubid` meet there).

use std::path::PathBuf;

use crate::batching::Batching;
use crate::hub::Hubs;

/// The environment backends are opened in.
#[derive(Debug, Clone)]
pub struct HostEnv {
    /// Where the user stack finds the host's resolvers for its virtual name server.
    pub resolv_conf: PathBuf,
    pub batching: Batching,
    pub hubs: Hubs,
}

impl Default for HostEnv {
    fn default() -> Self {
        HostEnv {
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            batching: Batching::ON,
            hubs: Hubs::default(),
        }
    }
}
