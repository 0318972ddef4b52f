//! TCP flows: a `smoltcp` socket facing the guest spliced to a host socket.
//!
//! An outbound flow starts when the guest's SYN arrives: the SYN is held while the host
//! connection is made, and only then offered to a listening `smoltcp` socket, so the guest sees
//! a SYN-ACK only if the host end exists (a refused connection becomes a reset). Inbound flows
//! (`hostfwd`) connect a `smoltcp` socket to the guest once the host client is accepted.
//! Data moves between the two ends without intermediate buffers: host reads land in the
//! `smoltcp` send buffer, guest data is written to the host from the receive buffer.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

use super::poller::{Interest, Poller, Token};
use crate::launcher::Spawned;
use crate::sys;

/// Most TCP flows at once; a SYN beyond this is answered with a reset.
pub const MAX_FLOWS: usize = 1024;
/// Buffer size per direction by how many flows exist: the first few get room for a bulk
/// transfer at full speed (the buffer bounds the data in flight toward and from the guest),
/// later ones less, bounding memory overall (4 × 2 × 2 MiB + 60 × 2 × 256 KiB + 960 × 2 × 16 KiB,
/// about 76 MiB at the flow limit; pages are only resident once a transfer touches them). With
/// the guest a ring and a wakeup away, 2 MiB in flight is what a 64 KiB-frame transfer needs to
/// run at over 10 Gbit/s (docs/performance.md); 256 KiB caps it near 4.
const BUFFER_TIERS: [(usize, usize); 2] = [(4, 2 << 20), (64, 256 << 10)];
const SMALL_BUFFER: usize = 16 * 1024;
/// A flow that does not reach the established state within this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// The guest must acknowledge data within this, or the flow is reset.
const ACK_TIMEOUT: Duration = Duration::from_secs(120);

/// One spliced connection.
#[derive(Debug)]
pub struct TcpFlow {
    /// The guest-facing socket; `None` while the host connection is under way.
    pub handle: Option<SocketHandle>,
    pub host: OwnedFd,
    pub guest: SocketAddr,
    /// The peer address as the guest sees it.
    pub remote: SocketAddr,
    /// The guest's SYN, held until the host connection is made.
    pub syn: Vec<u8>,
    interest: Interest,
    host_eof: bool,
    host_write_shut: bool,
    /// A `guestfwd=...-cmd:` process serving this connection.
    pub child: Option<Spawned>,
    born: Instant,
}

/// What became of a flow after its ends were serviced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowFate {
    Alive,
    /// Both sides closed in order.
    Finished,
    /// One side failed or reset: reset the other.
    Aborted,
}

/// The flow table.
#[derive(Debug, Default)]
pub struct TcpFlows {
    flows: HashMap<u64, TcpFlow>,
    by_tuple: HashMap<(SocketAddr, SocketAddr), u64>,
    next_id: u64,
}

impl TcpFlows {
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_full(&self) -> bool {
        self.flows.len() >= MAX_FLOWS
    }

    /// The flow of a (guest, remote) pair.
    pub fn find(&self, guest: SocketAddr, remote: SocketAddr) -> Option<u64> {
        self.by_tuple.get(&(guest, remote)).copied()
    }

    pub fn get(&self, id: u64) -> Option<&TcpFlow> {
        self.flows.get(&id)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut TcpFlow> {
        self.flows.get_mut(&id)
    }

    pub fn ids(&self) -> Vec<u64> {
        self.flows.keys().copied().collect()
    }

    /// Whether a remote port is in use toward `guest` (for choosing `hostfwd` source ports).
    pub fn in_use(&self, guest: SocketAddr, remote: SocketAddr) -> bool {
        self.by_tuple.contains_key(&(guest, remote))
    }

    /// Registers a flow whose host socket is `host`; `connecting` flows wait for writability.
    pub fn insert(
        &mut self,
        poller: &Poller,
        host: OwnedFd,
        guest: SocketAddr,
        remote: SocketAddr,
        connecting: bool,
    ) -> io::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let interest = Interest {
            read: false,
            write: connecting,
        };
        poller.add(host.as_raw_fd(), Token::Tcp(id), interest)?;
        self.flows.insert(
            id,
            TcpFlow {
                handle: None,
                host,
                guest,
                remote,
                syn: Vec::new(),
                interest,
                host_eof: false,
                host_write_shut: false,
                child: None,
                born: Instant::now(),
            },
        );
        self.by_tuple.insert((guest, remote), id);
        Ok(id)
    }

    /// A guest-facing socket with buffers sized by how many flows exist.
    pub fn new_socket(&self) -> tcp::Socket<'static> {
        let size = BUFFER_TIERS
            .iter()
            .find(|(flows, _)| self.flows.len() <= *flows)
            .map_or(SMALL_BUFFER, |(_, size)| *size);
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; size]),
            tcp::SocketBuffer::new(vec![0; size]),
        );
        socket.set_nagle_enabled(false);
        socket.set_timeout(Some(smoltcp::time::Duration::from_secs(
            ACK_TIMEOUT.as_secs(),
        )));
        socket
    }

    /// Moves data both ways and updates what the host socket is watched for.
    pub fn pump(&mut self, id: u64, sockets: &mut SocketSet<'_>, poller: &Poller) -> FlowFate {
        let Some(flow) = self.flows.get_mut(&id) else {
            return FlowFate::Finished;
        };
        let Some(handle) = flow.handle else {
            return FlowFate::Alive;
        };
        let socket = sockets.get_mut::<tcp::Socket>(handle);
        let fd = flow.host.as_raw_fd();
        let Some(want_write) = guest_to_host(socket, fd) else {
            socket.abort();
            return FlowFate::Aborted;
        };
        if !socket.may_recv()
            && socket.recv_queue() == 0
            && !flow.host_write_shut
            && socket_past_handshake(socket.state())
        {
            // The guest sent FIN and everything before it is written.
            sys::shutdown_write(fd);
            flow.host_write_shut = true;
        }
        if !flow.host_eof && host_to_guest(socket, fd, &mut flow.host_eof).is_none() {
            socket.abort();
            return FlowFate::Aborted;
        }
        let fate = match socket.state() {
            tcp::State::Closed if flow.host_eof && flow.host_write_shut => FlowFate::Finished,
            tcp::State::TimeWait => FlowFate::Finished,
            tcp::State::Closed => FlowFate::Aborted,
            tcp::State::SynSent | tcp::State::SynReceived | tcp::State::Listen
                if flow.born.elapsed() > HANDSHAKE_TIMEOUT =>
            {
                FlowFate::Aborted
            }
            _ => FlowFate::Alive,
        };
        let interest = Interest {
            read: !flow.host_eof && socket.may_send() && socket.can_send(),
            write: want_write,
        };
        if interest != flow.interest && poller.modify(fd, Token::Tcp(id), interest).is_ok() {
            flow.interest = interest;
        }
        fate
    }

    /// Forgets a flow: its guest socket goes, its host socket closes (with a reset when the
    /// flow was aborted). Returns the flow's command, if any, for the caller to reap.
    pub fn remove(
        &mut self,
        id: u64,
        sockets: &mut SocketSet<'_>,
        reset_host: bool,
    ) -> Option<Spawned> {
        let flow = self.flows.remove(&id)?;
        self.by_tuple.remove(&(flow.guest, flow.remote));
        if let Some(handle) = flow.handle {
            sockets.remove(handle);
        }
        if reset_host {
            sys::set_linger_reset(flow.host.as_raw_fd());
        }
        flow.child
    }

    /// Flows whose handshake with the host or guest has taken too long.
    pub fn stale_handshakes(&self) -> Vec<u64> {
        self.flows
            .iter()
            .filter(|(_, f)| f.handle.is_none() && f.born.elapsed() > HANDSHAKE_TIMEOUT)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Writes what the guest sent to the host socket, until either side has no more. Returns
/// whether the host socket is full (write interest wanted); `None` if it failed.
fn guest_to_host(socket: &mut tcp::Socket<'_>, fd: RawFd) -> Option<bool> {
    while socket.can_recv() {
        let written = socket.recv(|data| match sys::write(fd, data) {
            Ok(n) => (n, Ok(n)),
            Err(e) => (0, Err(e)),
        });
        match written {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => return Some(true),
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => return None,
            _ => break,
        }
    }
    Some(false)
}

/// Reads what the host sent into the guest socket, until either side has no more; at the
/// host's end of stream, sets `host_eof` and closes toward the guest. `None` if reading failed.
fn host_to_guest(socket: &mut tcp::Socket<'_>, fd: RawFd, host_eof: &mut bool) -> Option<()> {
    while !*host_eof && socket.can_send() {
        let read = socket.send(|space| match sys::read(fd, space) {
            Ok(n) => (n, Ok(n)),
            Err(e) => (0, Err(e)),
        });
        match read {
            Ok(Ok(0)) => {
                *host_eof = true;
                socket.close();
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => return None,
            Err(_) => break,
        }
    }
    Some(())
}

fn socket_past_handshake(state: tcp::State) -> bool {
    !matches!(
        state,
        tcp::State::Listen | tcp::State::SynSent | tcp::State::SynReceived
    )
}
