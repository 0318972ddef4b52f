//! The process-wide batching switch. Batching is on; `--no-batching` turns it off so that a
//! benchmark can measure one system call per frame as its in-run reference.

use std::sync::atomic::{AtomicBool, Ordering};

static DISABLED: AtomicBool = AtomicBool::new(false);

/// Turns batching off for the rest of the process.
pub fn disable() {
    DISABLED.store(true, Ordering::Relaxed);
}

/// How many frames one system call may carry, given the batch size a caller would use.
pub fn limit(batch: usize) -> usize {
    if DISABLED.load(Ordering::Relaxed) {
        1
    } else {
        batch
    }
}
