//! The read-only TFTP server (`tftp=ROOT`): RFC 1350 read requests with the `blksize` and
//! `tsize` options (RFC 2348/2349), served from the gateway address, port 69. Retransmission is
//! driven by the client: a repeated ACK gets the next block again. Names that leave the root
//! (`..`, absolute paths, symlinks pointing out) are refused; write requests are refused.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

pub const PORT: u16 = 69;
const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;
const DEFAULT_BLOCK: usize = 512;
/// Largest block that fits the guest MTU (1500 - IP - UDP - TFTP header).
const MAX_BLOCK: usize = 1500 - 20 - 8 - 4;
const MAX_SESSIONS: usize = 16;
const IDLE: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Session {
    file: File,
    block_size: usize,
    /// The last block sent (0: the option acknowledgement).
    block: u16,
    /// Whether the last block sent was the final, short one.
    last: bool,
    touched: Instant,
}

/// The sessions, one per guest endpoint.
#[derive(Debug)]
pub struct TftpServer {
    root: PathBuf,
    sessions: HashMap<SocketAddr, Session>,
    /// The reply being built, reused from one datagram to the next.
    reply: Vec<u8>,
}

impl TftpServer {
    pub fn new(root: PathBuf) -> TftpServer {
        TftpServer {
            root,
            sessions: HashMap::new(),
            reply: Vec::with_capacity(4 + MAX_BLOCK),
        }
    }

    /// Handles one datagram from `guest`; returns the reply (empty: none).
    pub fn handle(&mut self, guest: SocketAddr, request: &[u8]) -> &[u8] {
        let mut reply = std::mem::take(&mut self.reply);
        self.respond(guest, request, &mut reply);
        self.reply = reply;
        &self.reply
    }

    fn respond(&mut self, guest: SocketAddr, request: &[u8], reply: &mut Vec<u8>) {
        reply.clear();
        if request.len() < 4 {
            return;
        }
        let opcode = u16::from_be_bytes([request[0], request[1]]);
        match opcode {
            RRQ => self.read_request(guest, &request[2..], reply),
            WRQ => error(reply, 2, "read-only server"),
            ACK => {
                let acked = u16::from_be_bytes([request[2], request[3]]);
                let Some(session) = self.sessions.get_mut(&guest) else {
                    return;
                };
                session.touched = Instant::now();
                if acked == session.block {
                    if session.last {
                        self.sessions.remove(&guest);
                        return;
                    }
                    session.block = session.block.wrapping_add(1);
                }
                // A repeated ACK of the block before: send the current one again.
                if acked == session.block.wrapping_sub(1) || acked == session.block {
                    send_block(session, reply);
                }
            }
            ERROR => {
                self.sessions.remove(&guest);
            }
            _ => error(reply, 4, "illegal operation"),
        }
    }

    fn read_request(&mut self, guest: SocketAddr, body: &[u8], reply: &mut Vec<u8>) {
        let mut fields = body.split(|b| *b == 0);
        let (Some(name), Some(_mode)) = (fields.next(), fields.next()) else {
            return error(reply, 4, "malformed request");
        };
        let Ok(name) = std::str::from_utf8(name) else {
            return error(reply, 1, "file not found");
        };
        let mut block_size = DEFAULT_BLOCK;
        let mut want_tsize = false;
        let mut options = Vec::new();
        while let (Some(key), Some(value)) = (fields.next(), fields.next()) {
            let key = String::from_utf8_lossy(key).to_ascii_lowercase();
            let value = String::from_utf8_lossy(value).to_string();
            match key.as_str() {
                "blksize" => {
                    if let Ok(size) = value.parse::<usize>() {
                        block_size = size.clamp(8, MAX_BLOCK);
                        options.push(("blksize", block_size.to_string()));
                    }
                }
                "tsize" => want_tsize = true,
                _ => {}
            }
        }
        let file = match self.open(name) {
            Ok(f) => f,
            Err((code, text)) => return error(reply, code, text),
        };
        if want_tsize {
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            options.push(("tsize", size.to_string()));
        }
        if self.sessions.len() >= MAX_SESSIONS && !self.sessions.contains_key(&guest) {
            self.expire();
            if self.sessions.len() >= MAX_SESSIONS {
                return error(reply, 3, "too many transfers");
            }
        }
        let mut session = Session {
            file,
            block_size,
            block: 0,
            last: false,
            touched: Instant::now(),
        };
        if options.is_empty() {
            session.block = 1;
            send_block(&mut session, reply);
        } else {
            reply.extend_from_slice(&OACK.to_be_bytes());
            for (k, v) in options {
                reply.extend_from_slice(k.as_bytes());
                reply.push(0);
                reply.extend_from_slice(v.as_bytes());
                reply.push(0);
            }
        }
        self.sessions.insert(guest, session);
    }

    /// Opens `name` under the root, refusing anything that would leave it.
    fn open(&self, name: &str) -> Result<File, (u16, &'static str)> {
        let relative = Path::new(name.trim_start_matches('/'));
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err((2, "access violation"));
        }
        let root = self
            .root
            .canonicalize()
            .map_err(|_| (1, "file not found"))?;
        let path = root
            .join(relative)
            .canonicalize()
            .map_err(|_| (1, "file not found"))?;
        if !path.starts_with(&root) {
            return Err((2, "access violation"));
        }
        let file = File::open(&path).map_err(|_| (1, "file not found"))?;
        if !file.metadata().map(|m| m.is_file()).unwrap_or(false) {
            return Err((1, "file not found"));
        }
        Ok(file)
    }

    /// Drops sessions the guest abandoned.
    pub fn expire(&mut self) {
        self.sessions.retain(|_, s| s.touched.elapsed() < IDLE);
    }
}

/// Writes DATA for the session's current block (read at its offset, so resends are exact).
fn send_block(session: &mut Session, reply: &mut Vec<u8>) {
    let offset = (u64::from(session.block) - 1) * session.block_size as u64;
    reply.clear();
    reply.extend_from_slice(&DATA.to_be_bytes());
    reply.extend_from_slice(&session.block.to_be_bytes());
    reply.resize(4 + session.block_size, 0);
    let mut filled = 0;
    if session.file.seek(SeekFrom::Start(offset)).is_ok() {
        while filled < session.block_size {
            match session.file.read(&mut reply[4 + filled..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => filled += n,
            }
        }
    }
    reply.truncate(4 + filled);
    session.last = filled < session.block_size;
}

fn error(reply: &mut Vec<u8>, code: u16, text: &str) {
    reply.clear();
    reply.extend_from_slice(&ERROR.to_be_bytes());
    reply.extend_from_slice(&code.to_be_bytes());
    reply.extend_from_slice(text.as_bytes());
    reply.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrq(name: &str, options: &[(&str, &str)]) -> Vec<u8> {
        let mut m = RRQ.to_be_bytes().to_vec();
        for part in [name, "octet"] {
            m.extend_from_slice(part.as_bytes());
            m.push(0);
        }
        for (k, v) in options {
            m.extend_from_slice(k.as_bytes());
            m.push(0);
            m.extend_from_slice(v.as_bytes());
            m.push(0);
        }
        m
    }

    fn ack(block: u16) -> Vec<u8> {
        let mut m = ACK.to_be_bytes().to_vec();
        m.extend_from_slice(&block.to_be_bytes());
        m
    }

    /// A root of its own per test: tests run in parallel and each removes its directory.
    fn setup() -> (PathBuf, TftpServer) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vunetd-tftp-{}-{n}", std::process::id()));
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("boot.img"), vec![7u8; 1300]).unwrap();
        std::fs::write(dir.join("secret"), b"no").unwrap();
        let _ = std::os::unix::fs::symlink(dir.join("secret"), root.join("escape"));
        (dir, TftpServer::new(root))
    }

    #[test]
    fn serves_a_file_in_blocks_and_repeats_on_duplicate_ack() {
        let (dir, mut s) = setup();
        let guest: SocketAddr = "10.0.2.15:3000".parse().unwrap();
        let reply = s.handle(guest, &rrq("boot.img", &[])).to_vec();
        assert_eq!(&reply[..4], &[0, 3, 0, 1]);
        assert_eq!(reply.len(), 4 + 512);
        let reply = s.handle(guest, &ack(1)).to_vec();
        assert_eq!(&reply[..4], &[0, 3, 0, 2]);
        // The client lost block 2 and repeats its ACK of 1: block 2 again.
        let reply = s.handle(guest, &ack(1)).to_vec();
        assert_eq!(&reply[..4], &[0, 3, 0, 2]);
        let reply = s.handle(guest, &ack(2)).to_vec();
        assert_eq!(&reply[..4], &[0, 3, 0, 3]);
        assert_eq!(reply.len(), 4 + 1300 - 1024, "the short last block");
        let reply = s.handle(guest, &ack(3)).to_vec();
        assert!(reply.is_empty());
        assert!(s.sessions.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn options_are_acknowledged() {
        let (dir, mut s) = setup();
        let guest: SocketAddr = "10.0.2.15:3001".parse().unwrap();
        let reply = s
            .handle(
                guest,
                &rrq("boot.img", &[("blksize", "1468"), ("tsize", "0")]),
            )
            .to_vec();
        assert_eq!(&reply[..2], &[0, 6]);
        assert_eq!(&reply[2..], b"blksize\x001468\x00tsize\x001300\x00");
        let reply = s.handle(guest, &ack(0)).to_vec();
        assert_eq!(&reply[..4], &[0, 3, 0, 1]);
        assert_eq!(reply.len(), 4 + 1300);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn leaving_the_root_and_writing_are_refused() {
        let (dir, mut s) = setup();
        let guest: SocketAddr = "10.0.2.15:3002".parse().unwrap();
        for name in ["../secret", "a/../../secret", "escape", "missing"] {
            let reply = s.handle(guest, &rrq(name, &[])).to_vec();
            assert_eq!(&reply[..2], &[0, 5], "{name}");
        }
        let reply = s.handle(guest, &rrq("/boot.img", &[])).to_vec();
        assert_eq!(
            &reply[..2],
            &[0, 3],
            "a leading slash is relative to the root"
        );
        let mut wrq = rrq("x", &[]);
        wrq[1] = 2;
        let reply = s.handle(guest, &wrq).to_vec();
        assert_eq!(&reply[..4], &[0, 5, 0, 2]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
