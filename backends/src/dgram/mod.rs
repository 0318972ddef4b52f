//! The `dgram` netdev: one Ethernet frame per UDP or unix datagram, unicast or IPv4 multicast,
//! wire-compatible with QEMU's `-netdev dgram`.

pub mod options;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::Arc;

pub use options::{DgramMode, DgramOptions, MulticastLocal};

use crate::batching::Batching;
use crate::datagram::{Bare, DatagramCounters, DatagramQueue, Destination};
use crate::fd_source::FdSource;
use crate::socket_address::SocketAddress;
use crate::{sys, Backend, BackendQueue, Capabilities, Error, OptionError};

/// A `dgram` netdev: its socket and where frames go.
#[derive(Debug)]
pub struct DgramBackend {
    fd: Arc<OwnedFd>,
    dest: Option<Destination>,
    counters: Arc<DatagramCounters>,
    batching: Batching,
    description: String,
    /// A bound unix socket file, removed at shutdown.
    socket_file: Option<PathBuf>,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::io(what, e)
}

impl DgramBackend {
    pub fn open(
        options: &DgramOptions,
        fds: &mut dyn FdSource,
        batching: Batching,
    ) -> Result<Self, Error> {
        let mut socket_file = None;
        let (fd, dest, description) = match options.mode()? {
            DgramMode::Multicast { group, interface } => {
                let dest = Destination::inet(group);
                let fd = match &interface {
                    Some(MulticastLocal::Fd(name)) => fds.take_fd(name)?,
                    _ => {
                        let ifaddr = match interface {
                            Some(MulticastLocal::Interface(ip)) => Some(ip),
                            _ => None,
                        };
                        multicast_socket(group, ifaddr)?
                    }
                };
                (fd, Some(dest), format!("dgram mcast={group}"))
            }
            DgramMode::Unicast { local, remote } => match (&local, &remote) {
                (SocketAddress::Inet(l), SocketAddress::Inet(r)) => {
                    let local = first_v4(l)?;
                    let remote = first_v4(r)?;
                    let fd = sys::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)
                        .map_err(io_err("dgram socket"))?;
                    sys::setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
                        .map_err(io_err("can't set socket option SO_REUSEADDR"))?;
                    sys::bind(fd.as_raw_fd(), &sys::sockaddr_from(local))
                        .map_err(io_err(format!("can't bind ip={} to socket", local.ip())))?;
                    (
                        fd,
                        Some(Destination::inet(remote)),
                        format!("dgram udp={local}:{remote}"),
                    )
                }
                (SocketAddress::Unix(l), SocketAddress::Unix(r)) => {
                    if std::fs::symlink_metadata(&l.path).is_ok_and(|m| m.file_type().is_socket()) {
                        let _ = std::fs::remove_file(&l.path);
                    }
                    let fd = sys::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0)
                        .map_err(io_err("dgram socket"))?;
                    let addr = sys::sockaddr_unix(&l.path).map_err(io_err("local.path"))?;
                    sys::bind(fd.as_raw_fd(), &addr)
                        .map_err(io_err(format!("can't bind {}", l.path)))?;
                    socket_file = Some(PathBuf::from(&l.path));
                    let dest = Destination::unix(&r.path).map_err(io_err("remote.path"))?;
                    (fd, Some(dest), format!("dgram unix={}:{}", l.path, r.path))
                }
                _ => unreachable!("options check the types match"),
            },
            DgramMode::Fd(name) => {
                let fd = fds.take_fd(&name)?;
                (fd, None, format!("dgram fd={name}"))
            }
        };
        sys::set_nonblocking(fd.as_raw_fd(), true).map_err(io_err("dgram socket"))?;
        Ok(DgramBackend {
            fd: Arc::new(fd),
            dest,
            counters: Arc::default(),
            batching,
            description,
            socket_file,
        })
    }
}

fn first_v4(i: &crate::socket_address::InetAddress) -> Result<std::net::SocketAddr, Error> {
    i.resolve(None)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Option(OptionError::Invalid(format!("host not found: {}", i.host))))
}

/// QEMU's multicast socket: bound to the group's address and port (shared with other
/// processes), member of the group, looping our own datagrams back so that several guests on one
/// host see each other, sending from `interface` if given.
fn multicast_socket(
    group: std::net::SocketAddr,
    interface: Option<std::net::Ipv4Addr>,
) -> Result<OwnedFd, Error> {
    let std::net::SocketAddr::V4(g) = group else {
        return Err(Error::Option(OptionError::Invalid(
            "multicast only support inet type".into(),
        )));
    };
    let fd = sys::socket(libc::AF_INET, libc::SOCK_DGRAM, 0).map_err(io_err("dgram socket"))?;
    let raw = fd.as_raw_fd();
    sys::setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
        .map_err(io_err("can't set socket option SO_REUSEADDR"))?;
    sys::bind(raw, &sys::sockaddr_from(group))
        .map_err(io_err(format!("can't bind ip={} to socket", g.ip())))?;
    let in_addr = |ip: std::net::Ipv4Addr| libc::in_addr {
        s_addr: u32::from_ne_bytes(ip.octets()),
    };
    let mreq = libc::ip_mreq {
        imr_multiaddr: in_addr(*g.ip()),
        imr_interface: in_addr(interface.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)),
    };
    sys::setsockopt_struct(raw, libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, &mreq).map_err(
        io_err(format!("can't add socket to multicast group {}", g.ip())),
    )?;
    sys::setsockopt_int(raw, libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, 1)
        .map_err(io_err("can't force multicast message to loopback"))?;
    if let Some(ip) = interface {
        sys::setsockopt_struct(raw, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &in_addr(ip))
            .map_err(io_err("can't set the default network send interface"))?;
    }
    Ok(fd)
}

impl Backend for DgramBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities::PLAIN_ONE_QUEUE
    }

    fn queue(&self, index: u16) -> Result<Box<dyn BackendQueue>, Error> {
        crate::only_queue_zero(index)?;
        Ok(Box::new(DatagramQueue::new(
            self.fd.clone(),
            self.dest,
            Bare,
            self.counters.clone(),
            self.batching,
        )))
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.counters.list()
    }

    fn shutdown(&self) {
        if let Some(path) = &self.socket_file {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for DgramBackend {
    fn drop(&mut self) {
        self.shutdown();
    }
}
