//! A QMP session's output: everything it sends (replies and events) goes through a bounded
//! queue that the session's own writer thread empties, so nothing that emits an event (a port thread, the
//! datapath, shutdown) ever waits for a QMP client.
//!
//! Replies are flow-controlled: a session stops reading commands while [`REPLY_WINDOW`]
//! messages wait for its client. Events are not (their senders must not wait): a client that
//! lets [`QUEUE_LIMIT`] messages pile up, or whose socket takes no byte for [`STALL_LIMIT`], is
//! disconnected and unsubscribed.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::warn;

use super::protocol::encode_event;
use crate::events::{Event, EventSink};

/// Most messages waiting for one client before it is disconnected.
pub const QUEUE_LIMIT: usize = 256;
/// Queued messages above which a session reads no more commands until its client catches up.
pub const REPLY_WINDOW: usize = QUEUE_LIMIT / 2;
/// Longest a client may take no bytes while messages wait for it (the socket's send timeout).
pub const STALL_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The reader is done: the writer sends what is queued, then ends.
    Finishing,
    Closed,
}

#[derive(Debug)]
struct Outbox {
    lines: VecDeque<String>,
    state: State,
}

/// A session's output side: its queue and the writer thread that empties it.
pub struct SessionOut {
    outbox: Mutex<Outbox>,
    changed: Condvar,
    /// Shuts the client's socket down both ways (its reader then sees end-of-file).
    hangup: Box<dyn Fn() + Send + Sync>,
    peer: String,
}

impl std::fmt::Debug for SessionOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionOut({})", self.peer)
    }
}

/// The session's queue is closed: the client is gone or was disconnected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl SessionOut {
    /// Starts the writer thread for `writer`. `hangup` shuts the client's socket down; `held`
    /// is kept until the writer thread ends (the server's session count).
    pub fn spawn<H: Send + 'static>(
        writer: Box<dyn Write + Send>,
        hangup: Box<dyn Fn() + Send + Sync>,
        peer: &str,
        held: H,
    ) -> std::io::Result<Arc<Self>> {
        let out = Arc::new(SessionOut {
            outbox: Mutex::new(Outbox {
                lines: VecDeque::new(),
                state: State::Open,
            }),
            changed: Condvar::new(),
            hangup,
            peer: peer.to_string(),
        });
        let writer_side = out.clone();
        std::thread::Builder::new()
            .name("qmp-writer".into())
            .spawn(move || {
                writer_side.write_until_done(writer);
                drop(held);
            })?;
        Ok(out)
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write_until_done(&self, mut writer: Box<dyn Write + Send>) {
        loop {
            let line = {
                let mut outbox = self.outbox();
                while outbox.lines.is_empty() && outbox.state == State::Open {
                    outbox = self.changed.wait(outbox).unwrap_or_else(|p| p.into_inner());
                }
                match (outbox.state, outbox.lines.pop_front()) {
                    (State::Closed, _) => return,
                    (_, Some(line)) => line,
                    (_, None) => {
                        outbox.state = State::Closed;
                        self.changed.notify_all();
                        return;
                    }
                }
            };
            if let Err(e) = writer
                .write_all(line.as_bytes())
                .and_then(|()| writer.flush())
            {
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) {
                    warn!(
                        "QMP {}: took no output for {STALL_LIMIT:?} ({e}); disconnected",
                        self.peer
                    );
                }
                self.close();
                return;
            }
            self.changed.notify_all();
        }
    }

    /// Queues one encoded event without waiting. A client with [`QUEUE_LIMIT`] messages waiting
    /// is disconnected instead.
    pub fn send(&self, line: String) -> Result<(), Closed> {
        let mut outbox = self.outbox();
        if outbox.state != State::Open {
            return Err(Closed);
        }
        if outbox.lines.len() >= QUEUE_LIMIT {
            drop(outbox);
            warn!(
                "QMP {}: {QUEUE_LIMIT} messages wait for a client that is not reading; disconnected",
                self.peer
            );
            self.close();
            return Err(Closed);
        }
        outbox.lines.push_back(line);
        self.changed.notify_all();
        Ok(())
    }

    /// Queues a reply, first waiting while [`REPLY_WINDOW`] messages wait for the client (for
    /// the session's own reader: a client that sends commands faster than it reads replies is
    /// slowed down, not dropped).
    pub fn send_reply(&self, line: String) -> Result<(), Closed> {
        let mut outbox = self.outbox();
        while outbox.state == State::Open && outbox.lines.len() >= REPLY_WINDOW {
            outbox = self.changed.wait(outbox).unwrap_or_else(|p| p.into_inner());
        }
        if outbox.state != State::Open {
            return Err(Closed);
        }
        outbox.lines.push_back(line);
        self.changed.notify_all();
        Ok(())
    }

    /// The client sent its last command: what is queued still goes out, then the writer ends.
    pub fn finish(&self) {
        let mut outbox = self.outbox();
        if outbox.state == State::Open {
            outbox.state = State::Finishing;
            self.changed.notify_all();
        }
    }

    /// Drops what is queued and hangs the client up.
    pub fn close(&self) {
        {
            let mut outbox = self.outbox();
            outbox.state = State::Closed;
            outbox.lines.clear();
            self.changed.notify_all();
        }
        (self.hangup)();
    }

    /// Whether the session no longer takes messages.
    pub fn is_closed(&self) -> bool {
        self.outbox().state != State::Open
    }

    /// Waits until everything queued was written (or the session closed), at most until
    /// `deadline`. Returns whether the queue is empty.
    pub fn drain(&self, deadline: Instant) -> bool {
        let mut outbox = self.outbox();
        loop {
            if outbox.lines.is_empty() || outbox.state == State::Closed {
                return outbox.lines.is_empty();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            outbox = self
                .changed
                .wait_timeout(outbox, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl EventSink for SessionOut {
    fn deliver(&self, event: &Event) -> bool {
        self.send(encode_event(event)).is_ok()
    }

    fn is_closed(&self) -> bool {
        SessionOut::is_closed(self)
    }

    fn drain(&self, deadline: Instant) {
        SessionOut::drain(self, deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventBus;

    /// A writer that blocks until released, recording what it wrote.
    #[derive(Clone, Default)]
    struct Gate {
        open: Arc<(Mutex<bool>, Condvar)>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let (lock, cv) = &*self.open;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.written.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_client_that_does_not_read_is_dropped_without_blocking_the_emitter() {
        let gate = Gate::default();
        let hung_up = Arc::new(Mutex::new(false));
        let flag = hung_up.clone();
        let out = SessionOut::spawn(
            Box::new(gate.clone()),
            Box::new(move || *flag.lock().unwrap() = true),
            "test",
            (),
        )
        .unwrap();
        let bus = EventBus::default();
        let sink: Arc<dyn EventSink> = out.clone();
        bus.subscribe(&sink);
        let start = Instant::now();
        // The writer holds one message in its blocked write; QUEUE_LIMIT more fill the queue.
        for _ in 0..QUEUE_LIMIT + 2 {
            bus.emit("X", None);
        }
        assert!(start.elapsed() < Duration::from_secs(1), "emit never waits");
        assert!(*hung_up.lock().unwrap(), "the client was hung up");
        assert!(out.is_closed());
        assert_eq!(bus.sinks(), 0, "and unsubscribed");
        *gate.open.0.lock().unwrap() = true;
        gate.open.1.notify_all();
    }

    #[test]
    fn a_finishing_session_still_sends_what_is_queued() {
        let gate = Gate::default();
        *gate.open.0.lock().unwrap() = true;
        let out = SessionOut::spawn(Box::new(gate.clone()), Box::new(|| {}), "test", ()).unwrap();
        out.send("a\r\n".into()).unwrap();
        out.send_reply("b\r\n".into()).unwrap();
        out.finish();
        assert_eq!(out.send_reply("c\r\n".into()), Err(Closed));
        assert!(out.drain(Instant::now() + Duration::from_secs(5)));
        assert_eq!(&*gate.written.lock().unwrap(), b"a\r\nb\r\n");
    }
}
