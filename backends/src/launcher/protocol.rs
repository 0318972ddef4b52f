//! The messages between the daemon and its launcher process: one request or reply per
//! `SOCK_SEQPACKET` message, a tag byte then the fields (strings as a little-endian `u16` length
//! and UTF-8 bytes, pids as little-endian `u32`). A descriptor travels beside a message with
//! SCM_RIGHTS. The launcher decodes what a possibly compromised daemon sends, so decoding
//! checks every length and refuses trailing bytes (fuzz target `launcher_request`).

use std::fmt;

/// Largest message either side sends or accepts.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// What the daemon asks the launcher to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Run a tap `script=`/`downscript=` with the interface name and wait for it.
    RunScript { script: String, ifname: String },
    /// Run a bridge helper and return the tap it opens (with the reply).
    OpenWithHelper { helper: String, bridge: String },
    /// Start a `guestfwd` command on one end of a socket pair; the other end comes back.
    SpawnCommand { command: String },
    /// Whether a command started with `SpawnCommand` has ended.
    HasExited { pid: u32 },
    /// End a command started with `SpawnCommand` (SIGKILL, then reaped).
    Kill { pid: u32 },
}

/// The launcher's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done (a descriptor may come with it: the helper's tap).
    Done,
    /// The request failed or was refused; the text says why.
    Failed(String),
    /// A command was started; its end of the socket pair comes with the reply.
    Spawned { pid: u32 },
    /// Answer to `HasExited`.
    Exited(bool),
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(&'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed launcher message: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

const RUN_SCRIPT: u8 = 1;
const OPEN_WITH_HELPER: u8 = 2;
const SPAWN_COMMAND: u8 = 3;
const HAS_EXITED: u8 = 4;
const KILL: u8 = 5;

const DONE: u8 = 0x81;
const FAILED: u8 = 0x82;
const SPAWNED: u8 = 0x83;
const EXITED: u8 = 0x84;

struct Writer(Vec<u8>);

impl Writer {
    fn new(tag: u8) -> Self {
        Writer(vec![tag])
    }

    fn str(mut self, s: &str) -> Self {
        // Longer strings are cut at a character boundary (no option is near this long).
        let mut end = s.len().min(usize::from(u16::MAX));
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.0.extend_from_slice(&(end as u16).to_le_bytes());
        self.0.extend_from_slice(&s.as_bytes()[..end]);
        self
    }

    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn str(&mut self) -> Result<String, DecodeError> {
        let len = self.take(2)?;
        let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
        let bytes = self.take(len)?;
        let s = std::str::from_utf8(bytes).map_err(|_| DecodeError("a string is not UTF-8"))?;
        if s.contains('\0') {
            return Err(DecodeError("a string holds a NUL byte"));
        }
        Ok(s.to_string())
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn end<T>(self, value: T) -> Result<T, DecodeError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(DecodeError("trailing bytes"))
        }
    }
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::RunScript { script, ifname } => {
                Writer::new(RUN_SCRIPT).str(script).str(ifname)
            }
            Request::OpenWithHelper { helper, bridge } => {
                Writer::new(OPEN_WITH_HELPER).str(helper).str(bridge)
            }
            Request::SpawnCommand { command } => Writer::new(SPAWN_COMMAND).str(command),
            Request::HasExited { pid } => Writer::new(HAS_EXITED).u32(*pid),
            Request::Kill { pid } => Writer::new(KILL).u32(*pid),
        }
        .0
    }

    pub fn decode(bytes: &[u8]) -> Result<Request, DecodeError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(DecodeError("too long"));
        }
        let mut r = Reader(bytes);
        let request = match r.byte()? {
            RUN_SCRIPT => Request::RunScript {
                script: r.str()?,
                ifname: r.str()?,
            },
            OPEN_WITH_HELPER => Request::OpenWithHelper {
                helper: r.str()?,
                bridge: r.str()?,
            },
            SPAWN_COMMAND => Request::SpawnCommand { command: r.str()? },
            HAS_EXITED => Request::HasExited { pid: r.u32()? },
            KILL => Request::Kill { pid: r.u32()? },
            _ => return Err(DecodeError("unknown request")),
        };
        r.end(request)
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Done => Writer::new(DONE),
            Reply::Failed(why) => Writer::new(FAILED).str(why),
            Reply::Spawned { pid } => Writer::new(SPAWNED).u32(*pid),
            Reply::Exited(yes) => Writer::new(EXITED).u32(u32::from(*yes)),
        }
        .0
    }

    pub fn decode(bytes: &[u8]) -> Result<Reply, DecodeError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(DecodeError("too long"));
        }
        let mut r = Reader(bytes);
        let reply = match r.byte()? {
            DONE => Reply::Done,
            FAILED => Reply::Failed(r.str()?),
            SPAWNED => Reply::Spawned { pid: r.u32()? },
            EXITED => Reply::Exited(r.u32()? != 0),
            _ => return Err(DecodeError("unknown reply")),
        };
        r.end(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let requests = [
            Request::RunScript {
                script: "/etc/qemu-ifup".into(),
                ifname: "tap0".into(),
            },
            Request::OpenWithHelper {
                helper: "/usr/lib/qemu/qemu-bridge-helper".into(),
                bridge: "br0".into(),
            },
            Request::SpawnCommand {
                command: "echo é".into(),
            },
            Request::HasExited { pid: 42 },
            Request::Kill { pid: u32::MAX },
        ];
        for r in requests {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        let replies = [
            Reply::Done,
            Reply::Failed("no".into()),
            Reply::Spawned { pid: 7 },
            Reply::Exited(true),
            Reply::Exited(false),
        ];
        for r in replies {
            assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        let good = Request::RunScript {
            script: "/s".into(),
            ifname: "t".into(),
        }
        .encode();
        for cut in 0..good.len() {
            assert!(Request::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(
            Request::decode(&longer).unwrap_err(),
            DecodeError("trailing bytes")
        );
        assert!(Request::decode(&[SPAWN_COMMAND, 2, 0, 0xff, 0xfe]).is_err());
        assert!(Request::decode(&[SPAWN_COMMAND, 1, 0, 0]).is_err());
        assert!(Request::decode(&[DONE]).is_err());
        assert!(Reply::decode(&[RUN_SCRIPT]).is_err());
        assert!(Request::decode(&vec![SPAWN_COMMAND; MAX_MESSAGE + 1]).is_err());
    }
}
