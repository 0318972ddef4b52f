//! The `l2tpv3` netdev: Ethernet frames in RFC 3931 pseudowires over UDP or IP protocol 115,
//! byte-compatible with QEMU's `-netdev l2tpv3`.

pub mod header;
pub mod options;

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub use options::L2tpv3Options;

use crate::batching::Batching;
use crate::datagram::{DatagramCounters, DatagramQueue, Destination};
use crate::fd_source::FdSource;
use crate::{sys, Backend, BackendQueue, Capabilities, Error, OptionError};
use header::{HeaderLayout, L2tpEncap, RefusedCounters};

/// The IANA protocol number of L2TPv3 over IP.
const IPPROTO_L2TP: libc::c_int = 115;

/// An `l2tpv3` netdev.
#[derive(Debug)]
pub struct L2tpv3Backend {
    fd: Arc<OwnedFd>,
    dest: Destination,
    layout: HeaderLayout,
    counters: Arc<DatagramCounters>,
    refused: Arc<RefusedCounters>,
    batching: Batching,
    description: String,
}

impl L2tpv3Backend {
    pub fn open(
        options: &L2tpv3Options,
        _fds: &mut dyn FdSource,
        batching: Batching,
    ) -> Result<Self, Error> {
        let layout = options.layout()?;
        if options.cookie64 == Some(false) && layout.cookies.is_some() {
            log::warn!("l2tpv3: cookie64=off is treated as on, as QEMU does");
        }
        let ipv6 = options.ipv6 == Some(true);
        let udp = options.is_udp();
        let src = resolve("src", &options.src, options.srcport.as_deref(), udp, ipv6)?;
        let dst = resolve("dst", &options.dst, options.dstport.as_deref(), udp, ipv6)?;
        let family = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
        let fd = if udp {
            sys::socket(family, libc::SOCK_DGRAM, 0)
        } else {
            sys::socket(family, libc::SOCK_RAW, IPPROTO_L2TP)
        }
        .map_err(|e| Error::io("socket creation failed", e))?;
        sys::bind(fd.as_raw_fd(), &sys::sockaddr_from(src))
            .map_err(|e| Error::io(format!("could not bind socket to {src}"), e))?;
        let description = format!(
            "l2tpv3 {} {src} -> {dst} session {}/{}",
            if udp { "udp" } else { "ip" },
            layout.tx_session,
            layout.rx_session
        );
        Ok(L2tpv3Backend {
            fd: Arc::new(fd),
            dest: Destination::inet(dst),
            layout,
            counters: Arc::default(),
            refused: Arc::default(),
            batching,
            description,
        })
    }
}

/// Resolves `src`/`dst` in the family asked for (QEMU's getaddrinfo with `AF_INET` or
/// `AF_INET6`); raw IP sockets take port 0.
fn resolve(
    which: &str,
    host: &str,
    port: Option<&str>,
    udp: bool,
    ipv6: bool,
) -> Result<SocketAddr, Error> {
    let bad = |why: String| {
        Error::Option(OptionError::Invalid(format!(
            "could not resolve {which}, {why}"
        )))
    };
    let port: u16 = match (udp, port) {
        (true, Some(p)) | (false, Some(p)) => p
            .parse()
            .map_err(|_| bad(format!("port '{p}' is not a number")))?,
        (_, None) => 0,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, port)
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .find(|a| a.is_ipv6() == ipv6)
        .ok_or_else(|| bad("Address family for hostname not supported".into()))
}

impl Backend for L2tpv3Backend {
    fn capabilities(&self) -> Capabilities {
        Capabilities::PLAIN_ONE_QUEUE
    }

    fn queue(&self, index: u16) -> Result<Box<dyn BackendQueue>, Error> {
        crate::only_queue_zero(index)?;
        Ok(Box::new(DatagramQueue::new(
            self.fd.clone(),
            Some(self.dest),
            L2tpEncap::new(self.layout, self.refused.clone()),
            self.counters.clone(),
            self.batching,
        )))
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut list = self.counters.list();
        list.extend([
            (
                "rx-dropped-short",
                self.refused.short.load(Ordering::Relaxed),
            ),
            (
                "rx-dropped-bad-cookie",
                self.refused.bad_cookie.load(Ordering::Relaxed),
            ),
            (
                "rx-dropped-bad-session",
                self.refused.bad_session.load(Ordering::Relaxed),
            ),
        ]);
        list
    }
}
