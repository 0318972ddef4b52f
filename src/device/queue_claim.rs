//! One device at a time takes a netdev's queues: the one whose frontend runs its rings. Two
//! ports may name one netdev (a VM migrating to another QEMU on the same host connects the
//! destination to a second port while the source still runs); the destination's device takes
//! the queues when its rings start, after the source stopped its own (`GET_VRING_BASE`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Which port holds each netdev's queues, shared by every port of the daemon.
#[derive(Debug, Default)]
pub struct QueueOwners(Mutex<HashMap<String, String>>);

impl QueueOwners {
    fn owners(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The port whose device holds netdev `netdev`'s queues now, if one does.
    pub fn holder(&self, netdev: &str) -> Option<String> {
        self.owners().get(netdev).cloned()
    }
}

/// A device's right to claim its netdev's queues, in the name of its port.
#[derive(Debug, Clone)]
pub struct QueueClaim {
    owners: Arc<QueueOwners>,
    pub netdev: String,
    pub port: String,
}

impl QueueClaim {
    pub fn new(owners: Arc<QueueOwners>, netdev: &str, port: &str) -> Self {
        QueueClaim {
            owners,
            netdev: netdev.to_string(),
            port: port.to_string(),
        }
    }

    /// Takes the netdev's queues for this port; if another port's device holds them, returns
    /// that port's id and takes nothing.
    pub fn take(&self) -> Result<(), String> {
        let mut owners = self.owners.owners();
        match owners.get(&self.netdev) {
            Some(holder) if *holder != self.port => Err(holder.clone()),
            _ => {
                owners.insert(self.netdev.clone(), self.port.clone());
                Ok(())
            }
        }
    }

    /// Gives the queues back, if this port holds them.
    pub fn release(&self) {
        let mut owners = self.owners.owners();
        if owners.get(&self.netdev) == Some(&self.port) {
            owners.remove(&self.netdev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_port_at_a_time_holds_a_netdev() {
        let owners = Arc::new(QueueOwners::default());
        let src = QueueClaim::new(owners.clone(), "n0", "src");
        let dst = QueueClaim::new(owners.clone(), "n0", "dst");
        let other = QueueClaim::new(owners.clone(), "n1", "dst");
        assert_eq!(src.take(), Ok(()));
        assert_eq!(src.take(), Ok(()), "taking again is a no-op");
        assert_eq!(dst.take(), Err("src".to_string()));
        assert_eq!(other.take(), Ok(()), "another netdev is independent");
        dst.release();
        assert_eq!(owners.holder("n0").as_deref(), Some("src"), "not dst's");
        src.release();
        assert_eq!(dst.take(), Ok(()));
        assert_eq!(owners.holder("n0").as_deref(), Some("dst"));
    }
}
