//! ICMP echo ("ping") to the outside through the kernel's unprivileged ping sockets
//! (`SOCK_DGRAM` + `IPPROTO_ICMP`/`IPPROTO_ICMPV6`): one socket per (guest, remote, identifier).
//! The kernel picks its own identifier; replies get the guest's back.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use smoltcp::wire::{Icmpv4Packet, Icmpv6Packet, IpProtocol};

use super::guest_frames::{ipv4_repr, ipv6_repr, GuestFrames, LinkAddrs};
use super::poller::{Poller, Token};
use crate::sys;

const MAX_FLOWS: usize = 256;
const IDLE: Duration = Duration::from_secs(60);
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REPLY_V6: u8 = 129;

#[derive(Debug)]
struct EchoFlow {
    socket: OwnedFd,
    guest: IpAddr,
    remote: IpAddr,
    ident: u16,
    last_used: Instant,
}

/// The echo flows.
#[derive(Debug, Default)]
pub struct EchoFlows {
    flows: HashMap<u64, EchoFlow>,
    by_key: HashMap<(IpAddr, IpAddr, u16), u64>,
    next_id: u64,
}

impl EchoFlows {
    /// Sends the guest's echo request `message` (ICMP header first) to `target`, which the guest
    /// knows as `remote`.
    pub fn send(
        &mut self,
        poller: &Poller,
        guest: IpAddr,
        remote: IpAddr,
        target: IpAddr,
        ident: u16,
        message: &[u8],
    ) -> io::Result<()> {
        let key = (guest, remote, ident);
        let id = match self.by_key.get(&key) {
            Some(id) => *id,
            None => {
                if self.flows.len() >= MAX_FLOWS {
                    self.expire_oldest();
                }
                let (domain, protocol) = match target {
                    IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP),
                    IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
                };
                let socket = sys::socket(domain, libc::SOCK_DGRAM, protocol)?;
                let addr = sys::sockaddr_from(SocketAddr::new(target, 0));
                // SAFETY: the address is a live sockaddr_storage with its length.
                sys::check(unsafe {
                    libc::connect(
                        socket.as_raw_fd(),
                        (&addr.0 as *const libc::sockaddr_storage).cast(),
                        addr.1,
                    )
                })?;
                let id = self.next_id;
                self.next_id += 1;
                poller.add_readable(socket.as_raw_fd(), Token::Icmp(id))?;
                self.flows.insert(
                    id,
                    EchoFlow {
                        socket,
                        guest,
                        remote,
                        ident,
                        last_used: Instant::now(),
                    },
                );
                self.by_key.insert(key, id);
                id
            }
        };
        if let Some(flow) = self.flows.get_mut(&id) {
            flow.last_used = Instant::now();
            sys::write(flow.socket.as_raw_fd(), message)?;
        }
        Ok(())
    }

    fn expire_oldest(&mut self) {
        if let Some(id) = self
            .flows
            .iter()
            .min_by_key(|(_, f)| f.last_used)
            .map(|(id, _)| *id)
        {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(f) = self.flows.remove(&id) {
            self.by_key.remove(&(f.guest, f.remote, f.ident));
        }
    }

    /// Delivers echo replies of flow `id` to the guest.
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
        while !out.is_full() {
            let n = match sys::read(flow.socket.as_raw_fd(), scratch) {
                Ok(n) if n >= 8 => n,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            flow.last_used = Instant::now();
            push_echo_reply(
                out,
                link,
                flow.remote,
                flow.guest,
                flow.ident,
                &scratch[..n],
            );
        }
    }

    /// Closes idle flows; returns whether any remain.
    pub fn expire(&mut self) -> bool {
        let stale: Vec<u64> = self
            .flows
            .iter()
            .filter(|(_, f)| f.last_used.elapsed() > IDLE)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.remove(id);
        }
        !self.flows.is_empty()
    }
}

/// Queues an echo reply `message` (ICMP header first, its type already a reply or about to be
/// made one) from `src` to `dst` with identifier `ident`.
pub fn push_echo_reply(
    out: &mut GuestFrames,
    link: &LinkAddrs,
    src: IpAddr,
    dst: IpAddr,
    ident: u16,
    message: &[u8],
) {
    let len = message.len();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) if 20 + len <= super::guest_frames::MTU => {
            out.push_ip(link, 20 + len, |ip| {
                let mut packet = smoltcp::wire::Ipv4Packet::new_unchecked(&mut *ip);
                ipv4_repr(s, d, IpProtocol::Icmp, len)
                    .emit(&mut packet, &smoltcp::phy::ChecksumCapabilities::default());
                let body = packet.payload_mut();
                body.copy_from_slice(message);
                body[0] = ECHO_REPLY_V4;
                body[4..6].copy_from_slice(&ident.to_be_bytes());
                let mut icmp = Icmpv4Packet::new_unchecked(body);
                icmp.fill_checksum();
            });
        }
        (IpAddr::V6(s), IpAddr::V6(d)) if 40 + len <= super::guest_frames::MTU => {
            out.push_ip(link, 40 + len, |ip| {
                let mut packet = smoltcp::wire::Ipv6Packet::new_unchecked(&mut *ip);
                ipv6_repr(s, d, IpProtocol::Icmpv6, len).emit(&mut packet);
                let body = packet.payload_mut();
                body.copy_from_slice(message);
                body[0] = ECHO_REPLY_V6;
                body[4..6].copy_from_slice(&ident.to_be_bytes());
                let mut icmp = Icmpv6Packet::new_unchecked(body);
                icmp.fill_checksum(&s, &d);
            });
        }
        _ => {}
    }
}
