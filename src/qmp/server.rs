//! QMP listeners (`unix:` paths and loopback `tcp:`), one thread per listener and per session.

use std::io;
use std::net::{TcpListener, ToSocketAddrs};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};

use super::commands::QmpContext;
use super::events::SessionOut;
use super::session;
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
                spawn("qmp-unix", move || serve_unix(listener, ctx))?;
            }
            QmpAddr::Tcp(host, port) => {
                let listener = TcpListener::bind((host.as_str(), *port))?;
                info!("QMP listening on tcp:{host}:{port}");
                let ctx = ctx.clone();
                spawn("qmp-tcp", move || serve_tcp(listener, ctx))?;
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

fn serve_unix(listener: UnixListener, ctx: Arc<QmpContext>) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                warn!("QMP accept: {e}");
                continue;
            }
        };
        let ctx = ctx.clone();
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let Ok(writer) = stream.try_clone() else {
            continue;
        };
        let _ = spawn("qmp-session", move || {
            session::run(
                stream,
                SessionOut::new(Box::new(writer)),
                &ctx,
                "unix client",
            )
        });
    }
}

fn serve_tcp(listener: TcpListener, ctx: Arc<QmpContext>) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                warn!("QMP accept: {e}");
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "tcp client".to_string(), |a| a.to_string());
        let ctx = ctx.clone();
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let _ = stream.set_nodelay(true);
        let Ok(writer) = stream.try_clone() else {
            continue;
        };
        let _ = spawn("qmp-session", move || {
            session::run(stream, SessionOut::new(Box::new(writer)), &ctx, &peer)
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
