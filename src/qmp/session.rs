//! One QMP client: greeting, capabilities negotiation, then commands until it goes away.

use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info};
use serde_json::{json, Value};

use super::commands::{dispatch, version_info, After, QmpContext, SessionFds};
use super::framing::{Frame, Splitter};
use super::protocol::{encode, encode_error, encode_return, parse_command, QmpError};
use super::session_out::SessionOut;

/// Where a session reads from: bytes, plus descriptors where the transport carries them.
pub trait QmpInput {
    /// Reads bytes into `buf`, appending descriptors that came with them to `fds`.
    fn read_with_fds(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize>;
}

impl QmpInput for UnixStream {
    fn read_with_fds(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        vhost_user_netd_backends::sys::recv_with_fds(self.as_raw_fd(), buf, fds)
    }
}

impl QmpInput for TcpStream {
    fn read_with_fds(&mut self, buf: &mut [u8], _fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        self.read(buf)
    }
}

/// How long `quit` waits for its reply to be written before the daemon shuts down.
const QUIT_REPLY_WAIT: Duration = Duration::from_secs(1);

/// Serves one client on `reader`/`out` until EOF or until its output is closed.
pub fn run(mut reader: impl QmpInput, out: Arc<SessionOut>, ctx: &QmpContext, peer: &str) {
    serve(&mut reader, &out, ctx, peer);
    // Replies already queued still go out (a client may half-close after its last command).
    out.finish();
    debug!("QMP {peer}: session ended");
}

/// The greeting a session starts with.
pub fn greeting() -> String {
    encode(&json!({ "QMP": { "version": version_info(), "capabilities": [] } }))
}

/// One session's command state: negotiation and the descriptors it holds. Transport-free, so
/// that a byte stream can drive it in a test or a fuzz target.
#[derive(Debug, Default)]
pub struct Session {
    negotiated: bool,
    /// Descriptors that came with the current command and those `getfd` named.
    pub fds: SessionFds,
}

/// What one command produced.
#[derive(Debug)]
pub struct Handled {
    /// The encoded reply (`return` or `error`).
    pub reply: String,
    pub after: After,
    /// Negotiation just completed: the session starts getting events.
    pub subscribe: bool,
}

impl Session {
    /// Handles one frame; descriptors that came with it and were not taken are closed.
    pub fn handle(&mut self, frame: Frame, ctx: &QmpContext) -> Handled {
        let was_negotiated = self.negotiated;
        let (reply, after) = self.reply(frame, ctx);
        // Descriptors belong to the command they came with; getfd took what it wanted.
        self.fds.received.clear();
        Handled {
            reply,
            after,
            subscribe: self.negotiated && !was_negotiated,
        }
    }

    fn reply(&mut self, frame: Frame, ctx: &QmpContext) -> (String, After) {
        let text = match frame {
            Frame::Value(t) => t,
            Frame::Error(e) => return (encode_error(&QmpError::generic(e), None), After::Nothing),
        };
        let value: Value = match serde_json::from_slice(&text) {
            Ok(v) => v,
            Err(e) => {
                let e = QmpError::generic(format!("JSON parse error, {e}"));
                return (encode_error(&e, None), After::Nothing);
            }
        };
        let cmd = match parse_command(value) {
            Ok(c) => c,
            Err((e, id)) => return (encode_error(&e, id), After::Nothing),
        };
        if !self.negotiated {
            if cmd.name != "qmp_capabilities" {
                let e = QmpError::command_not_found(
                    "Expecting capabilities negotiation with 'qmp_capabilities'",
                );
                return (encode_error(&e, cmd.id), After::Nothing);
            }
            return match negotiate(&cmd.arguments) {
                Ok(()) => {
                    self.negotiated = true;
                    (encode_return(json!({}), cmd.id), After::Nothing)
                }
                Err(e) => (encode_error(&e, cmd.id), After::Nothing),
            };
        }
        match dispatch(ctx, &mut self.fds, &cmd.name, &cmd.arguments) {
            Ok((value, after)) => (encode_return(value, cmd.id), after),
            Err(e) => (encode_error(&e, cmd.id), After::Nothing),
        }
    }
}

fn serve(reader: &mut impl QmpInput, out: &Arc<SessionOut>, ctx: &QmpContext, peer: &str) {
    if out.send_reply(greeting()).is_err() {
        return;
    }
    let mut session = Session::default();
    let mut splitter = Splitter::default();
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match reader.read_with_fds(&mut buf, &mut session.fds.received) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        splitter.feed(&buf[..n], &mut frames);
        for frame in frames.drain(..) {
            let handled = session.handle(frame, ctx);
            if handled.subscribe {
                let sink: Arc<dyn crate::events::EventSink> = out.clone();
                ctx.events.subscribe(&sink);
            }
            if out.send_reply(handled.reply).is_err() {
                return;
            }
            if handled.after == After::Quit {
                info!("QMP {peer}: quit");
                out.drain(Instant::now() + QUIT_REPLY_WAIT);
                crate::signals::request_shutdown();
            }
        }
    }
}

/// `qmp_capabilities {"enable": [...]}`: no optional capability is offered.
fn negotiate(args: &serde_json::Map<String, Value>) -> Result<(), QmpError> {
    let mut opts = vhost_user_netd_backends::Opts::new(
        args.clone(),
        vhost_user_netd_backends::OptionSource::Json,
    );
    match opts.take_value("enable") {
        None => {}
        Some(Value::Array(list)) => {
            if let Some(first) = list.first() {
                let name = first
                    .as_str()
                    .map_or_else(|| first.to_string(), str::to_string);
                return Err(QmpError::generic(format!(
                    "Capability '{name}' not available"
                )));
            }
        }
        Some(_) => {
            return Err(QmpError::generic(
                "Invalid parameter type for 'enable', expected: array",
            ))
        }
    }
    opts.finish().map_err(QmpError::from)
}
