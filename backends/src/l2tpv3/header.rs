//! The L2TPv3 data header as QEMU's `net/l2tpv3.c` writes and checks it (RFC 3931 with the
//! Ethernet pseudowire of RFC 4719):
//!
//! ```text
//! [UDP only: 0x00030000]  session id (4)  [cookie (4 or 8)]  [counter (4)]  [offset bytes]
//! ```
//!
//! All fields big-endian. Received over raw IPv4, a datagram still carries its IP header, which
//! is skipped first. Only the session and cookie are checked on receive (the counter is not), as
//! QEMU does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use log::warn;

use crate::datagram::{Encap, MAX_HEADER};

/// The data-packet word that starts a UDP-encapsulated L2TPv3 data message.
const DATA_PACKET: u32 = 0x0003_0000;

/// The header's shape and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLayout {
    pub udp: bool,
    /// Received datagrams start with an IPv4 header (raw IPv4 sockets).
    pub rx_ip_header: bool,
    pub tx_session: u32,
    pub rx_session: u32,
    /// Cookies (tx, rx) and whether they are 64-bit.
    pub cookies: Option<(u64, u64, bool)>,
    /// A counter field is present.
    pub counter: bool,
    /// The counter is always zero.
    pub pin_counter: bool,
    /// Extra bytes before the frame.
    pub offset: u32,
}

impl HeaderLayout {
    /// Bytes before the frame on the wire (IP header not included).
    pub fn header_len(&self) -> usize {
        let cookie = match self.cookies {
            Some((_, _, true)) => 8,
            Some(_) => 4,
            None => 0,
        };
        usize::from(self.udp) * 4
            + 4
            + cookie
            + usize::from(self.counter) * 4
            + self.offset as usize
    }
}

/// Counts of refused datagrams by kind.
#[derive(Debug, Default)]
pub struct RefusedCounters {
    pub short: AtomicU64,
    pub bad_cookie: AtomicU64,
    pub bad_session: AtomicU64,
}

/// Encapsulation state of one queue: the layout, the tx counter, what was logged.
#[derive(Debug)]
pub struct L2tpEncap {
    layout: HeaderLayout,
    counter: u32,
    refused: Arc<RefusedCounters>,
    /// Kinds already logged (one line per kind).
    logged: [bool; 3],
}

impl L2tpEncap {
    pub fn new(layout: HeaderLayout, refused: Arc<RefusedCounters>) -> Self {
        L2tpEncap {
            layout,
            counter: 0,
            refused,
            logged: [false; 3],
        }
    }

    fn refuse(&mut self, kind: usize, why: &str) -> Option<usize> {
        let counter = match kind {
            0 => &self.refused.short,
            1 => &self.refused.bad_cookie,
            _ => &self.refused.bad_session,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if !std::mem::replace(&mut self.logged[kind], true) {
            warn!("l2tpv3: dropping datagrams: {why} (logged once; see the netdev's counters)");
        }
        None
    }
}

/// Writes the header for one frame; returns its length.
pub fn encode(layout: &HeaderLayout, counter: u32, out: &mut [u8]) -> usize {
    let mut at = 0;
    let mut put = |bytes: &[u8], at: &mut usize| {
        out[*at..*at + bytes.len()].copy_from_slice(bytes);
        *at += bytes.len();
    };
    if layout.udp {
        put(&DATA_PACKET.to_be_bytes(), &mut at);
    }
    put(&layout.tx_session.to_be_bytes(), &mut at);
    match layout.cookies {
        Some((tx, _, true)) => put(&tx.to_be_bytes(), &mut at),
        Some((tx, _, false)) => put(&(tx as u32).to_be_bytes(), &mut at),
        None => {}
    }
    if layout.counter {
        put(&counter.to_be_bytes(), &mut at);
    }
    let end = at + layout.offset as usize;
    out[at..end].fill(0);
    end
}

/// Why a received datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Short,
    Cookie,
    Session,
}

/// Checks a received datagram; returns where its frame starts.
pub fn decode(layout: &HeaderLayout, datagram: &[u8]) -> Result<usize, Refused> {
    let ip = if layout.rx_ip_header {
        let ihl = usize::from(datagram.first().copied().unwrap_or(0) & 0x0f) * 4;
        if ihl < 20 {
            return Err(Refused::Short);
        }
        ihl
    } else {
        0
    };
    let start = ip + layout.header_len();
    if datagram.len() <= start {
        return Err(Refused::Short);
    }
    let word = |at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&datagram[at..at + 4]);
        u32::from_be_bytes(b)
    };
    let session_at = ip + usize::from(layout.udp) * 4;
    if let Some((_, rx, is64)) = layout.cookies {
        let cookie_at = session_at + 4;
        let got = if is64 {
            (u64::from(word(cookie_at)) << 32) | u64::from(word(cookie_at + 4))
        } else {
            u64::from(word(cookie_at))
        };
        let want = if is64 { rx } else { rx & 0xffff_ffff };
        if got != want {
            return Err(Refused::Cookie);
        }
    }
    if word(session_at) != layout.rx_session {
        return Err(Refused::Session);
    }
    Ok(start)
}

impl Encap for L2tpEncap {
    fn tx_header(&mut self, out: &mut [u8; MAX_HEADER]) -> usize {
        let counter = if self.layout.pin_counter {
            0
        } else {
            self.counter = self.counter.wrapping_add(1);
            self.counter
        };
        encode(&self.layout, counter, out)
    }

    fn rx_frame_start(&mut self, datagram: &[u8]) -> Option<usize> {
        match decode(&self.layout, datagram) {
            Ok(start) => Some(start),
            Err(Refused::Short) => self.refuse(0, "datagram shorter than the L2TPv3 header"),
            Err(Refused::Cookie) => self.refuse(1, "unknown cookie"),
            Err(Refused::Session) => self.refuse(2, "session mismatch"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(
        udp: bool,
        cookies: Option<(u64, u64, bool)>,
        counter: bool,
        offset: u32,
    ) -> HeaderLayout {
        HeaderLayout {
            udp,
            rx_ip_header: false,
            tx_session: 0x11223344,
            rx_session: 0x11223344,
            cookies,
            counter,
            pin_counter: false,
            offset,
        }
    }

    #[test]
    fn encodes_every_variant_like_qemu() {
        let mut out = [0xaau8; MAX_HEADER];
        // UDP, 64-bit cookie, counter, 2 offset bytes.
        let l = layout(true, Some((0x0102030405060708, 0, true)), true, 2);
        assert_eq!(l.header_len(), 4 + 4 + 8 + 4 + 2);
        let n = encode(&l, 7, &mut out);
        assert_eq!(
            &out[..n],
            &[0, 3, 0, 0, 0x11, 0x22, 0x33, 0x44, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 7, 0, 0]
        );
        // IP, 32-bit cookie (low half of the value), no counter.
        let l = layout(false, Some((0xdead_beef_0000_0005, 0, false)), false, 0);
        let n = encode(&l, 1, &mut out);
        assert_eq!(&out[..n], &[0x11, 0x22, 0x33, 0x44, 0, 0, 0, 5]);
        // Bare session.
        let l = layout(false, None, false, 0);
        assert_eq!(encode(&l, 1, &mut out), 4);
    }

    #[test]
    fn decodes_and_refuses_by_kind() {
        let mut l = layout(true, Some((9, 9, false)), true, 0);
        let mut dgram = [0u8; MAX_HEADER];
        let n = encode(&l, 3, &mut dgram);
        let mut frame = dgram[..n].to_vec();
        frame.extend_from_slice(b"ethernet frame");
        assert_eq!(decode(&l, &frame), Ok(n));
        assert_eq!(decode(&l, &frame[..n]), Err(Refused::Short));
        l.rx_session = 1;
        assert_eq!(decode(&l, &frame), Err(Refused::Session));
        l.rx_session = l.tx_session;
        l.cookies = Some((9, 10, false));
        assert_eq!(decode(&l, &frame), Err(Refused::Cookie));
        // Raw IPv4: the IP header (IHL words) comes first.
        let mut l = layout(false, None, false, 0);
        l.rx_ip_header = true;
        let mut ip = vec![0x46u8];
        ip.extend_from_slice(&[0u8; 23]);
        ip.extend_from_slice(&0x11223344u32.to_be_bytes());
        ip.extend_from_slice(b"frame");
        assert_eq!(decode(&l, &ip), Ok(24 + 4));
        assert_eq!(decode(&l, &[0x41; 30]), Err(Refused::Short));
    }

    #[test]
    fn counter_counts_or_stays_pinned() {
        let refused = Arc::new(RefusedCounters::default());
        let mut e = L2tpEncap::new(layout(false, None, true, 0), refused.clone());
        let mut out = [0u8; MAX_HEADER];
        e.tx_header(&mut out);
        e.tx_header(&mut out);
        assert_eq!(&out[4..8], &2u32.to_be_bytes());
        let mut l = layout(false, None, true, 0);
        l.pin_counter = true;
        let mut e = L2tpEncap::new(l, refused.clone());
        e.tx_header(&mut out);
        e.tx_header(&mut out);
        assert_eq!(&out[4..8], &[0; 4]);
        assert_eq!(e.rx_frame_start(&[0u8; 3]), None);
        assert_eq!(e.rx_frame_start(&[0u8; 3]), None);
        assert_eq!(refused.short.load(Ordering::Relaxed), 2);
    }
}
