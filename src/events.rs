//! Asynchronous events (port connects, stream peers, filter changes, shutdown) and their
//! fan-out to whoever subscribed (QMP sessions). Emitting never waits: each sink queues what it
//! gets and is dropped from the bus once it is closed.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// One event, timestamped when it was emitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: Option<Value>,
    /// Since the Unix epoch.
    pub timestamp: Duration,
}

/// Where events go: something that queues them without waiting.
pub trait EventSink: Send + Sync {
    /// Queues `event`; `false` if the sink is closed (it is then unsubscribed).
    fn deliver(&self, event: &Event) -> bool;
    /// Whether the sink takes no more events.
    fn is_closed(&self) -> bool;
    /// Waits until what was queued went out, at most until `deadline`.
    fn drain(&self, deadline: Instant);
}

/// Fan-out of events to subscribed sinks.
#[derive(Default)]
pub struct EventBus {
    sinks: Mutex<Vec<Weak<dyn EventSink>>>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventBus({} sinks)", self.live().len())
    }
}

impl EventBus {
    /// Starts delivering events to `sink`.
    pub fn subscribe(&self, sink: &Arc<dyn EventSink>) {
        self.sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(sink));
    }

    fn live(&self) -> Vec<Arc<dyn EventSink>> {
        let mut sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        sinks.retain(|w| w.upgrade().is_some_and(|s| !s.is_closed()));
        sinks.iter().filter_map(Weak::upgrade).collect()
    }

    /// Sends `name` with `data`, timestamped now, to every live sink. Never waits.
    pub fn emit(&self, name: &str, data: Option<Value>) {
        let event = Event {
            name: name.to_string(),
            data,
            timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        };
        for sink in self.live() {
            sink.deliver(&event);
        }
    }

    /// Waits (at most `timeout`) until every sink has sent what is queued: before the process
    /// exits, so that `SHUTDOWN` reaches clients that read.
    pub fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for sink in self.live() {
            sink.drain(deadline);
        }
    }

    /// Live sinks (tests).
    pub fn sinks(&self) -> usize {
        self.live().len()
    }
}
