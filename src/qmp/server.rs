//! QMP listeners (`unix:` paths and loopback `tcp:`), one thread per listener and per session.

use std::io;
use std::io::Write;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};

use super::commands::QmpContext;
use super::events::SessionOut;
use super::session::{self, QmpInput};
use crate::config::QmpAddr;

/// A client that stops reading for this long is dropped instead of stalling event delivery.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds every QMP address and serves it on its own thread.
pub fn start(addrs: &[QmpAddr], ctx: Arc<QmpContext>) -> io::Result<()> {
    for addr in addrs {
        match addr {
            QmpAddr::Unix(path) => {
                let listener = crate::port::bind_listener(path)?;
                info!("QMP listening on unix:{}", path.display());
                let ctx = ctx.clone();
                spawn("qmp-unix", move || serve(listener.incoming(), ctx))?;
            }
            QmpAddr::Tcp(host, port) => {
                let listener = TcpListener::bind((host.as_str(), *port))?;
                info!("QMP listening on tcp:{host}:{port}");
                let ctx = ctx.clone();
                spawn("qmp-tcp", move || serve(listener.incoming(), ctx))?;
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

/// A connected client socket, unix or TCP.
trait ClientStream: QmpInput + Send + 'static {
    /// Sets the socket up for a session; returns the writing half and a name for logs.
    fn prepare(&self) -> io::Result<(Box<dyn Write + Send>, String)>;
}

impl ClientStream for UnixStream {
    fn prepare(&self) -> io::Result<(Box<dyn Write + Send>, String)> {
        self.set_write_timeout(Some(WRITE_TIMEOUT))?;
        Ok((Box::new(self.try_clone()?), "unix client".into()))
    }
}

impl ClientStream for TcpStream {
    fn prepare(&self) -> io::Result<(Box<dyn Write + Send>, String)> {
        self.set_write_timeout(Some(WRITE_TIMEOUT))?;
        self.set_nodelay(true)?;
        let peer = self
            .peer_addr()
            .map_or_else(|_| "tcp client".to_string(), |a| a.to_string());
        Ok((Box::new(self.try_clone()?), peer))
    }
}

/// Accepts clients forever, one session thread each.
fn serve<S: ClientStream>(incoming: impl Iterator<Item = io::Result<S>>, ctx: Arc<QmpContext>) {
    for stream in incoming {
        let (stream, (writer, peer)) = match stream.and_then(|s| s.prepare().map(|p| (s, p))) {
            Ok(s) => s,
            Err(e) => {
                warn!("QMP accept: {e}");
                continue;
            }
        };
        let ctx = ctx.clone();
        let _ = spawn("qmp-session", move || {
            session::run(stream, SessionOut::new(writer), &ctx, &peer)
        });
    }
}

/// Whether `host` resolves only to loopback addresses (QMP over TCP is for local use).
pub fn is_loopback(host: &str, port: u16) -> bool {
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs.all(|a| a.ip().is_loopback()),
        Err(_) => false,
    }
}
