//! A minimal QMP client for driving QEMU in tests (one command at a time, events collected).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// A negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects to a QMP socket a starting QEMU has yet to create (it does so after its
    /// netdevs, with no event to wait for: the path is looked at every 20 ms, for up to
    /// `timeout`).
    pub fn connect_when_created(path: &Path, timeout: Duration) -> Self {
        let deadline = std::time::Instant::now() + timeout;
        while !path.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self::connect(path)
    }

    /// Connects (QEMU creates the socket before it starts the guest) and negotiates.
    pub fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path).expect("connect QMP");
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let mut q = Qmp {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
            events: Vec::new(),
        };
        let greeting = q.read();
        assert!(greeting.get("QMP").is_some(), "greeting: {greeting}");
        q.execute("qmp_capabilities", json!({}))
            .expect("qmp_capabilities");
        q
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read QMP");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP sent {line:?}: {e}"))
    }

    /// Runs a command; returns its `return` or its `error`.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, Value> {
        let msg = json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{msg}").expect("write QMP");
        self.reply()
    }

    /// Runs a command with a descriptor attached (SCM_RIGHTS), as for `getfd`.
    pub fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Value,
        fd: &impl std::os::fd::AsRawFd,
    ) -> Result<Value, Value> {
        let msg = json!({ "execute": command, "arguments": arguments }).to_string();
        super::raw_frontend::send_with_fds(
            std::os::fd::AsRawFd::as_raw_fd(&self.writer),
            msg.as_bytes(),
            &[fd.as_raw_fd()],
        );
        self.reply()
    }

    /// The next reply (`return` or `error`); events on the way are kept.
    fn reply(&mut self) -> Result<Value, Value> {
        loop {
            let v = self.read();
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(e.clone());
            }
            self.events.push(v);
        }
    }

    /// `query-netdev`'s entry for netdev `id`.
    pub fn netdev(&mut self, id: &str) -> Value {
        let netdevs = self
            .execute("query-netdev", json!({}))
            .expect("query-netdev");
        netdevs
            .as_array()
            .and_then(|list| list.iter().find(|n| n["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("no netdev {id} in {netdevs}"))
    }

    /// `query-ports`' `running` member of each port, sorted by port id.
    pub fn ports_running(&mut self) -> Vec<(String, bool)> {
        let ports = self.execute("query-ports", json!({})).expect("query-ports");
        let mut list: Vec<(String, bool)> = ports
            .as_array()
            .expect("a list")
            .iter()
            .map(|p| {
                let id = p["id"].as_str().expect("id").to_string();
                (id, p["running"].as_bool().expect("running"))
            })
            .collect();
        list.sort();
        list
    }

    /// Waits for an event named `name` whose data satisfies `pred`.
    pub fn wait_event(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(pos) = self
            .events
            .iter()
            .position(|e| e["event"] == name && pred(&e["data"]))
        {
            return self.events.remove(pos);
        }
        loop {
            let v = self.read();
            if v["event"] == name && pred(&v["data"]) {
                return v;
            }
            self.events.push(v);
        }
    }
}
