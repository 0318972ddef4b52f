//! Asynchronous events, written to every session that finished capabilities negotiation.

use std::io::Write;
use std::sync::{Arc, Mutex, Weak};

use serde_json::Value;

use super::protocol::encode_event;

/// A session's output side, shared by its replies and the events sent to it.
pub struct SessionOut {
    writer: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for SessionOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionOut")
    }
}

impl SessionOut {
    pub fn new(writer: Box<dyn Write + Send>) -> Arc<Self> {
        Arc::new(SessionOut {
            writer: Mutex::new(writer),
        })
    }

    /// Writes one encoded message; an error means the client is gone (or stopped reading for
    /// longer than the socket's write timeout).
    pub fn send(&self, line: &str) -> std::io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(line.as_bytes())?;
        w.flush()
    }
}

/// Fan-out of events to negotiated sessions.
#[derive(Debug, Default)]
pub struct EventBus {
    sessions: Mutex<Vec<Weak<SessionOut>>>,
}

impl EventBus {
    /// Starts delivering events to `out`.
    pub fn subscribe(&self, out: &Arc<SessionOut>) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(out));
    }

    /// Sends `name` with `data` (timestamped now) to every live subscribed session.
    pub fn emit(&self, name: &str, data: Option<Value>) {
        let line = encode_event(name, data);
        let targets: Vec<Arc<SessionOut>> = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            sessions.retain(|w| w.strong_count() > 0);
            sessions.iter().filter_map(Weak::upgrade).collect()
        };
        for out in targets {
            // A client that cannot take an event loses it; its reader notices the broken socket.
            let _ = out.send(&line);
        }
    }
}
