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
        use std::os::fd::AsRawFd;
        let msg = json!({ "execute": command, "arguments": arguments }).to_string();
        let mut iov = libc::iovec {
            iov_base: msg.as_ptr() as *mut libc::c_void,
            iov_len: msg.len(),
        };
        let mut control = [0u64; 4];
        // SAFETY: msghdr is plain data.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a constant computation.
        hdr.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
        // SAFETY: the control buffer holds one cmsg with one int; the pointers are into it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd.as_raw_fd());
        }
        // SAFETY: hdr points at live buffers for the duration of the call.
        let sent = unsafe { libc::sendmsg(self.writer.as_raw_fd(), &hdr, 0) };
        assert_eq!(
            sent as usize,
            msg.len(),
            "sendmsg: {}",
            std::io::Error::last_os_error()
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
