//! QMP listeners (`unix:` paths and loopback `tcp:`): one thread per listener, and per session a
//! reader thread (commands) and a writer thread (replies and events, see [`super::session_out`]).
//! At most [`MAX_SESSIONS`] sessions run at once over all listeners.

use std::io;
use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use log::{info, warn};

use super::commands::QmpContext;
use super::protocol::{encode_error, QmpError};
use super::session::{self, QmpInput};
use super::session_out::{SessionOut, STALL_LIMIT};
use crate::config::QmpAddr;

/// Most QMP sessions served at once; a client beyond it gets an error and is disconnected.
pub const MAX_SESSIONS: usize = 64;

/// Counts a session while its threads run.
#[derive(Debug)]
struct SessionSlot(Arc<AtomicUsize>);

impl SessionSlot {
    fn take(count: &Arc<AtomicUsize>) -> Option<Arc<SessionSlot>> {
        count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_SESSIONS).then_some(n + 1)
            })
            .ok()
            .map(|_| Arc::new(SessionSlot(count.clone())))
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let left = self.0.fetch_sub(1, Ordering::SeqCst) - 1;
        info!("QMP session ended ({left} open)");
    }
}

/// Binds every QMP address and serves it on its own thread.
pub fn start(addrs: &[QmpAddr], ctx: Arc<QmpContext>) -> io::Result<()> {
    let sessions = Arc::new(AtomicUsize::new(0));
    for addr in addrs {
        let (ctx, sessions) = (ctx.clone(), sessions.clone());
        match addr {
            QmpAddr::Unix(path) => {
                let listener = crate::port::bind_listener(path)?;
                info!("QMP listening on unix:{}", path.display());
                spawn("qmp-unix", move || {
                    serve(listener.incoming(), ctx, sessions)
                })?;
            }
            QmpAddr::Fd(fd) => {
                let listener = crate::port::inherited_listener(*fd)?;
                info!("QMP listening on inherited fd {fd}");
                spawn("qmp-unix", move || {
                    serve(listener.incoming(), ctx, sessions)
                })?;
            }
            QmpAddr::Tcp(host, port) => {
                let listener = TcpListener::bind((host.as_str(), *port))?;
                info!("QMP listening on tcp:{host}:{port}");
                spawn("qmp-tcp", move || serve(listener.incoming(), ctx, sessions))?;
            }
        }
    }
    Ok(())
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
}

/// The parts of a connected client socket a session needs.
struct ClientParts {
    writer: Box<dyn Write + Send>,
    hangup: Box<dyn Fn() + Send + Sync>,
    peer: String,
}

/// A connected client socket, unix or TCP.
trait ClientStream: QmpInput + Write + Send + 'static {
    /// Sets the socket up for a session: a client that takes no bytes for [`STALL_LIMIT`]
    /// fails the write (and is disconnected).
    fn prepare(&self) -> io::Result<ClientParts>;
    fn set_nonblocking(&self) -> io::Result<()>;
}

impl ClientStream for UnixStream {
    fn prepare(&self) -> io::Result<ClientParts> {
        self.set_write_timeout(Some(STALL_LIMIT))?;
        let end = self.try_clone()?;
        Ok(ClientParts {
            writer: Box::new(self.try_clone()?),
            hangup: Box::new(move || {
                let _ = end.shutdown(Shutdown::Both);
            }),
            peer: "unix client".into(),
        })
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        UnixStream::set_nonblocking(self, true)
    }
}

impl ClientStream for TcpStream {
    fn prepare(&self) -> io::Result<ClientParts> {
        self.set_write_timeout(Some(STALL_LIMIT))?;
        self.set_nodelay(true)?;
        let end = self.try_clone()?;
        Ok(ClientParts {
            writer: Box::new(self.try_clone()?),
            hangup: Box::new(move || {
                let _ = end.shutdown(Shutdown::Both);
            }),
            peer: self
                .peer_addr()
                .map_or_else(|_| "tcp client".to_string(), |a| a.to_string()),
        })
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        TcpStream::set_nonblocking(self, true)
    }
}

/// Tells a client beyond [`MAX_SESSIONS`] why it is disconnected (one write that cannot block).
fn refuse(mut stream: impl ClientStream) {
    let e = QmpError::generic(format!(
        "Too many QMP sessions: at most {MAX_SESSIONS} are served at once"
    ));
    if stream.set_nonblocking().is_ok() {
        let _ = stream.write_all(encode_error(&e, None).as_bytes());
    }
}

/// Starts one session: its writer thread, then its reader thread.
fn start_session<S: ClientStream>(
    stream: S,
    ctx: Arc<QmpContext>,
    slot: Arc<SessionSlot>,
) -> io::Result<()> {
    let parts = stream.prepare()?;
    let out = SessionOut::spawn(parts.writer, parts.hangup, &parts.peer, slot.clone())?;
    let peer = parts.peer;
    let writer_side = out.clone();
    spawn("qmp-session", move || {
        session::run(stream, out, &ctx, &peer);
        drop(slot);
    })
    .inspect_err(|_| writer_side.close())
}

/// Accepts clients forever.
fn serve<S: ClientStream>(
    incoming: impl Iterator<Item = io::Result<S>>,
    ctx: Arc<QmpContext>,
    sessions: Arc<AtomicUsize>,
) {
    for stream in incoming {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                warn!("QMP accept: {e}");
                continue;
            }
        };
        let Some(slot) = SessionSlot::take(&sessions) else {
            warn!("QMP: {MAX_SESSIONS} sessions already; a new client is refused");
            refuse(stream);
            continue;
        };
        if let Err(e) = start_session(stream, ctx.clone(), slot) {
            warn!("QMP: starting a session: {e}");
        }
    }
}
