//! `hostfwd` and `guestfwd`: host sockets bound for the rules when the netdev is created,
//! guest-forward peers resolved then (never on the datapath), and the stack's handling of
//! connections and datagrams arriving on them.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};

use super::super::options::{GuestFwdTarget, HostFwd, UserOptions};
use super::super::poller::{Poller, Token};
use super::Stack;
use crate::{Error, OptionError};

/// Source ports the stack uses toward the guest for `hostfwd` connections.
pub(super) const FORWARD_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// The first source port handed out.
pub(super) const FIRST_FORWARD_PORT: u16 = *FORWARD_PORTS.start();

/// A `hostfwd` rule's host socket.
#[derive(Debug)]
pub(super) enum Forward {
    Tcp(TcpListener, SocketAddr),
    Udp(UdpForward),
}

/// Where a `guestfwd` address leads, resolved when the netdev is created (never on the
/// datapath).
#[derive(Debug)]
pub(super) enum GuestFwdPeer {
    Command(String),
    Connect(SocketAddr),
}

/// A UDP `hostfwd` rule: host clients are told apart by the source port the guest sees.
#[derive(Debug)]
pub(super) struct UdpForward {
    pub(super) socket: UdpSocket,
    pub(super) guest: SocketAddr,
    /// Host client → the port the guest sees it from.
    pub(super) ports: HashMap<SocketAddr, u16>,
}

fn forward_error(rule: &HostFwd, e: io::Error) -> Error {
    log::error!("hostfwd '{}': {e}", rule.text);
    Error::Option(OptionError::Invalid(format!(
        "Could not set up host forwarding rule '{}'",
        rule.text
    )))
}

/// Binds every `hostfwd` rule's host socket and registers it with the stack's poller (failing
/// like QEMU if one cannot be bound).
pub(super) fn open_host_forwards(
    options: &UserOptions,
    poller: &Poller,
) -> Result<Vec<Forward>, Error> {
    let mut forwards = Vec::new();
    for (index, rule) in options.hostfwd.iter().enumerate() {
        let Some(net) = options.ipv4 else {
            return Err(forward_error(rule, io::Error::other("IPv4 is off")));
        };
        let host = SocketAddr::new(rule.host_addr.into(), rule.host_port);
        let guest = SocketAddr::new(
            rule.guest_addr.unwrap_or(net.dhcp_start).into(),
            rule.guest_port,
        );
        // Non-blocking and watched by the stack's poller.
        let watch = |fd: std::os::fd::RawFd| {
            crate::sys::set_nonblocking(fd, true)
                .and_then(|()| poller.add_readable(fd, Token::HostFwd(index as u64)))
                .map_err(|e| forward_error(rule, e))
        };
        let forward = if rule.udp {
            let socket = UdpSocket::bind(host).map_err(|e| forward_error(rule, e))?;
            watch(socket.as_raw_fd())?;
            Forward::Udp(UdpForward {
                socket,
                guest,
                ports: HashMap::new(),
            })
        } else {
            let listener = TcpListener::bind(host).map_err(|e| forward_error(rule, e))?;
            watch(listener.as_raw_fd())?;
            Forward::Tcp(listener, guest)
        };
        forwards.push(forward);
    }
    Ok(forwards)
}

/// Resolves every `guestfwd` rule's peer.
pub(super) fn resolve_guest_forwards(
    options: &UserOptions,
) -> Result<Vec<(SocketAddr, GuestFwdPeer)>, Error> {
    options
        .guestfwd
        .iter()
        .map(|rule| {
            let peer = match &rule.target {
                GuestFwdTarget::Command(c) => GuestFwdPeer::Command(c.clone()),
                GuestFwdTarget::Connect { host, port } => {
                    use std::net::ToSocketAddrs;
                    let addr = (host.as_str(), *port)
                        .to_socket_addrs()
                        .ok()
                        .and_then(|mut a| a.next())
                        .ok_or_else(|| {
                            Error::Option(OptionError::Invalid(format!(
                                "Could not open guest forwarding device for '{}': \
                                 cannot resolve '{host}'",
                                rule.text
                            )))
                        })?;
                    GuestFwdPeer::Connect(addr)
                }
            };
            Ok((SocketAddr::new(rule.addr.into(), rule.port), peer))
        })
        .collect::<Result<Vec<_>, Error>>()
}

impl Stack {
    /// Next source port toward the guest for a forwarded connection.
    fn forward_port(&mut self, guest: SocketAddr, remote_ip: IpAddr) -> u16 {
        for _ in FORWARD_PORTS {
            let port = self.next_port;
            self.next_port = if port == *FORWARD_PORTS.end() {
                *FORWARD_PORTS.start()
            } else {
                port + 1
            };
            let remote = SocketAddr::new(remote_ip, port);
            if !self.tcp.in_use(guest, remote) && !self.udp_forwarded.contains_key(&(guest, remote))
            {
                return port;
            }
        }
        *FORWARD_PORTS.start()
    }

    pub(super) fn forward_accept(&mut self, index: usize) {
        let Some(net) = self.options.ipv4 else {
            return;
        };
        for _ in 0..16 {
            let (stream, guest) = match self.forwards.get(index) {
                Some(Forward::Tcp(listener, guest)) => match listener.accept() {
                    Ok((stream, _)) => (stream, *guest),
                    Err(_) => return,
                },
                _ => return,
            };
            if self.tcp.is_full() {
                self.counters.flow_limit += 1;
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let port = self.forward_port(guest, net.host.into());
            let remote = SocketAddr::new(net.host.into(), port);
            if let Err(e) = self.tcp.open_inbound(
                &self.poller,
                OwnedFd::from(stream),
                guest,
                remote,
                &mut self.out,
                &self.link,
            ) {
                log::warn!("hostfwd to {guest}: {e}");
            }
        }
    }

    pub(super) fn forward_datagrams(&mut self, index: usize) {
        let Some(net) = self.options.ipv4 else {
            return;
        };
        loop {
            if self.out.is_full() {
                return;
            }
            let (n, client, guest) = match self.forwards.get(index) {
                Some(Forward::Udp(f)) => match f.socket.recv_from(&mut self.scratch) {
                    Ok((n, client)) => (n, client, f.guest),
                    Err(_) => return,
                },
                _ => return,
            };
            let known = match self.forwards.get(index) {
                Some(Forward::Udp(f)) => f.ports.get(&client).copied(),
                _ => None,
            };
            let port = match known {
                Some(p) => p,
                None => {
                    let p = self.forward_port(guest, net.host.into());
                    if let Some(Forward::Udp(f)) = self.forwards.get_mut(index) {
                        f.ports.insert(client, p);
                    }
                    self.udp_forwarded.insert(
                        (guest, SocketAddr::new(net.host.into(), p)),
                        (index, client),
                    );
                    p
                }
            };
            let from = SocketAddr::new(net.host.into(), port);
            if !self
                .out
                .push_udp(&self.link, from, guest, &self.scratch[..n])
            {
                self.udp.drops.too_big += 1;
            }
        }
    }
}
