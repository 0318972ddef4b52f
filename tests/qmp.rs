//! The QMP socket of the real daemon, driven over a plain socket: negotiation, framing as QEMU
//! does it, error classes and texts, junk input, concurrent sessions, `quit`.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::daemon::Daemon;
use common::TempDir;
use serde_json::{json, Value};

struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    events: Vec<Value>,
}

impl Client {
    fn connect(path: &std::path::Path) -> (Self, Value) {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = Client {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
            events: Vec::new(),
        };
        let greeting = c.read_raw();
        (c, greeting)
    }

    fn negotiated(path: &std::path::Path) -> Self {
        let (mut c, _) = Client::connect(path);
        assert_eq!(
            c.cmd(json!({"execute": "qmp_capabilities"})),
            json!({"return": {}})
        );
        c
    }

    fn read_raw(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        assert!(line.ends_with("\r\n"), "QMP lines end with CRLF: {line:?}");
        assert!(line.is_ascii(), "QMP output is ASCII: {line:?}");
        serde_json::from_str(&line).unwrap()
    }

    /// Next reply (events are set aside).
    fn reply(&mut self) -> Value {
        loop {
            let v = self.read_raw();
            if v.get("event").is_some() {
                self.events.push(v);
            } else {
                return v;
            }
        }
    }

    fn send_bytes(&mut self, b: &[u8]) {
        self.writer.write_all(b).unwrap();
    }

    /// Sends without a trailing newline, as qemu.qmp does.
    fn cmd(&mut self, v: Value) -> Value {
        self.send_bytes(v.to_string().as_bytes());
        self.reply()
    }
}

fn error(v: &Value) -> (String, String) {
    (
        v["error"]["class"].as_str().unwrap().to_string(),
        v["error"]["desc"].as_str().unwrap().to_string(),
    )
}

fn daemon(dir: &TempDir) -> (Daemon, std::path::PathBuf) {
    let path = dir.path("qmp.sock");
    let d = Daemon::start(
        Daemon::command(&[
            "--qmp",
            &format!("unix:{},server=on,wait=off", path.display()),
        ]),
        1,
    );
    (d, path)
}

#[test]
fn greeting_negotiation_and_basic_commands() {
    let dir = TempDir::new("qmp-basic");
    let (_d, path) = daemon(&dir);
    let (mut c, greeting) = Client::connect(&path);
    assert_eq!(greeting["QMP"]["capabilities"], json!([]));
    assert_eq!(greeting["QMP"]["version"]["qemu"]["major"], 10);
    assert!(greeting["QMP"]["version"]["package"]
        .as_str()
        .unwrap()
        .starts_with("vhost-user-netd "));

    let r = c.cmd(json!({"execute": "query-version", "id": 1}));
    assert_eq!(
        error(&r),
        (
            "CommandNotFound".into(),
            "Expecting capabilities negotiation with 'qmp_capabilities'".into()
        )
    );
    assert_eq!(r["id"], 1);
    let r = c.cmd(json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}));
    assert_eq!(error(&r).1, "Capability 'oob' not available");
    let id = json!({"a": [1, "x", null], "b": 2.5});
    assert_eq!(
        c.cmd(json!({"execute": "qmp_capabilities", "id": id})),
        json!({"return": {}, "id": id})
    );
    let r = c.cmd(json!({"execute": "qmp_capabilities"}));
    assert_eq!(
        error(&r),
        (
            "CommandNotFound".into(),
            "Capabilities negotiation is already complete, command ignored".into()
        )
    );

    let r = c.cmd(json!({"execute": "query-version", "id": "v"}));
    assert_eq!(r["id"], "v");
    assert_eq!(r["return"], greeting["QMP"]["version"]);
    let r = c.cmd(json!({"execute": "query-commands"}));
    let names: Vec<&str> = r["return"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"query-version") && names.contains(&"quit"),
        "{names:?}"
    );
    let r = c.cmd(json!({"execute": "no-such", "id": 9}));
    assert_eq!(
        error(&r),
        (
            "CommandNotFound".into(),
            "The command no-such has not been found".into()
        )
    );
    assert_eq!(r["id"], 9);
    let r = c.cmd(json!({"execute": "query-version", "arguments": {"x": 1}}));
    assert_eq!(
        error(&r),
        ("GenericError".into(), "Parameter 'x' is unexpected".into())
    );
}

#[test]
fn envelope_errors_and_framing_follow_qemu() {
    let dir = TempDir::new("qmp-framing");
    let (_d, path) = daemon(&dir);
    let mut c = Client::negotiated(&path);
    for (input, desc) in [
        (json!([1, 2]), "QMP input must be a JSON object"),
        (json!("str"), "QMP input must be a JSON object"),
        (json!({"foo": 1}), "QMP input member 'foo' is unexpected"),
        (
            json!({"execute": 1}),
            "QMP input member 'execute' must be a string",
        ),
        (
            json!({"execute": "quit", "arguments": []}),
            "QMP input member 'arguments' must be an object",
        ),
    ] {
        assert_eq!(
            error(&c.cmd(input.clone())),
            ("GenericError".into(), desc.into()),
            "{input}"
        );
    }
    // Two commands in one write; one command over several writes; single quotes.
    c.send_bytes(
        b"{\"execute\":\"query-version\",\"id\":1}{\"execute\":\"query-version\",\"id\":2}",
    );
    assert_eq!(c.reply()["id"], 1);
    assert_eq!(c.reply()["id"], 2);
    c.send_bytes(b"{\"exec");
    c.send_bytes(b"ute\":\"query-version\",");
    c.send_bytes(b"\"id\":\"split\"}");
    assert_eq!(c.reply()["id"], "split");
    c.send_bytes(b"{'execute':'query-version','id':'single'}");
    assert_eq!(c.reply()["id"], "single");
    c.send_bytes(b"{bad json}");
    assert!(error(&c.reply()).1.starts_with("JSON parse error"));
    c.send_bytes(b"\xff\xfe{\"execute\":\"query-version\",\"id\":3}");
    for _ in 0..2 {
        assert!(error(&c.reply()).1.starts_with("JSON parse error, stray"));
    }
    assert_eq!(c.reply()["id"], 3);
}

#[test]
fn junk_input_leaves_the_daemon_serving() {
    let dir = TempDir::new("qmp-junk");
    let (_d, path) = daemon(&dir);
    let mut c = Client::negotiated(&path);
    // 10,000-deep nesting, then a command.
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    c.send_bytes(deep.as_bytes());
    assert!(error(&c.reply()).1.contains("nesting"));
    assert_eq!(
        c.cmd(json!({"execute": "query-version", "id": "after-deep"}))["id"],
        "after-deep"
    );
    // Invalid UTF-8 inside a string.
    c.send_bytes(b"{\"execute\":\"query-version\",\"id\":\"\xc3\x28\"}");
    assert!(error(&c.reply()).1.starts_with("JSON parse error"));
    // An over-long message.
    let long = format!(
        "{{\"execute\":\"query-version\",\"id\":\"{}\"}}",
        "x".repeat(2 << 20)
    );
    c.send_bytes(long.as_bytes());
    assert!(error(&c.reply()).1.contains("exceeds"));
    assert_eq!(
        c.cmd(json!({"execute": "query-version", "id": "after-long"}))["id"],
        "after-long"
    );

    // 1 MB of random bytes on another session, draining its replies so that the daemon is
    // never blocked writing to it.
    let mut junk = UnixStream::connect(&path).unwrap();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let bytes: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut sink = [0u8; 65536];
    junk.set_nonblocking(true).unwrap();
    let mut sent = 0;
    while sent < bytes.len() {
        match junk.write(&bytes[sent..]) {
            Ok(n) => sent += n,
            Err(_) => {
                // Drain replies so the daemon is never blocked writing to us.
                let _ = std::io::Read::read(&mut junk, &mut sink);
            }
        }
    }
    drop(junk);
    // The daemon still serves: the first session answers, and so does a new one.
    assert_eq!(
        c.cmd(json!({"execute": "query-version", "id": "still"}))["id"],
        "still"
    );
    let mut fresh = Client::negotiated(&path);
    assert_eq!(
        fresh.cmd(json!({"execute": "query-version", "id": 1}))["id"],
        1
    );
}

#[test]
fn quit_answers_then_every_session_sees_shutdown_and_the_daemon_exits_cleanly() {
    let dir = TempDir::new("qmp-quit");
    let (mut d, path) = daemon(&dir);
    let mut watcher = Client::negotiated(&path);
    let mut c = Client::negotiated(&path);
    assert_eq!(
        c.cmd(json!({"execute": "quit", "id": "bye"})),
        json!({"return": {}, "id": "bye"})
    );
    let ev = watcher.read_raw();
    assert_eq!(ev["event"], "SHUTDOWN");
    assert_eq!(
        ev["data"],
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    assert!(ev["timestamp"]["seconds"].as_u64().unwrap() > 0);
    assert!(ev["timestamp"]["microseconds"].as_u64().unwrap() < 1_000_000);
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!path.exists(), "QMP socket removed");
}

#[test]
fn tcp_on_loopback_and_refused_elsewhere() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let _d = Daemon::start(
        Daemon::command(&["--qmp", &format!("tcp:127.0.0.1:{port},server=on,wait=off")]),
        1,
    );
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("\"QMP\""));
    (&s).write_all(b"{\"execute\":\"qmp_capabilities\"}")
        .unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "{\"return\":{}}\r\n");

    let out = std::process::Command::new(common::daemon::BINARY)
        .args(["--qmp", "tcp:192.0.2.1:4444"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--qmp"));
}

#[test]
fn qemu_qmp_python_client_works_unchanged() {
    let dir = TempDir::new("qmp-python");
    let (mut d, path) = daemon(&dir);
    if common::python::run_qmp_script("qmp_client.py", &path) {
        assert!(
            d.child.wait().unwrap().success(),
            "daemon exits 0 after quit"
        );
    }
}

/// Connects to a QMP socket another process is about to create.
fn connect_when_ready(path: &std::path::Path, child: &mut std::process::Child) -> Client {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if path.exists() {
            if let Ok(s) = UnixStream::connect(path) {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut c = Client {
                    writer: s.try_clone().unwrap(),
                    reader: BufReader::new(s),
                    events: Vec::new(),
                };
                c.read_raw();
                assert_eq!(
                    c.cmd(json!({"execute": "qmp_capabilities"})),
                    json!({"return": {}})
                );
                return c;
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "QEMU exited");
        assert!(std::time::Instant::now() < deadline, "no QMP socket");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The replies to `input` up to the answer to a marker command sent after it (whose own reply
/// differs between the two and is left out).
fn replies_to(c: &mut Client, input: &[u8]) -> Vec<Value> {
    c.send_bytes(input);
    c.send_bytes(b"{\"execute\":\"query-version\",\"id\":\"marker\"}");
    let mut replies = Vec::new();
    loop {
        let r = c.reply();
        if r["id"] == "marker" {
            return replies;
        }
        replies.push(r);
    }
}

#[test]
fn junk_bytes_set_link_and_filter_dump_get_the_answers_qemu_gives() {
    if !common::privileged_environment("QMP against QEMU") {
        return;
    }
    let dir = TempDir::new("qmp-vs-qemu");
    let path = dir.path("qmp.sock");
    let mut cmd = Daemon::command(&["--qmp", &format!("unix:{}", path.display())]);
    // Capture files may be created here (the sandbox's Landlock allows only named places).
    cmd.arg("--allow-path").arg(&dir.0);
    let _d = Daemon::start(cmd, 1);
    let mut ours = Client::negotiated(&path);
    let qemu_path = dir.path("qemu.qmp");
    let mut qemu = KillOnDrop(
        std::process::Command::new("qemu-system-x86_64")
            .args(["-machine", "none", "-nodefaults", "-display", "none"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qemu_path.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut theirs = connect_when_ready(&qemu_path, &mut qemu.0);

    let inputs: &[&[u8]] = &[
        b"\x00\x01\x02",
        b"\x00\x00\x00\x00",
        b"\x1f\x7f",
        b"\xff\xfe",
        b"\xc3\xa9 ",
        b"abc }",
        b"ab1 true @#, ]",
        b"\x7f",
        b"@ \t\x7f\xc3\n\x01",
        b"] : ,",
        b"{\"execute\":\"quit\"\x00}",
        b"{\"a\":\x01{\"b\":2}",
        b"{\"a\":1}}",
        b"[1,2] \"x\" 1.5e3 ",
    ];
    for input in inputs {
        let (a, b) = (replies_to(&mut ours, input), replies_to(&mut theirs, input));
        assert!(!b.is_empty(), "QEMU answered nothing to {input:?}");
        assert_eq!(a, b, "answers to {input:?}");
    }

    // set_link on a netdev no device (here: no port) uses is accepted and kept; an unknown
    // name is DeviceNotFound.
    for c in [&mut ours, &mut theirs] {
        assert_eq!(
            c.cmd(json!({"execute": "netdev_add", "arguments": {"type": "user", "id": "u9"}})),
            json!({"return": {}})
        );
    }
    for args in [
        json!({"name": "u9", "up": false}),
        json!({"name": "u9", "up": true}),
        json!({"name": "nope", "up": true}),
    ] {
        let cmd = json!({"execute": "set_link", "arguments": args});
        assert_eq!(ours.cmd(cmd.clone()), theirs.cmd(cmd.clone()), "{cmd}");
    }

    // object-add/object-del of filter-dump (a capture of a netdev's frames) and their errors.
    for c in [&mut ours, &mut theirs] {
        assert_eq!(
            c.cmd(json!({"execute": "netdev_add", "arguments": {"type": "user", "id": "net0"}})),
            json!({"return": {}})
        );
    }
    let file = |name: &str| dir.path(name).display().to_string();
    let dump = |extra: Value| {
        let mut args = json!({"qom-type": "filter-dump", "id": "f0", "netdev": "net0",
                              "file": file("qemu-or-ours.pcap")});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                args.as_object_mut().unwrap().remove(k);
            } else {
                args[k] = v.clone();
            }
        }
        json!({"execute": "object-add", "arguments": args})
    };
    for cmd in [
        dump(json!({"netdev": null})),
        dump(json!({"netdev": "nope"})),
        dump(json!({"file": null})),
        dump(json!({"file": "/nonexistent/x.pcap"})),
        dump(json!({"maxlen": 0})),
        dump(json!({"maxlen": -1})),
        dump(json!({"queue": "x"})),
        dump(json!({"status": "x"})),
        dump(json!({"position": "x"})),
        dump(json!({"insert": "x"})),
        dump(json!({"id": null})),
        dump(json!({"id": "9a"})),
        dump(json!({"bogus": 1})),
        json!({"execute": "object-add", "arguments": {"qom-type": "nope", "id": "x"}}),
        dump(json!({"queue": "tx", "maxlen": 100, "position": "head", "insert": "before"})),
        dump(json!({})),
        json!({"execute": "object-del", "arguments": {"id": "f0"}}),
        json!({"execute": "object-del", "arguments": {"id": "f0"}}),
        json!({"execute": "object-del", "arguments": {}}),
    ] {
        // Each side writes its own file.
        let theirs_cmd =
            serde_json::from_str::<Value>(&cmd.to_string().replace("qemu-or-ours", "qemu"))
                .unwrap();
        let ours_cmd =
            serde_json::from_str::<Value>(&cmd.to_string().replace("qemu-or-ours", "ours"))
                .unwrap();
        assert_eq!(ours.cmd(ours_cmd), theirs.cmd(theirs_cmd), "{cmd}");
    }

    // The netdev and descriptor commands' errors.
    for cmd in [
        json!({"execute": "netdev_add", "arguments": {"type": "user", "id": "net0"}}),
        json!({"execute": "netdev_add", "arguments": {"type": "user"}}),
        json!({"execute": "netdev_add", "arguments": {"type": "nope", "id": "x"}}),
        json!({"execute": "netdev_add", "arguments": {"type": "user", "id": "9x"}}),
        json!({"execute": "netdev_add", "arguments": {"type": "user", "id": "u8", "bogus": 1}}),
        json!({"execute": "netdev_add", "arguments": {"type": "socket", "id": "s1"}}),
        json!({"execute": "netdev_add",
               "arguments": {"type": "socket", "id": "s2", "udp": "127.0.0.1:7"}}),
        json!({"execute": "netdev_del", "arguments": {"id": "nope"}}),
        json!({"execute": "netdev_del", "arguments": {}}),
        json!({"execute": "netdev_del", "arguments": {"id": "u9"}}),
        json!({"execute": "getfd", "arguments": {"fdname": "f"}}),
        json!({"execute": "closefd", "arguments": {"fdname": "nope"}}),
        json!({"execute": "set_link", "arguments": {"name": "net0"}}),
        json!({"execute": "set_link", "arguments": {"name": "net0", "up": "yes"}}),
        json!({"execute": "no-such-command"}),
    ] {
        assert_eq!(ours.cmd(cmd.clone()), theirs.cmd(cmd.clone()), "{cmd}");
    }

    let _ = theirs.cmd(json!({"execute": "quit"}));
    assert!(qemu.0.wait().unwrap().success());
}

/// A child process killed (and reaped) when the test ends, failed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
