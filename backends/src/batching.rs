//! The batching switch. Batching is on; `--no-batching` turns it off so that a benchmark can
//! measure one system call per frame as its in-run reference. A value, handed to the backends
//! that batch when they are opened.

/// Whether system calls carry several frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    on: bool,
}

impl Default for Batching {
    fn default() -> Self {
        Batching::ON
    }
}

impl Batching {
    /// Several frames per system call (the default).
    pub const ON: Batching = Batching { on: true };
    /// One frame per system call (`--no-batching`).
    pub const OFF: Batching = Batching { on: false };

    /// How many frames one system call may carry, given the batch size a caller would use.
    pub fn limit(self, batch: usize) -> usize {
        if self.on {
            batch
        } else {
            1
        }
    }
}
