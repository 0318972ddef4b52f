//! What a datagram peer sends (`dgram`, and `l2tpv3` with its header), through the receive path
//! the datapath uses: datagrams of any size (past the largest frame too), empty ones, headers
//! right and wrong, read in `recvmmsg` batches (or one by one, as `--no-batching` does) into
//! buffers of any split.
//!
//! Checked against a model: frames come out in order, each exactly the datagram behind its
//! header (cut to the buffers given); empty frames and datagrams larger than a frame are
//! dropped, the latter counted; with L2TPv3, a datagram comes through exactly when its header
//! carries the expected session and cookie.

#![no_main]

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vhost_user_netd_backends::datagram::{Bare, DatagramCounters, DatagramQueue};
use vhost_user_netd_backends::l2tpv3::header::{decode, encode, HeaderLayout, L2tpEncap};
use vhost_user_netd_backends::{BackendQueue, Batching};
use vhost_user_netd_fuzz::Input;

/// Longest datagram the queue takes whole (a 64 KiB frame and the largest header).
const MAX_DATAGRAM: usize = 65_535 + 512;

fn layout(input: &mut Input) -> HeaderLayout {
    let flags = input.byte();
    HeaderLayout {
        udp: flags & 1 != 0,
        rx_ip_header: false,
        tx_session: input.u32(),
        rx_session: input.u32(),
        cookies: (flags & 2 != 0).then(|| {
            let c = u64::from(input.u32());
            (c, c, flags & 4 != 0)
        }),
        counter: flags & 8 != 0,
        pin_counter: false,
        offset: u32::from(input.byte() % 8),
    }
}

/// Sends the datagrams the input describes; returns what each one should become.
fn send_all(input: &mut Input, peer: &UnixDatagram, l2tp: Option<&HeaderLayout>) -> Vec<Expect> {
    let mut expected = Vec::new();
    while let Some(kind) = input.next() {
        let len = match kind % 8 {
            0 => 0,
            1 => MAX_DATAGRAM + 1 + usize::from(input.byte()),
            _ => usize::from(u16::from_le_bytes([input.byte(), input.byte()])) % 2000,
        };
        let seed = input.byte();
        let mut datagram: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_add(seed)).collect();
        if let (Some(l), true) = (l2tp, kind & 0x10 != 0) {
            // A header the receiver expects (the sender's layout mirrors ours).
            let sender = HeaderLayout {
                tx_session: l.rx_session,
                cookies: l.cookies.map(|(_, rx, wide)| (rx, rx, wide)),
                ..*l
            };
            let mut hdr = vec![0u8; 128];
            let n = encode(&sender, 0, &mut hdr);
            hdr.truncate(n);
            hdr.extend_from_slice(&datagram);
            datagram = hdr;
        }
        if peer.send(&datagram).is_err() {
            break; // the socket is full: what was sent is checked
        }
        expected.push(model(&datagram, l2tp));
    }
    expected
}

/// What the queue should make of one datagram.
#[derive(Debug, PartialEq)]
enum Expect {
    Frame(Vec<u8>),
    Truncated,
    Dropped,
}

fn model(datagram: &[u8], l2tp: Option<&HeaderLayout>) -> Expect {
    if datagram.len() > MAX_DATAGRAM {
        return Expect::Truncated;
    }
    let start = match l2tp {
        None => 0,
        Some(l) => match decode(l, datagram) {
            Ok(start) => start,
            Err(_) => return Expect::Dropped,
        },
    };
    if datagram.len() == start {
        Expect::Dropped
    } else {
        Expect::Frame(datagram[start..].to_vec())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.byte();
    let batching = if mode & 1 != 0 {
        Batching::ON
    } else {
        Batching::OFF
    };
    let l2tp = (mode & 2 != 0).then(|| layout(&mut input));
    let split = usize::from(input.byte()) * 8 + 1;
    let Ok((ours, peer)) = UnixDatagram::pair() else {
        return;
    };
    let _ = peer.set_nonblocking(true);
    let _ = vhost_user_netd_backends::sys::set_nonblocking(ours.as_raw_fd(), true);
    let counters = Arc::new(DatagramCounters::default());
    let fd = Arc::new(OwnedFd::from(ours));
    let mut queue: Box<dyn BackendQueue> = match &l2tp {
        None => Box::new(DatagramQueue::new(
            fd,
            None,
            Bare,
            counters.clone(),
            batching,
        )),
        Some(l) => {
            let encap: L2tpEncap = L2tpEncap::new(*l, Arc::default());
            Box::new(DatagramQueue::new(
                fd,
                None,
                encap,
                counters.clone(),
                batching,
            ))
        }
    };
    let expected = send_all(&mut input, &peer, l2tp.as_ref());
    let want: Vec<&Vec<u8>> = expected
        .iter()
        .filter_map(|e| match e {
            Expect::Frame(f) => Some(f),
            _ => None,
        })
        .collect();
    let mut got = Vec::new();
    let (mut a, mut b) = (vec![0u8; split], vec![0u8; 70_000]);
    loop {
        let mut bufs = [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b)];
        match queue.recv(&mut bufs) {
            Ok(n) => {
                let mut frame = a[..n.min(split)].to_vec();
                frame.extend_from_slice(&b[..n.saturating_sub(split)]);
                got.push(frame);
            }
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
                break;
            }
        }
    }
    assert_eq!(got.len(), want.len(), "frames received");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.as_slice(), w.as_slice(), "frame content");
    }
    let truncated = expected.iter().filter(|e| **e == Expect::Truncated).count() as u64;
    assert_eq!(
        counters.truncated.load(Ordering::Relaxed),
        truncated,
        "oversized counted"
    );
});
