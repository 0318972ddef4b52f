//! A QMP client's byte stream, cut into reads of fuzzer-chosen sizes: framing, the command
//! envelope, negotiation and every command's argument checks, against a daemon context with one
//! hubport netdev and one (unconnected) port.
//!
//! Checked: every frame gets exactly one reply, and every reply is one ASCII line ending in
//! `\r\n` holding a JSON object with either `return` or `error` (an `error` with a `class` and a
//! `desc`). Commands that would open host resources (`netdev_add` of a type other than
//! `hubport`, `object-add`, which creates a file, `port-add`, which binds a socket) or start
//! timers (`announce-self`) are left out; the netdev options are covered by the `netdev_options` target, and `object-add`'s
//! arguments go through its parser here without the file being opened.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vhost_user_netd::capture::FilterDump;
use vhost_user_netd::config::{Listen, PortConfig};
use vhost_user_netd::port::Port;
use vhost_user_netd::qmp::commands::{QmpContext, SessionFds};
use vhost_user_netd::qmp::framing::{Frame, Splitter};
use vhost_user_netd::qmp::session::Session;
use vhost_user_netd::registry::{Netdev, Registry};
use vhost_user_netd_backends::{HostEnv, NetdevConfig, OptionSource, Opts};

fn context() -> QmpContext {
    let config = NetdevConfig::parse_cli("hubport,id=n0,hubid=0").expect("hubport config");
    let backend = config
        .open(&mut SessionFds::default(), &HostEnv::default())
        .expect("hubport opens");
    let port = Port::new(
        PortConfig {
            id: "p0".into(),
            listen: Listen::Path("/nonexistent/p0.sock".into()),
            client: false,
            netdev: "n0".into(),
            mac: None,
            mtu: None,
            queues: 1,
        },
        backend.clone(),
    );
    let netdev = Netdev::new(config, backend);
    QmpContext::new(Arc::new(Registry::new(vec![netdev], vec![port], None)))
}

/// Whether the frame asks for something with effects outside the process.
fn left_out(frame: &Frame) -> bool {
    let Frame::Value(text) = frame else {
        return false;
    };
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(text) else {
        return false;
    };
    let name = m.get("execute").or_else(|| m.get("exec-oob"));
    match name.and_then(Value::as_str) {
        Some("announce-self") | Some("port-add") => true,
        Some("object-add") => {
            if let Some(args) = m.get("arguments").and_then(Value::as_object) {
                let mut opts = Opts::new(args.clone(), OptionSource::Json);
                let _ = opts.take_str("qom-type");
                let _ = FilterDump::from_opts(&mut opts);
            }
            true
        }
        Some("netdev_add") => {
            m.get("arguments")
                .and_then(|a| a.get("type"))
                .and_then(Value::as_str)
                != Some("hubport")
        }
        _ => false,
    }
}

fn check_reply(reply: &str) {
    assert!(reply.is_ascii(), "reply not ASCII: {reply:?}");
    let line = reply.strip_suffix("\r\n").expect("reply ends in CRLF");
    assert!(!line.contains('\n'), "reply is one line: {reply:?}");
    let v: Value = serde_json::from_str(line).expect("reply is JSON");
    let m = v.as_object().expect("reply is an object");
    match (m.get("return"), m.get("error")) {
        (Some(_), None) => {}
        (None, Some(e)) => {
            assert!(e["class"].is_string() && e["desc"].is_string(), "{reply}");
        }
        _ => panic!("reply has neither or both of return and error: {reply}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let ctx = context();
    let mut session = Session::default();
    let mut splitter = Splitter::default();
    let mut frames = Vec::new();
    for piece in data.chunks(usize::from(chunk.max(1))) {
        splitter.feed(piece, &mut frames);
        for frame in frames.drain(..) {
            if left_out(&frame) {
                continue;
            }
            check_reply(&session.handle(frame, &ctx).reply);
        }
    }
});
