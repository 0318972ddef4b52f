//! What a socket peer sends: QEMU's stream framing (a 4-byte big-endian length before each
//! frame) arriving in reads of any size, and L2TPv3 headers (session, cookies, counter, offset,
//! an IPv4 header in front on raw sockets) under any layout.
//!
//! Checked against a model: the framer hands out exactly the frames a straightforward decoder
//! finds, in order, and refuses the stream where the model sees an impossible length; an L2TPv3
//! datagram is accepted only with the expected session and cookie, its frame starting right
//! after the header, and what `encode` writes is always accepted.

#![no_main]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use libfuzzer_sys::fuzz_target;
use vhost_user_netd_backends::l2tpv3::header::{decode, encode, HeaderLayout};
use vhost_user_netd_backends::stream::framing::{RxFramer, MAX_STREAM_FRAME};
use vhost_user_netd_backends::sys;
use vhost_user_netd_fuzz::Input;

/// The frames of `stream` by the format's definition, and whether it ends in a bad length.
fn model_frames(stream: &[u8]) -> (Vec<&[u8]>, bool) {
    let mut frames = Vec::new();
    let mut at = 0;
    while stream.len() - at >= 4 {
        let len = u32::from_be_bytes(stream[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len > MAX_STREAM_FRAME {
            return (frames, true);
        }
        if stream.len() - at - 4 < len {
            break;
        }
        if len > 0 {
            frames.push(&stream[at + 4..at + 4 + len]);
        }
        at += 4 + len;
    }
    (frames, false)
}

fn stream(input: &mut Input) {
    let chunk = usize::from(input.byte().max(1)) * 16;
    let bytes = input.rest();
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return;
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let (want, refused) = model_frames(bytes);
    let mut framer = RxFramer::default();
    let mut got: Vec<Vec<u8>> = Vec::new();
    for piece in bytes.chunks(chunk) {
        let written = sys::write(w.as_raw_fd(), piece).expect("pipe takes a chunk");
        assert_eq!(written, piece.len());
        while framer.fill(r.as_raw_fd()).is_ok_and(|n| n > 0) {}
        loop {
            match framer.next_frame() {
                Ok(Some(range)) => got.push(framer.bytes()[range].to_vec()),
                Ok(None) => break,
                Err(_) => {
                    assert!(refused, "framer refused a stream the format allows");
                    assert_eq!(got, want, "frames before the bad length");
                    return;
                }
            }
        }
    }
    assert!(!refused, "framer accepted an impossible length");
    assert_eq!(got, want, "frames handed out");
}

fn l2tpv3(input: &mut Input) {
    let flags = input.byte();
    let cookies = match flags & 0x3 {
        0 | 1 => None,
        2 => Some((u64::from(input.u32()), u64::from(input.u32()), false)),
        _ => {
            let tx = u64::from(input.u32()) << 32 | u64::from(input.u32());
            let rx = u64::from(input.u32()) << 32 | u64::from(input.u32());
            Some((tx, rx, true))
        }
    };
    let layout = HeaderLayout {
        udp: flags & 0x4 != 0,
        rx_ip_header: flags & 0x8 != 0,
        tx_session: input.u32(),
        rx_session: input.u32(),
        cookies,
        counter: flags & 0x10 != 0,
        pin_counter: flags & 0x20 != 0,
        offset: u32::from(input.byte() % 32),
    };
    let datagram = input.rest();
    if let Ok(start) = decode(&layout, datagram) {
        let ip = if layout.rx_ip_header {
            usize::from(datagram[0] & 0x0f) * 4
        } else {
            0
        };
        assert_eq!(
            start,
            ip + layout.header_len(),
            "frame starts after the header"
        );
        assert!(start < datagram.len(), "a frame of at least one byte");
        let session_at = ip + usize::from(layout.udp) * 4;
        let session =
            u32::from_be_bytes(datagram[session_at..session_at + 4].try_into().expect("4"));
        assert_eq!(session, layout.rx_session, "accepted with another session");
    }
    // What we send is what a peer with the mirrored layout accepts.
    let mirrored = HeaderLayout {
        rx_ip_header: false,
        rx_session: layout.tx_session,
        cookies: layout.cookies.map(|(tx, _, wide)| (tx, tx, wide)),
        ..layout
    };
    let mut out = vec![0u8; 128];
    let len = encode(&layout, input.u32(), &mut out);
    assert_eq!(len, layout.header_len());
    out.truncate(len);
    out.push(0x42);
    assert_eq!(decode(&mirrored, &out), Ok(len), "own header refused");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    if input.byte() % 2 == 0 {
        stream(&mut input);
    } else {
        l2tpv3(&mut input);
    }
});
