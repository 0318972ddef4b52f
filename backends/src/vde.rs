//! `-netdev vde` (QEMU's `NetdevVdeOptions`: `sock`, `port`, `group`, `mode`): a port of a VDE
//! switch (`vde_switch`, Debian's `vde2`).
//!
//! The switch's plug protocol is implemented here rather than through libvdeplug: it is small
//! (one request on the switch's control socket, a datagram socket per port), a C library would
//! be one more runtime dependency and one more piece of code running in the sandbox, and the
//! frames then use the daemon's batched datagram path. The steps are libvdeplug's for a classic
//! switch: connect to `SOCK/ctl`; bind a datagram socket `SOCK/.PID-N` with `mode` (and
//! `group`); send the request (magic `0xfeedface`, version 3, `REQ_NEW_CONTROL` with the port
//! in bits 8 and up, the data socket's address, a description); the switch answers with its
//! data socket's address, which the datagram socket connects to. The control connection stays
//! open as long as the port: closing it gives the port back.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::dgram::{DgramBackend, DgramOptions};
use crate::fd_source::OneFd;
use crate::options::{OptionError, Opts};
use crate::socket_address::SocketAddress;
use crate::{Backend, BackendQueue, Batching, Capabilities, Error, LinkWatch};

const SWITCH_MAGIC: u32 = 0xfeed_face;
const VERSION: u32 = 3;
const REQ_NEW_CONTROL: u32 = 0;
/// `struct sockaddr_un`: the family, then 108 bytes of path.
const SOCKADDR_UN_LEN: usize = 2 + 108;
/// Where libvdeplug looks for a switch when none is named.
const DEFAULT_SWITCHES: &[&str] = &["/var/run/vde.ctl", "/tmp/vde.ctl"];
const DESCRIPTION: &str = "vhost-user-netd";

/// The vde netdev's options as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VdeOptions {
    pub sock: Option<String>,
    pub port: Option<u16>,
    pub group: Option<String>,
    pub mode: Option<u16>,
}

impl VdeOptions {
    pub fn from_opts(opts: &mut Opts) -> Result<Self, OptionError> {
        Ok(VdeOptions {
            sock: opts.take_str("sock")?,
            port: take_u16(opts, "port")?,
            group: opts.take_str("group")?,
            mode: take_u16(opts, "mode")?,
        })
    }

    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(s) = &self.sock {
            m.insert("sock".into(), Value::String(s.clone()));
        }
        if let Some(p) = self.port {
            m.insert("port".into(), p.into());
        }
        if let Some(g) = &self.group {
            m.insert("group".into(), Value::String(g.clone()));
        }
        if let Some(mode) = self.mode {
            m.insert("mode".into(), mode.into());
        }
        m
    }
}

/// A `uint16` as QEMU reads one: on the command line in C's notation (`0600` is octal, `0x`
/// hexadecimal), in JSON a number.
fn take_u16(opts: &mut Opts, key: &str) -> Result<Option<u16>, OptionError> {
    let value = if opts.source() == crate::OptionSource::KeyVal {
        match opts.take_str(key)? {
            None => return Ok(None),
            Some(text) => {
                let (digits, radix) = match text.strip_prefix("0x").or(text.strip_prefix("0X")) {
                    Some(hex) => (hex, 16),
                    None if text.len() > 1 && text.starts_with('0') => (&text[1..], 8),
                    None => (text.as_str(), 10),
                };
                u64::from_str_radix(digits, radix).map_err(|_| {
                    OptionError::Invalid(format!("Parameter '{key}' expects a number"))
                })?
            }
        }
    } else {
        match opts.take_u64(key)? {
            None => return Ok(None),
            Some(v) => v,
        }
    };
    u16::try_from(value)
        .map(Some)
        .map_err(|_| OptionError::Invalid(format!("Parameter '{key}' expects uint16_t")))
}

/// A port of a VDE switch: the datagram path to it, and the control connection that holds the
/// port.
#[derive(Debug)]
pub struct VdeBackend {
    data: DgramBackend,
    _control: UnixStream,
    description: String,
}

impl VdeBackend {
    /// Plugs into the switch; QEMU's error text if that fails.
    pub fn open(options: &VdeOptions, batching: Batching) -> Result<Self, Error> {
        let (control, data, switch) = plug(options)
            .map_err(|e| Error::Option(OptionError::Invalid(format!("Could not open vde: {e}"))))?;
        let fd = OwnedFd::from(data);
        let dgram = DgramOptions {
            local: Some(SocketAddress::Fd("vde".into())),
            remote: None,
        };
        let data = DgramBackend::open(&dgram, &mut OneFd::new(fd), batching)?;
        let description = format!(
            "vde sock={} port={}",
            switch.display(),
            options.port.unwrap_or(0)
        );
        Ok(VdeBackend {
            data,
            _control: control,
            description,
        })
    }
}

/// libvdeplug's steps for a classic switch; returns the control connection, the connected data
/// socket and the switch's directory.
fn plug(options: &VdeOptions) -> std::io::Result<(UnixStream, UnixDatagram, PathBuf)> {
    let candidates: Vec<PathBuf> = match &options.sock {
        Some(s) => vec![std::fs::canonicalize(s)?],
        None => DEFAULT_SWITCHES.iter().map(PathBuf::from).collect(),
    };
    let mut last = std::io::Error::from(std::io::ErrorKind::NotFound);
    let (mut control, switch) = candidates
        .iter()
        .find_map(|dir| match UnixStream::connect(dir.join("ctl")) {
            Ok(c) => Some((c, dir.clone())),
            Err(e) => {
                last = e;
                None
            }
        })
        .ok_or(last)?;
    let (data, path) = bind_data_socket(&switch)?;
    let result = (|| {
        let mode = u32::from(options.mode.unwrap_or(0o700));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        if let Some(group) = &options.group {
            let gid = group_id(group)?;
            std::os::unix::fs::chown(&path, None, Some(gid))?;
        }
        control.write_all(&request(options.port.unwrap_or(0), &path)?)?;
        let mut reply = [0u8; SOCKADDR_UN_LEN];
        let n = control.read(&mut reply)?;
        let switch_side = reply_path(&reply[..n])?;
        data.connect(&switch_side)?;
        data.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(())
    })();
    // The switch holds the connection now (or never will): the name is not needed.
    let _ = std::fs::remove_file(&path);
    result.map(|()| (control, data, switch))
}

/// A datagram socket bound in the switch's directory as `.PID-N` (the first free `N`).
fn bind_data_socket(dir: &Path) -> std::io::Result<(UnixDatagram, PathBuf)> {
    let pid = std::process::id();
    for n in 0..1000u32 {
        let path = dir.join(format!(".{pid:05}-{n:05}"));
        match UnixDatagram::bind(&path) {
            Ok(s) => return Ok((s, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::from(std::io::ErrorKind::AddrInUse))
}

/// The plug request: magic, version, type (the port in bits 8 and up), the data socket's
/// `sockaddr_un`, the description (no NUL).
fn request(port: u16, data: &Path) -> std::io::Result<Vec<u8>> {
    let mut r = Vec::with_capacity(12 + SOCKADDR_UN_LEN + DESCRIPTION.len());
    r.extend_from_slice(&SWITCH_MAGIC.to_ne_bytes());
    r.extend_from_slice(&VERSION.to_ne_bytes());
    r.extend_from_slice(&(REQ_NEW_CONTROL + (u32::from(port) << 8)).to_ne_bytes());
    r.extend_from_slice(&sockaddr_un(data)?);
    r.extend_from_slice(DESCRIPTION.as_bytes());
    Ok(r)
}

fn sockaddr_un(path: &Path) -> std::io::Result<[u8; SOCKADDR_UN_LEN]> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= SOCKADDR_UN_LEN - 2 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    let mut a = [0u8; SOCKADDR_UN_LEN];
    a[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    a[2..2 + bytes.len()].copy_from_slice(bytes);
    Ok(a)
}

/// The switch's data socket from its answer (a `sockaddr_un`).
fn reply_path(reply: &[u8]) -> std::io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "bad answer from the switch",
        )
    };
    if reply.len() < 3 || u16::from_ne_bytes([reply[0], reply[1]]) != libc::AF_UNIX as u16 {
        return Err(bad());
    }
    let path = &reply[2..];
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    if end == 0 {
        return Err(bad());
    }
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(&path[..end])))
}

/// A group's id from its name or number.
fn group_id(group: &str) -> std::io::Result<u32> {
    group
        .parse()
        .ok()
        .or_else(|| crate::sys::group_id(group))
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no group named '{group}'"),
            )
        })
}

impl Backend for VdeBackend {
    fn capabilities(&self) -> Capabilities {
        self.data.capabilities()
    }

    fn queue(&self, index: u16) -> Result<Box<dyn BackendQueue>, Error> {
        self.data.queue(index)
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn shutdown(&self) {
        self.data.shutdown();
    }

    fn carrier(&self) -> bool {
        self.data.carrier()
    }

    fn watch_link(&self, watch: LinkWatch) {
        self.data.watch_link(watch);
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.data.counters()
    }
}

/// Opens a vde netdev as a shared backend.
pub fn open(options: &VdeOptions, batching: Batching) -> Result<Arc<dyn Backend>, Error> {
    Ok(Arc::new(VdeBackend::open(options, batching)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_and_answer_have_libvdeplugs_layout() {
        let r = request(5, Path::new("/tmp/sw/.00042-00000")).unwrap();
        assert_eq!(r.len(), 12 + SOCKADDR_UN_LEN + DESCRIPTION.len());
        assert_eq!(&r[..4], &0xfeed_faceu32.to_ne_bytes());
        assert_eq!(&r[4..8], &3u32.to_ne_bytes());
        assert_eq!(&r[8..12], &(5u32 << 8).to_ne_bytes());
        assert_eq!(&r[12..14], &(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(&r[14..34], b"/tmp/sw/.00042-00000");
        assert_eq!(r[34], 0);
        assert!(r.ends_with(DESCRIPTION.as_bytes()));
        let answer = sockaddr_un(Path::new("/tmp/sw/.05")).unwrap();
        assert_eq!(reply_path(&answer).unwrap(), PathBuf::from("/tmp/sw/.05"));
        assert!(reply_path(&[0; 4]).is_err());
        assert!(reply_path(&[]).is_err());
    }

    #[test]
    fn options_round_trip_with_qemus_types() {
        let mut opts = Opts::parse_keyval("sock=/tmp/sw,port=3,group=kvm,mode=0600").unwrap();
        let o = VdeOptions::from_opts(&mut opts).unwrap();
        assert_eq!((o.port, o.mode), (Some(3), Some(0o600)));
        assert_eq!(o.to_json()["sock"], "/tmp/sw");
        let mut opts = Opts::parse_keyval("port=70000").unwrap();
        assert_eq!(
            VdeOptions::from_opts(&mut opts).unwrap_err().to_string(),
            "Parameter 'port' expects uint16_t"
        );
    }
}
