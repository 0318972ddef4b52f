//! The user-mode stack: guest frames in, host sockets out, and back.
//!
//! Everything runs on the queue worker's thread, driven by two calls: guest frames arrive
//! through [`Stack::guest_frame`], and [`Stack::next_frame`] services host sockets (one epoll set,
//! [`Poller`]) when the guest queue is empty. ARP, neighbour discovery, DHCP, DNS, UDP and ICMP
//! are answered or translated here directly; TCP by the stack's own TCP (`tcp_flows`), whose data
//! frames are written straight into the guest's buffers.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, Ipv6Packet,
    TcpControl, TcpPacket, TcpRepr, UdpPacket,
};

use super::dhcp::DhcpServer;
use super::guest_frames::{GuestFrames, LinkAddrs, ETH_HDR};
use super::icmp_echo::{push_echo_reply, EchoFlows};
use super::neighbors::{answer_arp, answer_ndp, ROUTER_LINK_LOCAL};
use super::options::UserOptions;
use super::poller::{Poller, Ready, Token};
use super::resolver::host_resolver;
use super::tcp_flows::{self, FlowFate, GuestSyn, TcpFlows};
use super::tcp_frame;
use super::tftp::{self, TftpServer};
use super::udp_flows::UdpFlows;
use forwarding::{Forward, GuestFwdPeer};

mod forwarding;
use crate::launcher::{Launcher, Spawned};
use crate::{sys, Error};

/// How often idle UDP/ICMP flows and stuck handshakes are looked for while any exist.
const MAINTENANCE: Duration = Duration::from_secs(5);

/// Guest buffers a TCP payload may span and still be used where it lies.
const SCATTERED_PIECES: usize = 64;

/// Where the parts of a TCP segment are in a frame whose first bytes are `head`.
#[derive(Debug)]
struct ScatteredTcp {
    /// The frame's Ethernet source.
    mac: EthernetAddress,
    src: IpAddr,
    dst: IpAddr,
    /// The TCP header, within `head`.
    tcp: std::ops::Range<usize>,
    /// Where the payload starts in the frame, and its length.
    payload_start: usize,
    payload_len: usize,
}

/// Finds the TCP header of an unfragmented IPv4 or IPv6 (no extension headers) TCP segment in
/// `head`, the frame's first bytes; `None` for anything else or a header `head` does not hold.
/// smoltcp's accessors read the headers; its checked constructors would refuse `head` for
/// ending before the packet does.
fn scattered_tcp(head: &[u8]) -> Option<ScatteredTcp> {
    let eth = EthernetFrame::new_checked(head).ok()?;
    let ip = eth.payload();
    let (src, dst, ip_hdr, ip_payload) = match eth.ethertype() {
        EthernetProtocol::Ipv4 if ip.len() >= 20 => {
            let p = Ipv4Packet::new_unchecked(ip);
            let ihl = usize::from(p.header_len());
            if p.version() != 4
                || ihl < 20
                || p.next_header() != IpProtocol::Tcp
                || p.more_frags()
                || p.frag_offset() != 0
            {
                return None;
            }
            let payload = usize::from(p.total_len()).checked_sub(ihl)?;
            (p.src_addr().into(), p.dst_addr().into(), ihl, payload)
        }
        EthernetProtocol::Ipv6 if ip.len() >= 40 => {
            let p = Ipv6Packet::new_unchecked(ip);
            if p.version() != 6 || p.next_header() != IpProtocol::Tcp {
                return None;
            }
            let payload = usize::from(p.payload_len());
            (p.src_addr().into(), p.dst_addr().into(), 40, payload)
        }
        _ => return None,
    };
    let tcp_at = ETH_HDR + ip_hdr;
    let tcp_hdr =
        usize::from(TcpPacket::new_unchecked(head.get(tcp_at..tcp_at + 20)?).header_len());
    if tcp_hdr < 20 || head.len() < tcp_at + tcp_hdr {
        return None;
    }
    Some(ScatteredTcp {
        mac: eth.src_addr(),
        src,
        dst,
        tcp: tcp_at..tcp_at + tcp_hdr,
        payload_start: tcp_at + tcp_hdr,
        payload_len: ip_payload.checked_sub(tcp_hdr)?,
    })
}

/// Parses a TCP segment from the guest, its header (and payload, if `bytes` holds it) in
/// `bytes`. Checksums are not verified: the guest's are partial when it offloads them, and
/// guest memory does not corrupt frames.
fn parse_tcp(bytes: &[u8], src: IpAddr, dst: IpAddr) -> Option<TcpRepr<'_>> {
    let segment = TcpPacket::new_checked(bytes).ok()?;
    TcpRepr::parse(
        &segment,
        &src.into(),
        &dst.into(),
        &ChecksumCapabilities::ignored(),
    )
    .ok()
}

/// Frames and flows the stack refused, by reason (the netdev's `backend` counters).
#[derive(Debug, Default, Clone, Copy)]
pub struct StackCounters {
    pub malformed: u64,
    pub unsupported: u64,
    pub fragments: u64,
    pub restricted: u64,
    pub tcp_refused: u64,
    pub flow_limit: u64,
}

/// The stack's whole state.
pub struct Stack {
    options: UserOptions,
    /// Where the virtual name server finds the host's resolvers.
    resolv_conf: PathBuf,
    link: LinkAddrs,
    out: GuestFrames,
    poller: Poller,
    ready: Vec<Ready>,
    tcp: TcpFlows,
    udp: UdpFlows,
    echo: EchoFlows,
    dhcp: Option<DhcpServer>,
    tftp: Option<TftpServer>,
    forwards: Vec<Forward>,
    /// `guestfwd` rules: the guest-side address and where it leads.
    guest_forwards: Vec<(SocketAddr, GuestFwdPeer)>,
    /// Guest-side (guest, remote) pairs of UDP `hostfwd` clients → (rule, host client).
    udp_forwarded: HashMap<(SocketAddr, SocketAddr), (usize, SocketAddr)>,
    /// Starts `guestfwd` commands.
    launcher: Launcher,
    children: Vec<Spawned>,
    scratch: Vec<u8>,
    /// Flows to remove (with a reset of the host socket if true) once their last frames are out.
    dead: Vec<(u64, bool)>,
    next_port: u16,
    next_maintenance: Option<Instant>,
    logged: u32,
    pub counters: StackCounters,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("tcp_flows", &self.tcp.len())
            .field("udp_flows", &self.udp.len())
            .field("queued", &self.out.len())
            .finish()
    }
}

impl Stack {
    /// A stack for `options`, with its `hostfwd` sockets bound; `resolv_conf` is where its
    /// virtual name server finds the host's resolvers.
    pub fn new(
        options: UserOptions,
        resolv_conf: PathBuf,
        launcher: Launcher,
    ) -> Result<Stack, Error> {
        let poller = Poller::new().map_err(|e| Error::io("epoll", e))?;
        let link = LinkAddrs::new(options.ipv4.map(|n| n.host));
        let out = GuestFrames::default();
        let forwards = forwarding::open_host_forwards(&options, &poller)?;
        let guest_forwards = forwarding::resolve_guest_forwards(&options)?;
        let dhcp = options.ipv4.map(|n| DhcpServer::new(n, &options));
        let tftp = options.ipv4.and(options.tftp.clone()).map(TftpServer::new);
        Ok(Stack {
            options,
            resolv_conf,
            link,
            out,
            poller,
            ready: Vec::new(),
            tcp: TcpFlows::default(),
            udp: UdpFlows::default(),
            echo: EchoFlows::default(),
            dhcp,
            tftp,
            forwards,
            guest_forwards,
            udp_forwarded: HashMap::new(),
            launcher,
            children: Vec::new(),
            scratch: vec![0; 65536],
            dead: Vec::new(),
            next_port: forwarding::FIRST_FORWARD_PORT,
            next_maintenance: None,
            logged: 0,
            counters: StackCounters::default(),
        })
    }

    /// The descriptor that is readable when host sockets or timers need service.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.poller.fd()
    }

    /// Whether frames wait for the guest.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty() || self.tcp.has_output()
    }

    fn note(&mut self, bit: u32, what: &str) {
        if self.logged & (1 << bit) == 0 {
            self.logged |= 1 << bit;
            log::warn!("user netdev: {what} (logged once; see the netdev's counters)");
        }
    }

    /// The guest's MAC, learned from its frames: where the stack's frames go.
    fn learn_guest_mac(&mut self, src: EthernetAddress) {
        if src.is_unicast() {
            self.link.guest = src;
        }
    }

    /// Takes one frame from the guest. Call [`Self::guest_frames_done`] after a batch.
    pub fn guest_frame(&mut self, frame: &[u8]) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.counters.malformed += 1;
            return;
        };
        self.learn_guest_mac(eth.src_addr());
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                if let Some(net) = self.options.ipv4 {
                    let guestfwd = &self.options.guestfwd;
                    let ours = |a: Ipv4Addr| {
                        a == net.host || a == net.dns || guestfwd.iter().any(|g| g.addr == a)
                    };
                    answer_arp(eth.payload(), ours, &self.link, &mut self.out);
                }
            }
            EthernetProtocol::Ipv4 if self.options.ipv4.is_some() => self.ipv4(eth.payload()),
            EthernetProtocol::Ipv6 if self.options.ipv6.is_some() => self.ipv6(eth.payload()),
            _ => self.counters.unsupported += 1,
        }
    }

    fn ipv4(&mut self, packet: &[u8]) {
        let Ok(ip) = Ipv4Packet::new_checked(packet) else {
            self.counters.malformed += 1;
            return;
        };
        if ip.more_frags() || ip.frag_offset() != 0 {
            self.counters.fragments += 1;
            self.note(0, "dropping fragmented IPv4 from the guest");
            return;
        }
        let (src, dst) = (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()));
        match ip.next_header() {
            IpProtocol::Tcp => self.tcp_from_guest(src, dst, ip.payload()),
            IpProtocol::Udp => self.udp_from_guest(src, dst, ip.payload()),
            IpProtocol::Icmp => self.icmp_from_guest(src, dst, ip.payload()),
            _ => self.counters.unsupported += 1,
        }
    }

    fn ipv6(&mut self, packet: &[u8]) {
        let Ok(ip) = Ipv6Packet::new_checked(packet) else {
            self.counters.malformed += 1;
            return;
        };
        let (src, dst) = (IpAddr::V6(ip.src_addr()), IpAddr::V6(ip.dst_addr()));
        match ip.next_header() {
            IpProtocol::Tcp => self.tcp_from_guest(src, dst, ip.payload()),
            IpProtocol::Udp => self.udp_from_guest(src, dst, ip.payload()),
            IpProtocol::Icmpv6 => self.icmp_from_guest(src, dst, ip.payload()),
            // Multicast listener reports come with a hop-by-hop header; nothing to do.
            IpProtocol::HopByHop => {}
            _ => self.counters.unsupported += 1,
        }
    }

    /// Where the host reaches what the guest calls `remote`; `None` if the guest may not.
    fn outbound_target(&self, remote: SocketAddr) -> Option<SocketAddr> {
        if self.options.restrict {
            return None;
        }
        let ip = remote.ip();
        if ip.is_multicast() || ip.is_unspecified() {
            return None;
        }
        if let Some(n) = self.options.ipv4 {
            if ip == IpAddr::V4(n.host) {
                return Some(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), remote.port()));
            }
            if ip == IpAddr::V4(n.dns) || ip == IpAddr::V4(n.broadcast()) {
                return (ip == IpAddr::V4(n.dns) && remote.port() == 53)
                    .then(|| host_resolver(&self.resolv_conf, 53))
                    .flatten();
            }
            if ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
                return None;
            }
        }
        if let Some(n) = self.options.ipv6 {
            if ip == IpAddr::V6(n.host) || ip == IpAddr::V6(ROUTER_LINK_LOCAL) {
                return Some(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), remote.port()));
            }
            if ip == IpAddr::V6(n.dns) {
                return (remote.port() == 53)
                    .then(|| host_resolver(&self.resolv_conf, 53))
                    .flatten();
            }
        }
        Some(remote)
    }

    fn udp_from_guest(&mut self, src: IpAddr, dst: IpAddr, bytes: &[u8]) {
        let Ok(udp) = UdpPacket::new_checked(bytes) else {
            self.counters.malformed += 1;
            return;
        };
        let guest = SocketAddr::new(src, udp.src_port());
        let remote = SocketAddr::new(dst, udp.dst_port());
        let payload = udp.payload();
        if udp.dst_port() == 67 && src.is_ipv4() {
            if let (Some(dhcp), Some(net)) = (self.dhcp.as_mut(), self.options.ipv4) {
                if let Some(reply) = dhcp.handle(payload) {
                    self.out.push_udp(
                        &self.link,
                        SocketAddr::new(net.host.into(), 67),
                        SocketAddr::new(reply.dst.into(), 68),
                        &reply.payload,
                    );
                }
            }
            return;
        }
        if let (Some(server), Some(net)) = (self.tftp.as_mut(), self.options.ipv4) {
            if dst == IpAddr::V4(net.host) && udp.dst_port() == tftp::PORT {
                let reply = server.handle(guest, payload);
                if !reply.is_empty() {
                    self.out.push_udp(&self.link, remote, guest, reply);
                }
                return;
            }
        }
        if let Some((rule, client)) = self.udp_forwarded.get(&(guest, remote)) {
            if let Some(Forward::Udp(f)) = self.forwards.get(*rule) {
                let _ = f.socket.send_to(payload, client);
            }
            return;
        }
        // The target is worked out (resolv.conf read, restrict checked) only for a new flow.
        let target = if self.udp.has_flow(guest, remote) {
            None
        } else {
            match self.outbound_target(remote) {
                Some(t) => Some(t),
                None => {
                    self.counters.restricted += 1;
                    return;
                }
            }
        };
        if let Err(e) = self.udp.send(&self.poller, guest, remote, target, payload) {
            log::debug!("udp {guest} -> {remote}: {e}");
        }
    }

    fn icmp_from_guest(&mut self, src: IpAddr, dst: IpAddr, message: &[u8]) {
        if let (IpAddr::V6(s), Some(net)) = (src, self.options.ipv6) {
            if answer_ndp(
                s,
                message,
                &net,
                self.options.restrict,
                &self.link,
                &mut self.out,
            ) {
                return;
            }
        }
        let echo_request = match src {
            IpAddr::V4(_) => 8,
            IpAddr::V6(_) => 128,
        };
        if message.len() < 8 || message[0] != echo_request || message[1] != 0 {
            return;
        }
        let ident = u16::from_be_bytes([message[4], message[5]]);
        let local = match (dst, self.options.ipv4, self.options.ipv6) {
            (IpAddr::V4(d), Some(n), _) => d == n.host || d == n.dns,
            (IpAddr::V6(d), _, Some(n)) => d == n.host || d == n.dns || d == ROUTER_LINK_LOCAL,
            _ => false,
        };
        if local {
            push_echo_reply(&mut self.out, &self.link, dst, src, ident, message);
            return;
        }
        let Some(target) = self.outbound_target(SocketAddr::new(dst, 0)) else {
            self.counters.restricted += 1;
            return;
        };
        if let Err(e) = self
            .echo
            .send(&self.poller, src, dst, target.ip(), ident, message)
        {
            self.counters.unsupported += 1;
            self.note(
                1,
                &format!("cannot forward ping: {e} (see net.ipv4.ping_group_range)"),
            );
        }
    }

    fn tcp_from_guest(&mut self, src: IpAddr, dst: IpAddr, bytes: &[u8]) {
        let Some(repr) = parse_tcp(bytes, src, dst) else {
            self.counters.malformed += 1;
            return;
        };
        self.tcp_segment(src, dst, &repr, &[repr.payload]);
    }

    /// Takes a frame from the guest spread over `bufs` (its first `skip` bytes the virtio-net
    /// header) whose first bytes `head` holds, if it is a TCP segment whose headers `head`
    /// covers: its payload is used where it lies in guest memory, not put together first.
    /// Returns false, taking nothing, for any other frame.
    pub fn guest_frame_scattered(
        &mut self,
        head: &[u8],
        bufs: &[IoSlice<'_>],
        skip: usize,
    ) -> bool {
        let Some(at) = scattered_tcp(head) else {
            return false;
        };
        let enabled = match at.src {
            IpAddr::V4(_) => self.options.ipv4.is_some(),
            IpAddr::V6(_) => self.options.ipv6.is_some(),
        };
        let frame_len = bufs
            .iter()
            .map(|b| b.len())
            .sum::<usize>()
            .saturating_sub(skip);
        if !enabled || frame_len < at.payload_start + at.payload_len {
            return false;
        }
        let Some(repr) = parse_tcp(&head[at.tcp.clone()], at.src, at.dst) else {
            return false;
        };
        let mut parts: [&[u8]; SCATTERED_PIECES] = [&[]; SCATTERED_PIECES];
        let mut count = 0;
        for span in crate::byte_spans(bufs, skip + at.payload_start, at.payload_len) {
            let Some(slot) = parts.get_mut(count) else {
                return false;
            };
            *slot = span;
            count += 1;
        }
        self.learn_guest_mac(at.mac);
        self.tcp_segment(at.src, at.dst, &repr, &parts[..count]);
        true
    }

    /// A TCP segment from the guest, its payload in `payload`'s pieces.
    fn tcp_segment(&mut self, src: IpAddr, dst: IpAddr, repr: &TcpRepr<'_>, payload: &[&[u8]]) {
        let guest = SocketAddr::new(src, repr.src_port);
        let remote = SocketAddr::new(dst, repr.dst_port);
        if let Some(id) = self.tcp.find(guest, remote) {
            let fate = self
                .tcp
                .on_guest_segment(id, repr, payload, &mut self.out, &self.link);
            self.flow_became(id, fate);
            return;
        }
        if repr.control == TcpControl::Syn && repr.ack_number.is_none() {
            self.tcp_open(guest, remote, repr);
        } else {
            let len = payload.iter().map(|p| p.len()).sum();
            self.reset(repr, len, guest, remote);
        }
    }

    /// Answers a segment of no connection with a reset.
    fn reset(&mut self, repr: &TcpRepr<'_>, len: usize, guest: SocketAddr, remote: SocketAddr) {
        if let Some(seg) = tcp_flows::reset_for(repr, len, guest, remote) {
            tcp_frame::push_control(&mut self.out, &self.link, &seg);
        }
    }

    /// Starts the host side of a guest connection; the guest hears back once it is made.
    fn tcp_open(&mut self, guest: SocketAddr, remote: SocketAddr, syn: &TcpRepr<'_>) {
        if self.tcp.is_full() {
            self.counters.flow_limit += 1;
            self.note(2, "TCP flow limit reached; refusing connections");
            self.reset(syn, 0, guest, remote);
            return;
        }
        let peer = self
            .guest_forwards
            .iter()
            .find(|(addr, _)| *addr == remote)
            .map(|(_, peer)| peer);
        let mut child = None;
        let host = match peer {
            Some(GuestFwdPeer::Command(command)) => {
                self.launcher.spawn_command(command).map(|(fd, c)| {
                    child = Some(c);
                    fd
                })
            }
            Some(GuestFwdPeer::Connect(addr)) => sys::connect_nonblocking(*addr),
            None => match self.outbound_target(remote) {
                Some(target) => sys::connect_nonblocking(target),
                None => {
                    self.counters.restricted += 1;
                    return;
                }
            },
        };
        let host = match host {
            Ok(h) => h,
            Err(e) => {
                log::debug!("tcp {guest} -> {remote}: {e}");
                self.counters.tcp_refused += 1;
                self.reset(syn, 0, guest, remote);
                return;
            }
        };
        let fields = GuestSyn::of(syn);
        if let Err(e) = self
            .tcp
            .open_outbound(&self.poller, host, guest, remote, fields, child)
        {
            log::warn!("tcp {guest} -> {remote}: {e}");
        }
    }

    /// The host connection of flow `id` is made (or failed): the guest gets a SYN-ACK (or a
    /// reset).
    fn tcp_connected(&mut self, id: u64, result: io::Result<()>) {
        match result {
            Ok(()) => self.tcp.connected(id, &mut self.out, &self.link),
            Err(e) => {
                log::debug!("tcp flow {id}: {e}");
                self.counters.tcp_refused += 1;
                self.tcp.refused(id, &mut self.out, &self.link);
                self.remove_flow(id, false);
            }
        }
    }

    /// Notes what became of flow `id`: a flow that ended goes once its last frames are out.
    fn flow_became(&mut self, id: u64, fate: FlowFate) {
        match fate {
            FlowFate::Alive => {}
            FlowFate::Finished => self.dead.push((id, false)),
            FlowFate::Aborted => self.dead.push((id, true)),
        }
    }

    fn remove_flow(&mut self, id: u64, reset_host: bool) {
        if let Some(child) = self.tcp.remove(id, reset_host) {
            self.children.push(child);
        }
    }

    /// Ends a batch of guest frames: queues the acknowledgements due and re-arms the timer.
    pub fn guest_frames_done(&mut self) {
        self.settle();
    }

    fn settle(&mut self) {
        // A flow's last acknowledgement goes out before it goes.
        self.tcp.push_acks(&mut self.out, &self.link);
        for (id, reset) in std::mem::take(&mut self.dead) {
            self.remove_flow(id, reset);
        }
        self.arm_timer();
    }

    fn arm_timer(&mut self) {
        let busy = self.tcp.len() > 0 || self.udp.len() > 0 || !self.children.is_empty();
        if busy && self.next_maintenance.is_none() {
            self.next_maintenance = Some(Instant::now() + MAINTENANCE);
        }
        let deadline = match (self.tcp.next_deadline(), self.next_maintenance) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.poller.arm_timer(deadline);
    }

    fn maintain(&mut self) {
        if self.next_maintenance.is_some_and(|t| t > Instant::now()) {
            return;
        }
        self.next_maintenance = None;
        let udp_left = self.udp.expire();
        if let Some(t) = self.tftp.as_mut() {
            t.expire();
        }
        let echo_left = self.echo.expire();
        for id in self.tcp.stale_handshakes() {
            self.counters.tcp_refused += 1;
            self.remove_flow(id, true);
        }
        self.children.retain_mut(|c| !c.has_exited());
        if udp_left || echo_left || self.tcp.len() > 0 || !self.children.is_empty() {
            self.next_maintenance = Some(Instant::now() + MAINTENANCE);
        }
    }

    /// Handles what the host sockets and the timer have.
    fn service(&mut self) {
        let mut ready = std::mem::take(&mut self.ready);
        if self.poller.poll_now(&mut ready).is_err() {
            ready.clear();
        }
        for event in &ready {
            match event.token {
                Token::Timer => {
                    self.tcp.on_timer(&mut self.out, &self.link, &mut self.dead);
                    self.maintain();
                }
                Token::Tcp(id) if self.tcp.connecting(id) => {
                    if event.writable || event.failed {
                        let error = self.tcp.host_error(id);
                        self.tcp_connected(id, error);
                    }
                }
                Token::Tcp(id) => {
                    let fate = self.tcp.host_event(
                        id,
                        event.readable,
                        event.writable,
                        event.failed,
                        &mut self.out,
                        &self.link,
                    );
                    self.flow_became(id, fate);
                }
                Token::Udp(id) => {
                    self.udp
                        .receive(id, &mut self.out, &self.link, &mut self.scratch)
                }
                Token::Icmp(id) => {
                    self.echo
                        .receive(id, &mut self.out, &self.link, &mut self.scratch)
                }
                Token::HostFwd(index) => match self.forwards.get(index as usize) {
                    Some(Forward::Tcp(..)) => self.forward_accept(index as usize),
                    Some(Forward::Udp(_)) => self.forward_datagrams(index as usize),
                    None => {}
                },
            }
        }
        self.ready = ready;
        self.settle();
    }

    /// What the guest's virtio-net driver accepts (TCP goes to it as GSO frames if it can).
    pub fn set_guest_offloads(&mut self, offloads: crate::Offloads) {
        self.out.offloads = offloads;
    }

    /// The guest's virtio-net header length (10 or 12).
    pub fn set_guest_header_len(&mut self, len: usize) {
        self.out.set_header_len(len);
    }

    /// The next frame for the guest (virtio-net header first) into `bufs`: a queued one, else
    /// a TCP data frame written straight into them, else what the host sockets and the timer
    /// bring.
    pub fn next_frame(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        for serviced in [false, true] {
            if serviced {
                self.service();
            }
            if let Some(n) = self.out.pop_into(bufs) {
                return Ok(n);
            }
            let written = self.tcp.next_data_frame(
                bufs,
                self.out.header_len(),
                self.out.offloads,
                &mut self.out,
                &self.link,
                &mut self.dead,
            );
            if !self.dead.is_empty() {
                self.settle();
            }
            if let Some(n) = written.or_else(|| self.out.pop_into(bufs)) {
                return Ok(n);
            }
        }
        Err(io::Error::from(io::ErrorKind::WouldBlock))
    }

    /// The counters, named for the stats query.
    pub fn counter_list(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        vec![
            ("malformed", c.malformed),
            ("unsupported", c.unsupported),
            ("fragments", c.fragments),
            ("restricted", c.restricted),
            ("tcp-refused", c.tcp_refused),
            ("tcp-retransmits", self.tcp.retransmits),
            ("flow-limit", c.flow_limit),
            ("udp-too-big", self.udp.drops.too_big),
            ("udp-send-failed", self.udp.drops.send_failed),
            ("queue-overflow", self.out.overflowed()),
            ("tcp-flows", self.tcp.len() as u64),
            ("udp-flows", self.udp.len() as u64),
        ]
    }

    /// Closes every flow (the netdev goes away).
    pub fn shutdown(&mut self) {
        for id in self.tcp.ids() {
            self.remove_flow(id, true);
        }
        for child in &mut self.children {
            child.kill();
        }
        self.children.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Opts;
    use smoltcp::wire::{TcpControl, TcpRepr, TcpSeqNumber};
    use std::net::TcpListener;

    fn stack(extra: &str) -> Stack {
        let mut opts = Opts::parse_keyval(&format!("user{extra}")).unwrap();
        opts.take_str("type").unwrap();
        Stack::new(
            UserOptions::from_opts(&mut opts).unwrap(),
            "/etc/resolv.conf".into(),
            Launcher::InProcess,
        )
        .unwrap()
    }

    const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn syn_frame(dst: Ipv4Addr, port: u16) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: port,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(1000),
            ack_number: None,
            window_len: 64240,
            window_scale: None,
            max_seg_size: Some(1460),
            sack_permitted: false,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload: &[],
        };
        tcp_frame(Ipv4Addr::new(10, 0, 2, 15).into(), dst.into(), &tcp)
    }

    /// A TCP segment from the guest at `src` to `dst` (one family), as Ethernet.
    fn tcp_frame(src: IpAddr, dst: IpAddr, tcp: &TcpRepr<'_>) -> Vec<u8> {
        let (ip_len, ethertype) = match src {
            IpAddr::V4(_) => (20, EthernetProtocol::Ipv4),
            IpAddr::V6(_) => (40, EthernetProtocol::Ipv6),
        };
        let mut frame = vec![0u8; 14 + ip_len + tcp.buffer_len()];
        super::super::guest_frames::write_eth(
            &mut frame,
            smoltcp::wire::EthernetAddress(GUEST_MAC),
            smoltcp::wire::EthernetAddress([0x52, 0x55, 10, 0, 2, 2]),
            ethertype,
        );
        let caps = smoltcp::phy::ChecksumCapabilities::default();
        let payload_len = tcp.buffer_len();
        let segment = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut packet = Ipv4Packet::new_unchecked(&mut frame[14..]);
                super::super::guest_frames::ipv4_repr(s, d, IpProtocol::Tcp, payload_len)
                    .emit(&mut packet, &caps);
                &mut frame[14 + 20..]
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut packet = Ipv6Packet::new_unchecked(&mut frame[14..]);
                super::super::guest_frames::ipv6_repr(s, d, IpProtocol::Tcp, payload_len)
                    .emit(&mut packet);
                &mut frame[14 + 40..]
            }
            _ => panic!("one family"),
        };
        tcp.emit(
            &mut TcpPacket::new_unchecked(segment),
            &src.into(),
            &dst.into(),
            &caps,
        );
        frame
    }

    fn take_frames(s: &mut Stack) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 70_000];
        while let Ok(n) = s.next_frame(&mut [IoSliceMut::new(&mut buf)]) {
            frames.push(buf[12..n].to_vec());
        }
        frames
    }

    fn tcp_flags(frame: &[u8]) -> (bool, bool, bool) {
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        (tcp.syn(), tcp.ack(), tcp.rst())
    }

    /// Waits up to 100 ms for the stack's descriptor (host sockets, timer) to be readable.
    fn wait_readable(s: &Stack) {
        let mut pfd = [libc::pollfd {
            fd: s.fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        sys::poll(&mut pfd, 100).unwrap();
    }

    /// Services the stack until it has a frame for the guest (waiting on its descriptor).
    fn wait_frames(s: &mut Stack) -> Vec<Vec<u8>> {
        for _ in 0..50 {
            let frames = take_frames(s);
            if !frames.is_empty() {
                return frames;
            }
            wait_readable(s);
        }
        Vec::new()
    }

    #[test]
    fn a_refused_host_port_is_a_reset_and_an_open_one_a_syn_ack() {
        let mut s = stack("");
        // Nothing listens on this loopback port (bound and closed to find a free one).
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        s.guest_frame(&syn_frame(Ipv4Addr::new(10, 0, 2, 2), closed));
        s.guest_frames_done();
        let frames = wait_frames(&mut s);
        assert_eq!(frames.len(), 1);
        assert_eq!(tcp_flags(&frames[0]), (false, true, true), "RST+ACK");
        assert_eq!(s.counters.tcp_refused, 1);
        assert_eq!(s.tcp.len(), 0);

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().port();
        s.guest_frame(&syn_frame(Ipv4Addr::new(10, 0, 2, 2), open));
        s.guest_frames_done();
        let frames = wait_frames(&mut s);
        assert_eq!(frames.len(), 1);
        assert_eq!(tcp_flags(&frames[0]), (true, true, false), "SYN+ACK");
        // The guest hears the link's MSS, with a valid checksum over the options.
        let ip = Ipv4Packet::new_checked(&frames[0][14..]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        let repr = TcpRepr::parse(
            &tcp,
            &ip.src_addr().into(),
            &ip.dst_addr().into(),
            &smoltcp::phy::ChecksumCapabilities::default(),
        )
        .unwrap();
        assert_eq!(repr.max_seg_size, Some(1460));
        assert!(listener.accept().is_ok(), "the host side connected");
    }

    /// The guest's end of a flow opened by [`open_flow`].
    struct GuestEnd {
        port: u16,
        /// The guest's next sequence number.
        seq: u32,
        /// The stack's next sequence number (what the guest acknowledges).
        ack: u32,
        /// Whether the stack's SYN-ACK permitted SACK.
        sack: bool,
    }

    const GATEWAY6: &str = "fec0::2";
    const GUEST6: &str = "fec0::15";

    /// A segment from the guest's end of a flow to the host through fec0::2.
    fn guest_segment(
        port: u16,
        seq: u32,
        ack: u32,
        control: TcpControl,
        payload: &[u8],
    ) -> Vec<u8> {
        let repr = TcpRepr {
            src_port: 40000,
            dst_port: port,
            control,
            seq_number: TcpSeqNumber(i32::from_ne_bytes(seq.to_ne_bytes())),
            ack_number: Some(TcpSeqNumber(i32::from_ne_bytes(ack.to_ne_bytes()))),
            // 512 KiB (scale 7).
            window_len: 4096,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload,
        };
        let gateway: Ipv6Addr = GATEWAY6.parse().unwrap();
        tcp_frame(GUEST6.parse().unwrap(), gateway.into(), &repr)
    }

    /// A bare acknowledgement from the guest's end of a flow.
    fn guest_ack(end: &GuestEnd) -> Vec<u8> {
        guest_segment(end.port, end.seq, end.ack, TcpControl::None, &[])
    }

    /// Opens a flow from the guest to the host's `[::1]` through fec0::2 and completes the
    /// handshake (offering SACK if `sack`); returns the host's end and the guest's.
    fn open_flow(s: &mut Stack, sack: bool) -> (std::net::TcpStream, GuestEnd) {
        let listener = TcpListener::bind("[::1]:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let gateway: Ipv6Addr = GATEWAY6.parse().unwrap();
        let repr = TcpRepr {
            src_port: 40000,
            dst_port: port,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(1000),
            ack_number: None,
            window_len: 65535,
            window_scale: Some(7),
            max_seg_size: Some(1440),
            sack_permitted: sack,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload: &[],
        };
        s.guest_frame(&tcp_frame(GUEST6.parse().unwrap(), gateway.into(), &repr));
        s.guest_frames_done();
        let (host, _) = listener.accept().unwrap();
        let synack = wait_frames(s);
        let ip = Ipv6Packet::new_checked(&synack[0][14..]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.syn() && tcp.ack());
        assert_eq!(tcp.ack_number(), TcpSeqNumber(1001));
        let options = TcpRepr::parse(
            &tcp,
            &ip.src_addr().into(),
            &ip.dst_addr().into(),
            &ChecksumCapabilities::default(),
        )
        .unwrap();
        let end = GuestEnd {
            port,
            seq: 1001,
            ack: (tcp.seq_number() + 1).0 as u32,
            sack: options.sack_permitted,
        };
        // The handshake's last ACK, opening a 512 KiB window.
        s.guest_frame(&guest_segment(
            port,
            end.seq,
            end.ack,
            TcpControl::None,
            &[],
        ));
        s.guest_frames_done();
        (host, end)
    }

    fn open_v6_flow(s: &mut Stack) -> std::net::TcpStream {
        open_flow(s, false).0
    }

    /// The TCP header fields and payload of a frame for the guest.
    fn tcp_of(frame: &[u8]) -> (u32, u32, Vec<(u32, u32)>, Vec<u8>, bool) {
        let ip = Ipv6Packet::new_checked(&frame[14..]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        let repr = TcpRepr::parse(
            &tcp,
            &ip.src_addr().into(),
            &ip.dst_addr().into(),
            &ChecksumCapabilities::default(),
        )
        .unwrap();
        let sacks = repr
            .sack_ranges
            .iter()
            .flatten()
            .map(|&(a, b)| (a, b))
            .collect();
        (
            tcp.seq_number().0 as u32,
            tcp.ack_number().0 as u32,
            sacks,
            tcp.payload().to_vec(),
            tcp.fin(),
        )
    }

    /// A download over a guest that loses every fifth data frame and acknowledges only what it
    /// has in order (no SACK), keeping what came past a gap or not: the stack sends the lost
    /// bytes again (from the host socket, or from its ring where the kernel keeps none), takes
    /// acknowledgements past what it sent again, and the guest gets every byte once, in order.
    /// Without loss, a ring far smaller than the guest's window fills and is read again as the
    /// guest acknowledges.
    #[test]
    fn a_download_survives_frames_the_guest_lost() {
        // A ring far smaller than the guest's window fills, and must be read again once the
        // guest acknowledges.
        for (ring, keeps, lossy) in [
            (false, false, true),
            (false, true, true),
            (true, true, true),
            (true, false, false),
        ] {
            let mut s = stack("");
            if ring {
                s.tcp.force_ring(16 << 10);
            }
            let (mut host, mut end) = open_flow(&mut s, false);
            let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
            std::io::Write::write_all(&mut host, &sent).unwrap();
            drop(host);
            let mut got = Vec::new();
            let mut held = std::collections::BTreeMap::new();
            let mut frames_seen = 0;
            let mut fin = false;
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let frames = take_frames(&mut s);
                for frame in &frames {
                    let (seq, _, _, payload, f) = tcp_of(frame);
                    if !payload.is_empty() {
                        frames_seen += 1;
                        if lossy && frames_seen % 5 == 0 {
                            continue;
                        }
                    }
                    if keeps || seq == end.ack {
                        held.insert(seq, (payload, f));
                    }
                    // Take in what continues the stream: a segment from at or before the next
                    // byte expected, reaching past it.
                    let covers = |at: u32, len: usize, f: bool, next: u32| {
                        let d = super::super::tcp_seq::delta(next, at);
                        d >= 0 && d.unsigned_abs() < len as u32 + u32::from(f)
                    };
                    while let Some((&at, _)) = held
                        .iter()
                        .find(|(&at, (p, f))| covers(at, p.len(), *f, end.ack))
                    {
                        let (payload, f) = held.remove(&at).unwrap();
                        got.extend_from_slice(&payload[end.ack.wrapping_sub(at) as usize..]);
                        end.ack = at.wrapping_add(payload.len() as u32);
                        if f {
                            end.ack = end.ack.wrapping_add(1);
                            fin = true;
                        }
                    }
                    held.retain(|&at, (p, _)| {
                        super::super::tcp_seq::after(at.wrapping_add(p.len() as u32), end.ack)
                    });
                    s.guest_frame(&guest_ack(&end));
                }
                s.guest_frames_done();
                if fin {
                    break;
                }
                if frames.is_empty() {
                    wait_readable(&s);
                }
            }
            assert!(
                fin,
                "ring={ring} keeps={keeps}: no FIN after {} bytes",
                got.len()
            );
            assert_eq!(got.len(), sent.len());
            assert!(got == sent, "payload differs");
            assert_eq!(s.tcp.retransmits > 0, lossy, "lost bytes were sent again");
            s.shutdown();
        }
    }

    /// After three duplicate acknowledgements the stack sends from the first unacknowledged
    /// byte again; when the guest then acknowledges what it had kept of the first sending, the
    /// stack goes on after it instead of sending that again.
    #[test]
    fn acknowledgements_past_what_was_sent_again_move_the_stack_on() {
        let mut s = stack("");
        let (mut host, end) = open_flow(&mut s, false);
        std::io::Write::write_all(&mut host, &[9u8; 3 * 1440]).unwrap();
        let mut first = Vec::new();
        while first.len() < 3 {
            first.extend(take_frames(&mut s).iter().map(|f| tcp_of(f)));
            if first.len() < 3 {
                wait_readable(&s);
            }
        }
        let starts: Vec<u32> = first.iter().map(|f| f.0).collect();
        assert_eq!(
            starts,
            [
                end.ack,
                end.ack.wrapping_add(1440),
                end.ack.wrapping_add(2880)
            ]
        );
        // The first frame is lost: three duplicate acknowledgements.
        for _ in 0..3 {
            s.guest_frame(&guest_ack(&end));
        }
        s.guest_frames_done();
        let mut buf = vec![0u8; 70_000];
        let n = s.next_frame(&mut [IoSliceMut::new(&mut buf)]).unwrap();
        assert_eq!(
            tcp_of(&buf[12..n]).0,
            end.ack,
            "sent again from the first byte"
        );
        // The guest had kept the other two: it acknowledges all three.
        let all = end.ack.wrapping_add(3 * 1440);
        s.guest_frame(&guest_segment(
            end.port,
            end.seq,
            all,
            TcpControl::None,
            &[],
        ));
        s.guest_frames_done();
        std::io::Write::write_all(&mut host, &[7u8; 100]).unwrap();
        let next = wait_frames(&mut s);
        let seqs: Vec<u32> = next.iter().map(|f| tcp_of(f).0).collect();
        assert_eq!(seqs, [all], "only the new bytes follow");
        assert_eq!(tcp_of(&next[0]).3, vec![7u8; 100]);
        s.shutdown();
    }

    /// A guest frame spread over buffers (a Linux guest's TSO frame: headers, then page
    /// fragments; here the first buffer even ends inside the TCP header) reaches the host from
    /// where its payload lies: nothing is put together.
    #[test]
    fn a_scattered_upload_is_written_from_the_guests_buffers() {
        let mut s = stack("");
        let (mut host, end) = open_flow(&mut s, false);
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 239) as u8).collect();
        let mut frame = vec![0u8; 12];
        frame.extend(guest_segment(
            end.port,
            end.seq,
            end.ack,
            TcpControl::Fin,
            &data,
        ));
        let cut = 12 + 14 + 40 + 13;
        let (a, rest) = frame.split_at(cut);
        let (b, c) = rest.split_at(1000);
        let bufs = [IoSlice::new(a), IoSlice::new(b), IoSlice::new(c)];
        let mut gather = Vec::new();
        assert_eq!(
            super::super::take(&mut s, &mut gather, 12, &bufs),
            frame.len()
        );
        s.guest_frames_done();
        assert_eq!(gather.capacity(), 0, "the frame was not put together");
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut host, &mut read).unwrap();
        assert!(read == data, "the host read {} bytes", read.len());
        // Anything else is put together as before: a frame too short for its headers.
        let short = [
            IoSlice::new(&frame[..12]),
            IoSlice::new(&frame[12..40]),
            IoSlice::new(&[]),
        ];
        super::super::take(&mut s, &mut gather, 12, &short);
        assert!(gather.capacity() > 0);
        s.shutdown();
    }

    /// An upload whose third segment the guest sends last: the segments past the gap are held
    /// and acknowledged selectively, and the host reads every byte in order once the gap fills.
    #[test]
    fn an_upload_with_a_gap_is_held_and_selectively_acknowledged() {
        let mut s = stack("");
        let (mut host, end) = open_flow(&mut s, true);
        assert!(end.sack, "SACK permitted in the SYN-ACK");
        let data: Vec<u8> = (0..10 * 1000u32).map(|i| (i % 241) as u8).collect();
        let chunk = |i: usize| &data[i * 1000..(i + 1) * 1000];
        let at = |i: usize| end.seq.wrapping_add(1000 * i as u32);
        for i in (0..10).filter(|&i| i != 2) {
            let control = if i == 9 {
                TcpControl::Fin
            } else {
                TcpControl::None
            };
            s.guest_frame(&guest_segment(end.port, at(i), end.ack, control, chunk(i)));
        }
        s.guest_frames_done();
        let acks: Vec<_> = take_frames(&mut s).iter().map(|f| tcp_of(f)).collect();
        let (_, ack, sacks, _, _) = acks.last().unwrap().clone();
        assert_eq!(ack, at(2), "acknowledged up to the gap");
        assert_eq!(sacks, vec![(at(3), at(10))], "the held segments");
        s.guest_frame(&guest_segment(
            end.port,
            at(2),
            end.ack,
            TcpControl::None,
            chunk(2),
        ));
        s.guest_frames_done();
        let (_, ack, sacks, _, _) = take_frames(&mut s).last().map(|f| tcp_of(f)).unwrap();
        assert_eq!(ack, at(10).wrapping_add(1), "everything and the FIN");
        assert!(sacks.is_empty());
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut host, &mut read).unwrap();
        assert!(read == data, "the host read {} bytes, in order", read.len());
        s.shutdown();
    }

    #[test]
    fn an_ipv6_download_reaches_a_tso_guest_as_gso_frames() {
        let mut s = stack("");
        s.set_guest_offloads(crate::Offloads {
            csum: true,
            tso4: true,
            tso6: true,
            ..Default::default()
        });
        let mut host = open_v6_flow(&mut s);
        std::io::Write::write_all(&mut host, &vec![7u8; 256 << 10]).unwrap();
        let mut largest = (0, 0u8, 0u16);
        for _ in 0..20 {
            let mut buf = vec![0u8; 70_000];
            while let Ok(n) = s.next_frame(&mut [IoSliceMut::new(&mut buf)]) {
                if n > largest.0 {
                    largest = (n, buf[1], u16::from_le_bytes([buf[4], buf[5]]));
                }
            }
            if largest.0 > 12 + 1514 {
                break;
            }
            wait_readable(&s);
        }
        // VIRTIO_NET_HDR_GSO_TCPV6 (4), cut at the MSS the guest announced.
        assert!(largest.0 > 12 + 1514, "largest frame {} bytes", largest.0);
        assert_eq!((largest.1, largest.2), (4, 1440));
        s.shutdown();
    }

    /// A guest without offloads gets MSS-sized segments with full checksums, the same whether
    /// its first buffer holds the frame or only part of the headers (the frame then spans its
    /// buffers).
    #[test]
    fn segments_are_whole_in_one_buffer_and_across_buffers() {
        let mut s = stack("");
        let mut host = open_v6_flow(&mut s);
        let sent: Vec<u8> = (0..64 << 10).map(|i: u32| (i % 251) as u8).collect();
        std::io::Write::write_all(&mut host, &sent).unwrap();
        let mut got = Vec::new();
        let (mut small, mut big) = (vec![0u8; 100], vec![0u8; 70_000]);
        for round in 0..200 {
            // Alternate a roomy buffer and a header-sized one followed by room.
            let n = if round % 2 == 0 {
                s.next_frame(&mut [IoSliceMut::new(&mut big)])
            } else {
                let n = s.next_frame(&mut [IoSliceMut::new(&mut small), IoSliceMut::new(&mut big)]);
                if let Ok(n) = n {
                    let mut joined = small.clone();
                    joined.extend_from_slice(&big[..n.saturating_sub(100)]);
                    big[..n].copy_from_slice(&joined[..n]);
                }
                n
            };
            let Ok(n) = n else {
                if got.len() == sent.len() {
                    break;
                }
                wait_readable(&s);
                continue;
            };
            let frame = &big[12..n];
            assert!(frame.len() <= 1514, "{} bytes", frame.len());
            let ip = Ipv6Packet::new_checked(&frame[14..]).unwrap();
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            assert!(
                tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()),
                "round {round}"
            );
            got.extend_from_slice(tcp.payload());
        }
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "payload differs");
        s.shutdown();
    }

    #[test]
    fn a_guest_opening_connections_without_end_is_capped() {
        crate::sys::raise_fd_limit();
        let mut s = stack("");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let max = super::super::tcp_flows::MAX_FLOWS;
        for i in 0..max + 50 {
            let mut syn = syn_frame(Ipv4Addr::new(10, 0, 2, 2), port);
            // A different guest source port per connection (bytes 34..36: TCP source port).
            syn[34..36].copy_from_slice(&(10_000 + i as u16).to_be_bytes());
            s.guest_frame(&syn);
        }
        s.guest_frames_done();
        assert_eq!(s.tcp.len(), max);
        assert_eq!(s.counters.flow_limit, 50);
        // The refused ones got resets, not silence.
        let resets = take_frames(&mut s)
            .iter()
            .filter(|f| tcp_flags(f).2)
            .count();
        assert!(resets >= 50, "{resets} resets");
        s.shutdown();
        assert_eq!(s.tcp.len(), 0);
    }

    #[test]
    fn restrict_drops_outbound_connections() {
        let mut s = stack(",restrict=on");
        s.guest_frame(&syn_frame(Ipv4Addr::new(10, 0, 2, 2), 80));
        s.guest_frames_done();
        assert!(take_frames(&mut s).is_empty());
        assert_eq!(s.counters.restricted, 1);
    }

    #[test]
    fn hostile_frames_are_counted_never_fatal() {
        let mut s = stack("");
        let valid = syn_frame(Ipv4Addr::new(10, 0, 2, 2), 9);
        let mut x: u32 = 0x9e37_79b9;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for round in 0..20_000 {
            let mut frame = valid.clone();
            // Truncate and flip bytes anywhere past the Ethernet addresses.
            frame.truncate(12 + (next() as usize % (valid.len() - 11)));
            for _ in 0..(round % 4) {
                let at = 12 + next() as usize % (frame.len().max(13) - 12);
                if at < frame.len() {
                    frame[at] = next() as u8;
                }
            }
            s.guest_frame(&frame);
            if round % 64 == 0 {
                s.guest_frames_done();
                take_frames(&mut s);
            }
        }
        s.guest_frames_done();
        assert!(s.counters.malformed > 0);
        assert!(s.tcp.len() <= super::super::tcp_flows::MAX_FLOWS);
    }
}
