//! TCP flows: each of the guest's connections spliced to a host socket by a TCP of the stack's
//! own, which keeps no copy of the data in either direction (ARCHITECTURE.md, "The user stack's
//! TCP").
//!
//! The guest's TCP does the work of a TCP: it retransmits what it sent and acknowledges what it
//! got. This end only translates between its segments and the host socket's byte stream:
//! - Toward the guest, data stays in the host socket until the guest acknowledges it
//!   ([`HostStream`]): a segment is peeked straight into the guest's receive buffer, an
//!   acknowledgement drops its bytes, and a loss (a retransmission timeout or three duplicate
//!   acknowledgements) sends everything from the first unacknowledged byte again.
//! - From the guest, data in order is written to the host socket straight from the guest's frame
//!   and acknowledged; what the socket cannot take yet is kept, up to the window announced.
//!   Data out of order is dropped with a duplicate acknowledgement: the guest sends it again.
//!
//! An outbound flow starts when the guest's SYN arrives: the host connection is made first, and
//! only then does the guest get a SYN-ACK (a refused connection is a reset). An inbound flow
//! (`hostfwd`) sends the guest a SYN once the host client is accepted.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use smoltcp::wire::{TcpControl, TcpRepr};

use super::guest_frames::{GuestFrames, LinkAddrs, MTU};
use super::host_stream::HostStream;
use super::poller::{Poller, Token};
use super::tcp_frame::{self, DataShape, Segment, TcpOptions, ACK, FIN, PSH, RST, SYN};
use super::tcp_reassembly::OutOfOrder;
use super::tcp_seq::{self, after};
use crate::launcher::Spawned;
use crate::{sys, Offloads};

/// Most TCP flows at once; a SYN beyond this is answered with a reset.
pub const MAX_FLOWS: usize = 1024;
/// The window toward the guest by how many flows exist: what this end keeps of the guest's data
/// when the host socket is full (and, on kernels without `SO_PEEK_OFF`, the ring of data toward
/// the guest). The first few get room for a bulk transfer at full speed, later ones less,
/// bounding memory overall; memory is only taken when the host is slower than the guest.
const BUFFER_TIERS: [(usize, usize); 2] = [(4, 2 << 20), (64, 256 << 10)];
const SMALL_BUFFER: usize = 16 * 1024;
/// A flow that does not reach the established state within this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// The guest must acknowledge data within this, or the flow is reset.
const ACK_TIMEOUT: Duration = Duration::from_secs(120);
/// The retransmission timeout before the guest's round trip is measured (RFC 6298); after, the
/// smoothed round trip plus four deviations, at least [`RTO_MIN`] (as Linux: the guest is a ring
/// away, but may be a slow emulated one). It doubles on each expiry, up to [`RTO_MAX`].
const RTO_INITIAL: Duration = Duration::from_secs(1);
const RTO_MIN: Duration = Duration::from_millis(200);
const RTO_MAX: Duration = Duration::from_secs(30);
/// The window scale this end announces (when the guest offers scaling).
const WINDOW_SHIFT: u8 = 7;
/// The guest's MSS when its SYN names none (RFC 9293).
const DEFAULT_MSS: u16 = 536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The host connection is under way; the guest's SYN waits.
    Connecting,
    /// This end's SYN went to the guest (an inbound flow).
    SynSent,
    /// This end's SYN-ACK went to the guest.
    SynReceived,
    Established,
}

/// What became of a flow after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowFate {
    Alive,
    /// Both sides closed in order.
    Finished,
    /// One side failed or reset: the host socket is reset (the guest was told, if it must be).
    Aborted,
}

/// What the guest's SYN said.
#[derive(Debug, Clone, Copy)]
pub struct GuestSyn {
    pub seq: u32,
    pub window: u16,
    pub mss: Option<u16>,
    pub shift: Option<u8>,
    pub sack: bool,
}

impl GuestSyn {
    pub fn of(repr: &TcpRepr<'_>) -> GuestSyn {
        GuestSyn {
            seq: repr.seq_number.0 as u32,
            window: repr.window_len,
            mss: repr.max_seg_size,
            shift: repr.window_scale,
            sack: repr.sack_permitted,
        }
    }
}

/// One spliced connection.
#[derive(Debug)]
pub struct TcpFlow {
    pub host: HostStream,
    pub guest: SocketAddr,
    /// The peer address as the guest sees it.
    pub remote: SocketAddr,
    /// A `guestfwd=...-cmd:` process serving this connection.
    pub child: Option<Spawned>,
    phase: Phase,
    born: Instant,
    // Toward the guest.
    iss: u32,
    snd_una: u32,
    snd_nxt: u32,
    /// The highest sequence number sent (data sent below it after a rewind is sent again).
    snd_max: u32,
    /// The guest's window, in bytes.
    snd_wnd: u32,
    snd_shift: u8,
    /// Payload per segment toward the guest.
    mss: u16,
    /// Our FIN went out since the last rewind.
    fin_sent: bool,
    /// Where our FIN is in sequence space, once sent.
    fin_seq: Option<u32>,
    dup_acks: u8,
    /// Times everything in flight was sent again, not yet counted in the table's total.
    rewinds: u32,
    /// One byte may go past a closed window (a window probe).
    probe: bool,
    // From the guest.
    rcv_nxt: u32,
    rcv_shift: u8,
    /// What this end keeps of the guest's data at most.
    rcv_buf: usize,
    fin_received: bool,
    /// Data past a gap, held until the gap is filled.
    out_of_order: OutOfOrder,
    /// Both ends do selective acknowledgements.
    sack: bool,
    /// Duplicate acknowledgements owed (segments past a gap), beyond the one `ack_due` sends.
    dup_acks_owed: u8,
    // Timers.
    rto: Duration,
    /// The guest's smoothed round trip and its deviation, once measured.
    srtt: Option<(Duration, Duration)>,
    /// The segment end being timed and when it was sent (none while sending again: Karn).
    timing: Option<(u32, Instant)>,
    rtx_at: Option<Instant>,
    last_progress: Instant,
    // Output wanted.
    ack_due: bool,
    host_readable: bool,
    listed: bool,
}

impl TcpFlow {
    fn segment(&self, flags: u8) -> Segment {
        Segment {
            from: self.remote,
            to: self.guest,
            seq: self.snd_nxt,
            ack: self.rcv_nxt,
            flags,
            window: self.window_field(),
            options: TcpOptions::default(),
        }
    }

    /// An acknowledgement, with the blocks held past a gap when SACK is on.
    fn ack_segment(&self) -> Segment {
        let mut seg = self.segment(ACK);
        if self.sack && !self.out_of_order.is_empty() {
            let (blocks, count) = self.out_of_order.blocks();
            seg.options.sack(&blocks[..count.min(3)]);
        }
        seg
    }

    fn window_field(&self) -> u16 {
        let free = self.rcv_buf.saturating_sub(self.host.staged());
        (free >> self.rcv_shift).min(usize::from(u16::MAX)) as u16
    }

    fn send_syn(&mut self, out: &mut GuestFrames, link: &LinkAddrs) {
        let mut seg = self.segment(SYN);
        seg.seq = self.iss;
        let offer = self.phase == Phase::SynSent;
        seg.options.mss(link_mss(self.guest));
        if self.rcv_shift > 0 || offer {
            seg.options.window_scale(WINDOW_SHIFT);
        }
        if self.sack || offer {
            seg.options.sack_permitted();
        }
        // A SYN's window is never scaled.
        seg.window = self.rcv_buf.min(usize::from(u16::MAX)) as u16;
        if self.phase == Phase::SynReceived {
            seg.flags |= ACK;
        }
        tcp_frame::push_control(out, link, &seg);
    }

    fn reset_guest(&self, out: &mut GuestFrames, link: &LinkAddrs) {
        let mut seg = self.segment(RST | ACK);
        seg.window = 0;
        tcp_frame::push_control(out, link, &seg);
    }

    fn arm(&mut self, now: Instant) {
        self.rtx_at = Some(now + self.rto);
    }

    /// Bytes the guest's window still takes.
    fn window_left(&self) -> u32 {
        let limit = self
            .snd_una
            .wrapping_add(self.snd_wnd.max(u32::from(self.probe)));
        if after(limit, self.snd_nxt) {
            limit.wrapping_sub(self.snd_nxt)
        } else {
            0
        }
    }

    /// Whether a data frame or our FIN may be due.
    fn may_send(&self) -> bool {
        self.phase == Phase::Established
            && !self.fin_sent
            && (self.host_readable || self.host.eof)
            && (self.window_left() > 0 || self.host.eof)
    }

    /// Counts `len` sequence numbers as sent; true if none of them was sent before (not a
    /// retransmission).
    fn sent(&mut self, len: u32) -> bool {
        let new = !after(self.snd_max, self.snd_nxt);
        self.snd_nxt = self.snd_nxt.wrapping_add(len);
        if after(self.snd_nxt, self.snd_max) {
            self.snd_max = self.snd_nxt;
        }
        new
    }

    /// Sends everything unacknowledged again.
    fn rewind(&mut self) -> io::Result<()> {
        self.host.rewind()?;
        self.snd_nxt = self.snd_una;
        self.fin_sent = false;
        self.dup_acks = 0;
        self.rewinds += 1;
        self.timing = None;
        // The bytes in flight are in the socket (or ring) still.
        self.host_readable = true;
        Ok(())
    }

    fn finished(&self) -> bool {
        self.phase == Phase::Established
            && self.fin_received
            && self.host.write_shut
            && self
                .fin_seq
                .is_some_and(|fin| self.snd_una == fin.wrapping_add(1))
    }

    /// An acknowledgement and window from the guest.
    fn on_ack(&mut self, ack: u32, window: u16, bare: bool, now: Instant) -> io::Result<()> {
        let wnd = u32::from(window) << self.snd_shift;
        // The guest is alive: only silence times a flow out.
        self.last_progress = now;
        if after(ack, self.snd_max) {
            // Acknowledges what was never sent: answer with where this end is.
            self.ack_due = true;
            return Ok(());
        }
        if after(ack, self.snd_una) {
            let data_acked = match self.fin_seq {
                Some(fin) if after(ack, fin) => fin,
                _ => ack,
            };
            if self
                .host
                .acknowledged(data_acked.wrapping_sub(self.snd_una) as usize)?
            {
                // The host socket is read again: no new readiness comes for bytes already there.
                self.host_readable = true;
            }
            self.snd_una = ack;
            if after(ack, self.snd_nxt) {
                // Sent before a rewind and not sent again yet: not to be sent again.
                self.snd_nxt = ack;
                self.fin_sent = self.fin_seq.is_some_and(|fin| ack == fin.wrapping_add(1));
            }
            self.dup_acks = 0;
            self.probe = false;
            if let Some((end, sent)) = self.timing {
                if !after(end, ack) {
                    self.timing = None;
                    self.sample_rtt(now.saturating_duration_since(sent));
                }
            }
            self.rto = self.srtt.map_or(RTO_INITIAL, |(srtt, var)| {
                (srtt + 4 * var).clamp(RTO_MIN, RTO_MAX)
            });
            self.rtx_at = (self.snd_una != self.snd_nxt).then(|| now + self.rto);
        } else if ack == self.snd_una && bare && self.snd_nxt != self.snd_una && wnd == self.snd_wnd
        {
            self.dup_acks += 1;
            if self.dup_acks == 3 {
                self.rewind()?;
            }
        }
        self.snd_wnd = wnd;
        if self.snd_wnd > 0 {
            self.probe = false;
        }
        Ok(())
    }

    /// Folds a round-trip sample into the estimate (RFC 6298, 2.2 and 2.3).
    fn sample_rtt(&mut self, rtt: Duration) {
        self.srtt = Some(match self.srtt {
            None => (rtt, rtt / 2),
            Some((srtt, var)) => {
                let delta = srtt.abs_diff(rtt);
                (srtt * 7 / 8 + rtt / 8, var * 3 / 4 + delta / 4)
            }
        });
    }

    /// Data (and FIN) from the guest at `seq`: the bytes of `payload`'s pieces, in guest memory.
    fn on_data(&mut self, seq: u32, payload: &[&[u8]], fin: bool) -> io::Result<()> {
        let len: usize = payload.iter().map(|p| p.len()).sum();
        if len == 0 && !fin {
            return Ok(());
        }
        self.ack_due = true;
        if self.fin_received {
            return Ok(());
        }
        let offset = tcp_seq::delta(self.rcv_nxt, seq);
        if offset < 0 {
            // Past a gap: held (within the window) until the guest fills the gap, and each such
            // segment is acknowledged at once, as duplicate acknowledgements tell of the loss.
            if seq.wrapping_sub(self.rcv_nxt) < self.rcv_buf as u32 {
                let limit = self.rcv_buf.saturating_sub(self.host.staged());
                self.out_of_order
                    .hold(self.rcv_nxt, seq, payload, fin, limit);
            }
            self.dup_acks_owed = self.dup_acks_owed.saturating_add(1);
            return Ok(());
        }
        if !self.take_in_order(offset.unsigned_abs() as usize, payload, len, fin)? {
            return Ok(());
        }
        while let Some(held) = self.out_of_order.take_next(self.rcv_nxt) {
            let offset = self.rcv_nxt.wrapping_sub(held.seq) as usize;
            if !self.take_in_order(offset, &[&held.data], held.data.len(), held.fin)? {
                break;
            }
        }
        Ok(())
    }

    /// Writes the new part of an in-order segment (from `offset`) to the host; passes its FIN
    /// on. Returns whether all of it was taken.
    fn take_in_order(
        &mut self,
        offset: usize,
        payload: &[&[u8]],
        len: usize,
        fin: bool,
    ) -> io::Result<bool> {
        if offset > len {
            // All of it came before.
            return Ok(false);
        }
        let room = self.rcv_buf.saturating_sub(self.host.staged());
        let taken = self.host.write(payload, offset, room)?;
        self.rcv_nxt = self.rcv_nxt.wrapping_add(taken as u32);
        if taken < len - offset {
            return Ok(false);
        }
        if fin {
            self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
            self.fin_received = true;
            self.host.shut_write()?;
        }
        Ok(true)
    }
}

/// The MSS of the guest's link for a flow's IP version.
fn link_mss(guest: SocketAddr) -> u16 {
    let ip = if guest.is_ipv4() { 20 } else { 40 };
    (MTU - ip - 20) as u16
}

/// The flow table.
#[derive(Debug)]
pub struct TcpFlows {
    flows: HashMap<u64, TcpFlow>,
    by_tuple: HashMap<(SocketAddr, SocketAddr), u64>,
    next_id: u64,
    /// Flows that may have a data frame for the guest, in turn.
    sendable: VecDeque<u64>,
    /// Flows owing the guest an acknowledgement.
    acks_due: Vec<u64>,
    isn_key: RandomState,
    /// Keep data toward the guest in a ring of ours (of this size) whatever the kernel offers
    /// (tests).
    force_ring: Option<usize>,
    /// Whether host sockets to near peers may get a bounded receive buffer (found out once).
    near_buffer: Option<bool>,
    /// Times data was sent again toward the guest.
    pub retransmits: u64,
}

impl Default for TcpFlows {
    fn default() -> Self {
        TcpFlows {
            flows: HashMap::new(),
            by_tuple: HashMap::new(),
            next_id: 0,
            sendable: VecDeque::new(),
            acks_due: Vec::new(),
            isn_key: RandomState::new(),
            force_ring: None,
            near_buffer: None,
            retransmits: 0,
        }
    }
}

impl TcpFlows {
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_full(&self) -> bool {
        self.flows.len() >= MAX_FLOWS
    }

    /// Keeps data toward the guest in rings of `size` bytes (as on kernels without
    /// `SO_PEEK_OFF`).
    #[cfg(test)]
    pub fn force_ring(&mut self, size: usize) {
        self.force_ring = Some(size);
    }

    /// The flow of a (guest, remote) pair.
    pub fn find(&self, guest: SocketAddr, remote: SocketAddr) -> Option<u64> {
        self.by_tuple.get(&(guest, remote)).copied()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.flows.keys().copied().collect()
    }

    /// Whether a remote port is in use toward `guest` (for choosing `hostfwd` source ports).
    pub fn in_use(&self, guest: SocketAddr, remote: SocketAddr) -> bool {
        self.by_tuple.contains_key(&(guest, remote))
    }

    /// Whether the flow's host connection is still being made.
    pub fn connecting(&self, id: u64) -> bool {
        self.flows
            .get(&id)
            .is_some_and(|f| f.phase == Phase::Connecting)
    }

    /// The pending error of a flow's host socket (a connection that failed).
    pub fn host_error(&self, id: u64) -> io::Result<()> {
        match self.flows.get(&id) {
            Some(f) => sys::take_socket_error(f.host.fd()),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    /// Whether a flow may have a frame for the guest.
    pub fn has_output(&self) -> bool {
        !self.sendable.is_empty()
    }

    fn isn(&self, guest: SocketAddr, remote: SocketAddr) -> u32 {
        if cfg!(fuzzing) {
            // A fuzzer's input can only complete a handshake whose numbers it can know.
            return 1000;
        }
        let hash = self.isn_key.hash_one((guest, remote));
        // RFC 6528: a keyed hash of the connection plus a clock ticking every 4 µs.
        let ticks = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() / 4) as u32;
        (hash as u32).wrapping_add(ticks)
    }

    fn buffer_size(&self) -> usize {
        BUFFER_TIERS
            .iter()
            .find(|(flows, _)| self.flows.len() < *flows)
            .map_or(SMALL_BUFFER, |(_, size)| *size)
    }

    fn insert(
        &mut self,
        poller: &Poller,
        host: OwnedFd,
        guest: SocketAddr,
        remote: SocketAddr,
        phase: Phase,
    ) -> io::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        poller.add_edge(host.as_raw_fd(), Token::Tcp(id))?;
        let rcv_buf = self.buffer_size();
        let iss = self.isn(guest, remote);
        let now = Instant::now();
        let flow = TcpFlow {
            host: HostStream::new(
                host,
                self.force_ring.unwrap_or(rcv_buf),
                self.force_ring.is_some(),
            ),
            guest,
            remote,
            child: None,
            phase,
            born: now,
            iss,
            snd_una: iss,
            snd_nxt: iss.wrapping_add(1),
            snd_max: iss.wrapping_add(1),
            snd_wnd: 0,
            snd_shift: 0,
            mss: DEFAULT_MSS,
            fin_sent: false,
            fin_seq: None,
            dup_acks: 0,
            rewinds: 0,
            probe: false,
            rcv_nxt: 0,
            rcv_shift: 0,
            rcv_buf,
            fin_received: false,
            out_of_order: OutOfOrder::default(),
            sack: false,
            dup_acks_owed: 0,
            rto: RTO_INITIAL,
            srtt: None,
            timing: None,
            rtx_at: None,
            last_progress: now,
            ack_due: false,
            host_readable: false,
            listed: false,
        };
        self.flows.insert(id, flow);
        self.by_tuple.insert((guest, remote), id);
        Ok(id)
    }

    /// Registers a guest connection whose host socket `host` is connecting; the guest hears
    /// back once [`Self::connected`] is called.
    pub fn open_outbound(
        &mut self,
        poller: &Poller,
        host: OwnedFd,
        guest: SocketAddr,
        remote: SocketAddr,
        syn: GuestSyn,
        child: Option<Spawned>,
    ) -> io::Result<u64> {
        let id = self.insert(poller, host, guest, remote, Phase::Connecting)?;
        if let Some(f) = self.flows.get_mut(&id) {
            f.child = child;
            f.rcv_nxt = syn.seq.wrapping_add(1);
            f.snd_wnd = u32::from(syn.window);
            f.mss = syn.mss.unwrap_or(DEFAULT_MSS).clamp(64, link_mss(guest));
            f.sack = syn.sack;
            if let Some(shift) = syn.shift {
                f.snd_shift = shift.min(14);
                f.rcv_shift = WINDOW_SHIFT;
            }
        }
        Ok(id)
    }

    /// Bounds the receive buffer of flow `id`'s host socket if its peer is near.
    fn bound_if_near(&mut self, id: u64) {
        let allowed = *self
            .near_buffer
            .get_or_insert_with(super::host_stream::near_buffer_allowed);
        if let Some(f) = self.flows.get_mut(&id) {
            f.host.bound_if_near(allowed);
        }
    }

    /// The host connection of an outbound flow is made: the guest gets its SYN-ACK.
    pub fn connected(&mut self, id: u64, out: &mut GuestFrames, link: &LinkAddrs) {
        self.bound_if_near(id);
        if let Some(f) = self.flows.get_mut(&id) {
            f.phase = Phase::SynReceived;
            f.send_syn(out, link);
            f.arm(Instant::now());
        }
    }

    /// The host connection of an outbound flow failed: the guest gets a reset for its SYN.
    pub fn refused(&mut self, id: u64, out: &mut GuestFrames, link: &LinkAddrs) {
        if let Some(f) = self.flows.get(&id) {
            let mut seg = f.segment(RST | ACK);
            seg.seq = 0;
            seg.window = 0;
            tcp_frame::push_control(out, link, &seg);
        }
    }

    /// Registers a connection a host client made to a `hostfwd` rule and sends the guest a SYN.
    pub fn open_inbound(
        &mut self,
        poller: &Poller,
        host: OwnedFd,
        guest: SocketAddr,
        remote: SocketAddr,
        out: &mut GuestFrames,
        link: &LinkAddrs,
    ) -> io::Result<u64> {
        let id = self.insert(poller, host, guest, remote, Phase::SynSent)?;
        self.bound_if_near(id);
        if let Some(f) = self.flows.get_mut(&id) {
            f.snd_nxt = f.iss.wrapping_add(1);
            f.send_syn(out, link);
            f.arm(Instant::now());
        }
        Ok(id)
    }

    /// A segment from the guest for flow `id`.
    pub fn on_guest_segment(
        &mut self,
        id: u64,
        seg: &TcpRepr<'_>,
        payload: &[&[u8]],
        out: &mut GuestFrames,
        link: &LinkAddrs,
    ) -> FlowFate {
        let Some(f) = self.flows.get_mut(&id) else {
            return FlowFate::Finished;
        };
        let now = Instant::now();
        let seq = seg.seq_number.0 as u32;
        if seg.control == TcpControl::Rst {
            let acceptable = match f.phase {
                Phase::Connecting => true,
                Phase::SynSent => seg.ack_number.is_some_and(|a| a.0 as u32 == f.snd_nxt),
                _ => {
                    let window = (f.rcv_buf as u32).max(1);
                    seq.wrapping_sub(f.rcv_nxt) < window
                }
            };
            return if acceptable {
                FlowFate::Aborted
            } else {
                FlowFate::Alive
            };
        }
        let result = match f.phase {
            Phase::Connecting => Ok(()),
            Phase::SynSent => {
                if seg.control == TcpControl::Syn
                    && seg.ack_number.is_some_and(|a| a.0 as u32 == f.snd_nxt)
                {
                    f.rcv_nxt = seq.wrapping_add(1);
                    f.snd_una = f.snd_nxt;
                    f.mss = seg
                        .max_seg_size
                        .unwrap_or(DEFAULT_MSS)
                        .clamp(64, link_mss(f.guest));
                    f.sack = seg.sack_permitted;
                    match seg.window_scale {
                        Some(shift) => {
                            f.snd_shift = shift.min(14);
                            f.rcv_shift = WINDOW_SHIFT;
                        }
                        None => f.rcv_shift = 0,
                    }
                    // A SYN-ACK's window is not scaled.
                    f.snd_wnd = u32::from(seg.window_len);
                    f.phase = Phase::Established;
                    f.rtx_at = None;
                    f.last_progress = now;
                    f.ack_due = true;
                    f.host_readable = true;
                }
                Ok(())
            }
            Phase::SynReceived if seg.control == TcpControl::Syn => {
                // The guest did not hear our SYN-ACK.
                f.send_syn(out, link);
                Ok(())
            }
            Phase::SynReceived => match seg.ack_number {
                Some(a) if a.0 as u32 == f.snd_nxt => {
                    f.snd_una = f.snd_nxt;
                    f.phase = Phase::Established;
                    f.rtx_at = None;
                    f.last_progress = now;
                    f.host_readable = true;
                    f.snd_wnd = u32::from(seg.window_len) << f.snd_shift;
                    f.on_data(seq, payload, seg.control == TcpControl::Fin)
                }
                _ => Ok(()),
            },
            Phase::Established if seg.control == TcpControl::Syn => {
                f.ack_due = true;
                Ok(())
            }
            Phase::Established => {
                let bare = payload.iter().all(|p| p.is_empty()) && seg.control != TcpControl::Fin;
                match seg.ack_number {
                    Some(a) => f.on_ack(a.0 as u32, seg.window_len, bare, now),
                    None => Ok(()),
                }
                .and_then(|()| f.on_data(seq, payload, seg.control == TcpControl::Fin))
            }
        };
        self.after_event(id, result, out, link)
    }

    /// Host socket readiness for flow `id`.
    pub fn host_event(
        &mut self,
        id: u64,
        readable: bool,
        writable: bool,
        failed: bool,
        out: &mut GuestFrames,
        link: &LinkAddrs,
    ) -> FlowFate {
        let Some(f) = self.flows.get_mut(&id) else {
            return FlowFate::Finished;
        };
        let result = if failed {
            sys::take_socket_error(f.host.fd())
        } else {
            Ok(())
        };
        let result = result.and_then(|()| {
            if readable {
                f.host_readable = true;
            }
            if writable && f.host.staged() > 0 {
                let before = f.window_field();
                f.host.flush()?;
                // The guest hears of the room made.
                if f.window_field() > before {
                    f.ack_due = true;
                }
            }
            Ok(())
        });
        self.after_event(id, result, out, link)
    }

    /// Settles a flow after an event: it is listed for output, or reset if it failed.
    fn after_event(
        &mut self,
        id: u64,
        result: io::Result<()>,
        out: &mut GuestFrames,
        link: &LinkAddrs,
    ) -> FlowFate {
        let Some(f) = self.flows.get_mut(&id) else {
            return FlowFate::Finished;
        };
        self.retransmits += u64::from(std::mem::take(&mut f.rewinds));
        if let Err(e) = result {
            log::debug!("tcp {} -> {}: {e}", f.guest, f.remote);
            f.reset_guest(out, link);
            return FlowFate::Aborted;
        }
        if f.ack_due {
            self.acks_due.push(id);
        }
        if f.phase == Phase::Established && f.snd_wnd == 0 && f.host_readable && f.rtx_at.is_none()
        {
            // A closed window is probed if the guest's update does not come.
            f.arm(Instant::now());
        }
        if f.may_send() && !f.listed {
            f.listed = true;
            self.sendable.push_back(id);
        }
        if f.finished() {
            FlowFate::Finished
        } else {
            FlowFate::Alive
        }
    }

    /// Queues the acknowledgements the flows owe the guest (those a data frame did not carry).
    pub fn push_acks(&mut self, out: &mut GuestFrames, link: &LinkAddrs) {
        // The list is handed back emptied, its capacity kept: this runs after every batch.
        let mut due = std::mem::take(&mut self.acks_due);
        for id in due.drain(..) {
            if let Some(f) = self.flows.get_mut(&id) {
                if f.ack_due {
                    f.ack_due = false;
                    // With SACK one acknowledgement tells of every segment held; without, the
                    // guest counts duplicates (three start its fast retransmission).
                    let copies = if f.sack {
                        1
                    } else {
                        f.dup_acks_owed.clamp(1, 3)
                    };
                    f.dup_acks_owed = 0;
                    let seg = f.ack_segment();
                    for _ in 0..copies {
                        tcp_frame::push_control(out, link, &seg);
                    }
                }
            }
        }
        self.acks_due = due;
    }

    /// Writes the next data frame for the guest into `bufs` (a `hdr_len`-byte virtio-net header
    /// first): the host's bytes peeked straight into them. Flows take turns. A flow at the host's
    /// end of stream queues its FIN instead. Returns the bytes written, or `None` if no flow has
    /// data; flows that failed are added to `dead`.
    pub fn next_data_frame(
        &mut self,
        bufs: &mut [IoSliceMut<'_>],
        hdr_len: usize,
        offloads: Offloads,
        out: &mut GuestFrames,
        link: &LinkAddrs,
        dead: &mut Vec<(u64, bool)>,
    ) -> Option<usize> {
        while let Some(id) = self.sendable.pop_front() {
            let Some(f) = self.flows.get_mut(&id) else {
                continue;
            };
            f.listed = false;
            if !f.may_send() {
                continue;
            }
            let v4 = f.guest.is_ipv4();
            let tso = offloads.csum && if v4 { offloads.tso4 } else { offloads.tso6 };
            let per_frame = if tso {
                tcp_frame::PAYLOAD_MAX
            } else {
                usize::from(f.mss)
            };
            let max = per_frame.min(f.window_left() as usize);
            let seg = f.segment(ACK | PSH);
            let host = &mut f.host;
            let result = if max == 0 {
                // Nothing fits the window: only the end of stream can go.
                Ok((0, 0))
            } else {
                let shape = DataShape {
                    hdr_len,
                    offloads,
                    mss: f.mss,
                    max_payload: max,
                };
                tcp_frame::write_data(bufs, link, &seg, shape, |parts| {
                    host.next_to_send(parts, !tso)
                })
            };
            match result {
                Ok((n, len)) if len > 0 => {
                    if f.sent(len as u32) && f.timing.is_none() {
                        // New data, not sent before: timed if nothing is (Karn).
                        f.timing = Some((f.snd_nxt, Instant::now()));
                    }
                    // The frame acknowledges too (SACK blocks still go in a pure ACK).
                    f.ack_due &= !f.out_of_order.is_empty();
                    f.probe = false;
                    if f.rtx_at.is_none() {
                        f.arm(Instant::now());
                    }
                    if f.may_send() {
                        f.listed = true;
                        self.sendable.push_back(id);
                    }
                    return Some(n);
                }
                Ok(_) if f.host.eof => {
                    // Everything before the host's end of stream is sent: our FIN follows it.
                    tcp_frame::push_control(out, link, &f.segment(FIN | ACK));
                    f.fin_seq = Some(f.snd_nxt);
                    f.sent(1);
                    f.fin_sent = true;
                    f.ack_due = false;
                    if f.rtx_at.is_none() {
                        f.arm(Instant::now());
                    }
                    // The caller takes the FIN from the queue.
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => f.host_readable = false,
                Err(e) => {
                    log::debug!("tcp {} -> {}: {e}", f.remote, f.guest);
                    f.reset_guest(out, link);
                    dead.push((id, true));
                }
            }
        }
        None
    }

    /// When the next retransmission or handshake timer is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.flows.values().filter_map(|f| f.rtx_at).min()
    }

    /// Runs the timers that are due: retransmissions, window probes, handshakes and flows whose
    /// guest stopped acknowledging (reset). Flows to remove are added to `dead`.
    pub fn on_timer(
        &mut self,
        out: &mut GuestFrames,
        link: &LinkAddrs,
        dead: &mut Vec<(u64, bool)>,
    ) {
        let now = Instant::now();
        let due: Vec<u64> = self
            .flows
            .iter()
            .filter(|(_, f)| f.rtx_at.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(f) = self.flows.get_mut(&id) else {
                continue;
            };
            f.rto = (f.rto * 2).min(RTO_MAX);
            f.rtx_at = Some(now + f.rto);
            let result = match f.phase {
                Phase::Connecting => Ok(()),
                Phase::SynSent | Phase::SynReceived => {
                    if f.born.elapsed() > HANDSHAKE_TIMEOUT {
                        f.reset_guest(out, link);
                        dead.push((id, true));
                        continue;
                    }
                    f.send_syn(out, link);
                    Ok(())
                }
                Phase::Established => {
                    if f.last_progress.elapsed() > ACK_TIMEOUT {
                        f.reset_guest(out, link);
                        dead.push((id, true));
                        continue;
                    }
                    if f.snd_nxt != f.snd_una {
                        f.rewind()
                    } else if f.snd_wnd == 0 && f.host_readable {
                        f.probe = true;
                        Ok(())
                    } else {
                        f.rtx_at = None;
                        Ok(())
                    }
                }
            };
            if let FlowFate::Aborted = self.after_event(id, result, out, link) {
                dead.push((id, true));
            }
        }
    }

    /// Forgets a flow; its host socket closes (with a reset when the flow was aborted). Returns
    /// the flow's command, if any, for the caller to reap.
    pub fn remove(&mut self, id: u64, reset_host: bool) -> Option<Spawned> {
        let flow = self.flows.remove(&id)?;
        self.by_tuple.remove(&(flow.guest, flow.remote));
        if reset_host {
            flow.host.reset_on_close();
        }
        flow.child
    }

    /// Outbound flows whose host connection has taken too long.
    pub fn stale_handshakes(&self) -> Vec<u64> {
        self.flows
            .iter()
            .filter(|(_, f)| f.phase == Phase::Connecting && f.born.elapsed() > HANDSHAKE_TIMEOUT)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// The reset the guest gets for a segment of no flow (RFC 9293, 3.10.7.1); `None` for a reset.
pub fn reset_for(
    seg: &TcpRepr<'_>,
    payload_len: usize,
    guest: SocketAddr,
    remote: SocketAddr,
) -> Option<Segment> {
    if seg.control == TcpControl::Rst {
        return None;
    }
    let (seq, ack, flags) = match seg.ack_number {
        Some(a) => (a.0 as u32, 0, RST),
        None => {
            let len = payload_len as u32
                + u32::from(matches!(seg.control, TcpControl::Syn | TcpControl::Fin));
            (0, (seg.seq_number.0 as u32).wrapping_add(len), RST | ACK)
        }
    };
    Some(Segment {
        from: remote,
        to: guest,
        seq,
        ack,
        flags,
        window: 0,
        options: TcpOptions::default(),
    })
}
