//! UDP flows: one connected host socket per (guest endpoint, remote endpoint) pair, so replies
//! find their way back without a NAT table of our own. Idle flows expire; the table is bounded
//! and evicts the least recently used flow when full.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::guest_frames::{GuestFrames, LinkAddrs};
use super::poller::{Poller, Token};

/// Most UDP flows at once.
pub const MAX_FLOWS: usize = 1024;
/// An idle flow is closed after this (DNS flows sooner).
const IDLE: Duration = Duration::from_secs(180);
const IDLE_DNS: Duration = Duration::from_secs(10);
/// Datagrams taken from one socket per readiness event, so one busy flow cannot starve others.
const BURST: usize = 32;

#[derive(Debug)]
struct UdpFlow {
    socket: UdpSocket,
    guest: SocketAddr,
    remote: SocketAddr,
    last_used: Instant,
    idle: Duration,
}

/// Datagrams the flows could not deliver, for the counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct UdpDrops {
    /// Larger than the guest MTU (the stack does not fragment).
    pub too_big: u64,
    /// The host refused to send (unreachable, no route).
    pub send_failed: u64,
}

/// The flow table.
#[derive(Debug, Default)]
pub struct UdpFlows {
    flows: HashMap<u64, UdpFlow>,
    by_tuple: HashMap<(SocketAddr, SocketAddr), u64>,
    next_id: u64,
    pub drops: UdpDrops,
}

impl UdpFlows {
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether a flow exists for the (guest, remote) pair.
    pub fn has_flow(&self, guest: SocketAddr, remote: SocketAddr) -> bool {
        self.by_tuple.contains_key(&(guest, remote))
    }

    /// Sends a guest datagram from `guest` to `remote`. A new flow needs `target`, the address
    /// the host reaches `remote` at; an existing one has it already.
    pub fn send(
        &mut self,
        poller: &Poller,
        guest: SocketAddr,
        remote: SocketAddr,
        target: Option<SocketAddr>,
        payload: &[u8],
    ) -> io::Result<()> {
        let id = match (self.by_tuple.get(&(guest, remote)), target) {
            (Some(id), _) => *id,
            (None, Some(target)) => self.open(poller, guest, remote, target)?,
            (None, None) => return Ok(()),
        };
        let Some(flow) = self.flows.get_mut(&id) else {
            return Ok(());
        };
        flow.last_used = Instant::now();
        match flow.socket.send(payload) {
            Ok(_) => Ok(()),
            // A full socket buffer drops the datagram, as a congested link would.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => {
                self.drops.send_failed += 1;
                Err(e)
            }
        }
    }

    fn open(
        &mut self,
        poller: &Poller,
        guest: SocketAddr,
        remote: SocketAddr,
        target: SocketAddr,
    ) -> io::Result<u64> {
        if self.flows.len() >= MAX_FLOWS {
            let oldest = self
                .flows
                .iter()
                .min_by_key(|(_, f)| f.last_used)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.remove(id);
            }
        }
        let bind: SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0".parse().map_err(io::Error::other)?
        } else {
            "[::]:0".parse().map_err(io::Error::other)?
        };
        let socket = UdpSocket::bind(bind)?;
        socket.set_nonblocking(true)?;
        socket.connect(target)?;
        let id = self.next_id;
        self.next_id += 1;
        poller.add_readable(socket.as_raw_fd(), Token::Udp(id))?;
        let idle = if remote.port() == 53 { IDLE_DNS } else { IDLE };
        self.flows.insert(
            id,
            UdpFlow {
                socket,
                guest,
                remote,
                last_used: Instant::now(),
                idle,
            },
        );
        self.by_tuple.insert((guest, remote), id);
        Ok(id)
    }

    fn remove(&mut self, id: u64) {
        if let Some(flow) = self.flows.remove(&id) {
            self.by_tuple.remove(&(flow.guest, flow.remote));
        }
    }

    /// Delivers what the host sent on flow `id` to the guest, as from the remote endpoint the
    /// guest addressed.
    pub fn receive(
        &mut self,
        id: u64,
        out: &mut GuestFrames,
        link: &LinkAddrs,
        scratch: &mut [u8],
    ) {
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        for _ in 0..BURST {
            if out.is_full() {
                return;
            }
            match flow.socket.recv(scratch) {
                Ok(n) => {
                    flow.last_used = Instant::now();
                    if !out.push_udp(link, flow.remote, flow.guest, &scratch[..n]) {
                        self.drops.too_big += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock, or an ICMP error reported on the connected socket.
                Err(_) => return,
            }
        }
    }

    /// Closes idle flows; returns whether any remain (the stack keeps a timer while so).
    pub fn expire(&mut self) -> bool {
        let now = Instant::now();
        let idle: Vec<u64> = self
            .flows
            .iter()
            .filter(|(_, f)| now.duration_since(f.last_used) > f.idle)
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.remove(id);
        }
        !self.flows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_round_trip_through_a_flow() {
        let poller = Poller::new().unwrap();
        let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = echo.local_addr().unwrap();
        let mut flows = UdpFlows::default();
        let guest: SocketAddr = "10.0.2.15:5000".parse().unwrap();
        let remote: SocketAddr = "10.0.2.2:7".parse().unwrap();
        flows
            .send(&poller, guest, remote, Some(target), b"ping")
            .unwrap();
        flows.send(&poller, guest, remote, None, b"ping2").unwrap();
        assert_eq!(flows.len(), 1, "one flow per endpoint pair");
        let mut buf = [0u8; 64];
        let (n, from) = echo.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        echo.send_to(b"pong", from).unwrap();
        let id = *flows.by_tuple.get(&(guest, remote)).unwrap();
        let mut out = GuestFrames::default();
        let link = LinkAddrs::new(None);
        let mut scratch = vec![0u8; 65536];
        // The reply is in flight on loopback: wait for the socket, not for time.
        let fd = flows.flows[&id].socket.as_raw_fd();
        let mut pfd = [libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }];
        crate::sys::poll(&mut pfd, 5000).unwrap();
        flows.receive(id, &mut out, &link, &mut scratch);
        let frame = out.pop_frame().unwrap();
        let n = frame.len();
        assert_eq!(&frame[n - 4..n], b"pong");
        // The reply comes from the address the guest used, not the host's loopback.
        assert_eq!(&frame[14 + 12..14 + 16], &[10, 0, 2, 2]);
    }

    #[test]
    fn the_table_is_bounded() {
        let poller = Poller::new().unwrap();
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = sink.local_addr().unwrap();
        let mut flows = UdpFlows::default();
        for port in 0..(MAX_FLOWS as u16 + 10) {
            let guest = SocketAddr::new("10.0.2.15".parse().unwrap(), 1000 + port);
            flows
                .send(
                    &poller,
                    guest,
                    "10.0.2.2:9".parse().unwrap(),
                    Some(target),
                    b"x",
                )
                .unwrap();
        }
        assert_eq!(flows.len(), MAX_FLOWS);
    }
}
