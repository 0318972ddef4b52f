//! The seccomp filters threads of a role put on themselves, on top of the whole process's,
//! once the daemon is confined: the threads that serve a frontend's vhost-user connection, and
//! the queue threads (workers and the control queue) that read the guest's rings. A thread can
//! only filter itself, and only after the process-wide filter (installed with TSYNC, which
//! fails on a thread that has a filter of its own), so each thread looks here when it starts and
//! when it is next woken for it.

use std::cell::Cell;
use std::sync::OnceLock;

use log::error;
use seccompiler::BpfProgram;

/// The filters, set once by the sandbox, read by every thread of each role.
#[derive(Debug, Default)]
pub struct RoleFilters {
    /// For threads serving a vhost-user connection (`port-*`).
    pub connection: OnceLock<BpfProgram>,
    /// For queue workers and the control queue (`vq-*`).
    pub queue: OnceLock<BpfProgram>,
}

/// Which role's filter a thread put on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Connection,
    Queue,
}

thread_local! {
    /// The roles whose filter this thread is under (bit per role).
    static APPLIED: Cell<u8> = const { Cell::new(0) };
}

impl RoleFilters {
    /// Puts the calling thread under `role`'s filter if it is set and the thread is not under
    /// it yet; true if it did so now.
    pub fn confine_this_thread(&self, role: Role) -> bool {
        let bit = 1u8 << (role as u8);
        if APPLIED.get() & bit != 0 {
            return false;
        }
        let program = match role {
            Role::Connection => self.connection.get(),
            Role::Queue => self.queue.get(),
        };
        let Some(program) = program else {
            return false;
        };
        match seccompiler::apply_filter(program) {
            Ok(()) => {
                APPLIED.set(APPLIED.get() | bit);
                true
            }
            Err(e) => {
                error!("{role:?} thread: seccomp filter: {e}");
                false
            }
        }
    }
}
