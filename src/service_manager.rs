//! Telling the service manager (systemd, `Type=notify`) how the daemon is doing, through
//! `sd-notify`: `READY=1` once every port listens, a `STATUS=` line whenever a frontend comes or
//! goes, `STOPPING=1` at shutdown, and `WATCHDOG=1` while `WATCHDOG_USEC` is set and every queue
//! worker answers a ping (a stuck worker withholds it, so systemd restarts the daemon).
//!
//! Nothing here blocks the daemon: events only queue a note for the notifier's own thread, which
//! does the sending.

use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{error, warn};
use sd_notify::NotifyState;

use crate::device::worker::Workers;
use crate::events::{Event, EventBus, EventSink};
use crate::registry::Registry;

/// Notes queued for the notifier thread at most; more are dropped (a later one says the same).
const QUEUE: usize = 16;

enum Note {
    Ready,
    Refresh,
    Stopping,
}

/// The notifier: a thread that talks to the service manager, and the events that feed it.
pub struct ServiceManager {
    notes: SyncSender<Note>,
    thread: Option<JoinHandle<()>>,
    sink: Arc<dyn EventSink>,
}

impl std::fmt::Debug for ServiceManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceManager")
    }
}

/// Port connects and disconnects, as notes for the notifier.
struct PortEvents(SyncSender<Note>);

impl EventSink for PortEvents {
    fn deliver(&self, event: &Event) -> bool {
        if event.name.starts_with("VHOST_USER_PORT_") {
            let _ = self.0.try_send(Note::Refresh);
        }
        true
    }

    fn is_closed(&self) -> bool {
        false
    }

    fn drain(&self, _deadline: Instant) {}
}

impl ServiceManager {
    /// Starts the notifier if a service manager listens (`NOTIFY_SOCKET` is set).
    pub fn start(
        registry: Arc<Registry>,
        workers: Arc<Workers>,
        events: &EventBus,
    ) -> Option<ServiceManager> {
        std::env::var_os("NOTIFY_SOCKET")?;
        let watchdog = sd_notify::watchdog_enabled();
        let (notes, receiver) = mpsc::sync_channel(QUEUE);
        let sink: Arc<dyn EventSink> = Arc::new(PortEvents(notes.clone()));
        events.subscribe(&sink);
        let thread = std::thread::Builder::new()
            .name("sd-notify".into())
            .spawn(move || notifier(&receiver, &registry, &workers, watchdog))
            .map_err(|e| error!("service manager notifier: {e}"))
            .ok()?;
        Some(ServiceManager {
            notes,
            thread: Some(thread),
            sink,
        })
    }

    /// Every port listens: `READY=1`.
    pub fn ready(&self) {
        let _ = self.notes.try_send(Note::Ready);
    }

    /// The daemon is shutting down: `STOPPING=1`, sent before this returns.
    pub fn stopping(mut self) {
        let _ = self.notes.send(Note::Stopping);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        drop(self.sink);
    }
}

/// The `STATUS=` line: ports and connected frontends.
fn status(registry: &Registry) -> String {
    let ports = registry.ports();
    let connected = ports.iter().filter(|p| p.device().is_some()).count();
    format!("{} port(s), {connected} frontend(s) connected", ports.len())
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("sd_notify: {e}");
    }
}

fn notifier(
    notes: &mpsc::Receiver<Note>,
    registry: &Registry,
    workers: &Workers,
    watchdog: Option<Duration>,
) {
    // systemd wants a ping at least every WATCHDOG_USEC; twice as often leaves room.
    let tick = watchdog.map(|w| w / 2);
    loop {
        let note = match tick {
            Some(t) => notes.recv_timeout(t),
            None => notes.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match note {
            Ok(Note::Ready) => send(&[NotifyState::Ready, NotifyState::Status(&status(registry))]),
            Ok(Note::Refresh) => send(&[NotifyState::Status(&status(registry))]),
            Ok(Note::Stopping) | Err(RecvTimeoutError::Disconnected) => {
                send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                let answer = tick.unwrap_or_default() / 2;
                if workers.all_answer(answer) {
                    send(&[NotifyState::Watchdog]);
                } else {
                    error!("a queue worker does not answer within {answer:?}: no WATCHDOG=1");
                }
            }
        }
    }
}

/// The sockets the service manager passed (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`); none
/// when the variables are absent or meant for another process. (The variables stay: a child
/// sees a `LISTEN_PID` that is not its own and ignores them.)
pub fn inherited_sockets() -> std::io::Result<Vec<crate::cli::InheritedSocket>> {
    Ok(sd_notify::listen_fds_with_names()?
        .map(|(fd, name)| crate::cli::InheritedSocket { fd, name })
        .collect())
}
