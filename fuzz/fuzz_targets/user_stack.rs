//! Guest frames into the user-mode stack (`-netdev user`): ARP, NDP, DHCP, DNS, TFTP, ICMP,
//! UDP and TCP, through the netdev's own queue as the datapath hands them over.
//!
//! The stack runs with `restrict=on` and no upstream resolvers, so nothing reaches past the
//! process but one `guestfwd` rule: 10.0.2.100:80 leads to a listener of the target's on the
//! loopback, which sends each connection 100 KB and reads what comes, so TCP flows open, carry
//! data both ways and close (the stack's sequence numbers start at 1000 under `cfg(fuzzing)`).
//! Frames are handed over whole or, as a Linux guest's TSO frames come, spread over three
//! buffers. Checked: everything the stack answers is a whole Ethernet frame behind the
//! virtio-net header, addressed to the guest (or broadcast), from the stack's MAC, and no
//! larger than the buffers it was given, whether the first of them holds it or not.

#![no_main]

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::TcpListener;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vhost_user_netd::qmp::commands::SessionFds;
use vhost_user_netd_backends::{HostEnv, NetdevConfig, VNET_HDR_LEN};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

fn check(frame: &[u8], capacity: usize) {
    assert!(frame.len() <= capacity);
    assert!(
        frame.len() >= VNET_HDR_LEN + 14,
        "a frame shorter than an Ethernet header"
    );
    let eth = &frame[VNET_HDR_LEN..];
    let dst = &eth[..6];
    assert!(
        dst == GUEST_MAC || dst[0] & 1 != 0,
        "frame to {dst:02x?}, not the guest"
    );
    assert_eq!(eth[6] & 1, 0, "multicast source address");
}

/// The port of the host listener the `guestfwd` rule leads to (started once).
fn host_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
        let port = listener.local_addr().expect("its address").port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let _ = stream.write_all(&[0x5a; 100_000]);
                    let _ = std::io::copy(&mut stream, &mut std::io::sink());
                    let _ = stream.read(&mut [0]);
                });
            }
        });
        port
    })
}

fuzz_target!(|data: &[u8]| {
    let options = format!(
        "user,id=u0,restrict=on,ipv4=on,ipv6=on,guestfwd=tcp:10.0.2.100:80-tcp:127.0.0.1:{}",
        host_port()
    );
    let Ok(config) = NetdevConfig::parse_cli(&options) else {
        return;
    };
    let env = HostEnv {
        resolv_conf: "/nonexistent/resolv.conf".into(),
        ..HostEnv::default()
    };
    let Ok(backend) = config.open(&mut SessionFds::default(), &env) else {
        return;
    };
    let Ok(mut queue) = backend.queue(0) else {
        return;
    };
    let hdr = [0u8; VNET_HDR_LEN];
    let mut out = vec![0u8; 65_600];
    let mut rest = data;
    while let [a, b, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*a, *b]) % 1600).min(tail.len());
        let (mut frame, tail) = tail.split_at(len);
        let fixed;
        if frame.len() >= 12 {
            // Sent by the guest: its own MAC as the source, so that answers come back to it.
            let mut f = frame.to_vec();
            f[6..12].copy_from_slice(&GUEST_MAC);
            if f.len() >= 28 && f[12..14] == [0x08, 0x06] {
                // An ARP request's sender address too: the reply goes there.
                f[22..28].copy_from_slice(&GUEST_MAC);
            }
            fixed = f;
            frame = &fixed;
        }
        match *b % 3 {
            // Spread over three buffers, cut where the input says.
            0 if frame.len() > 2 => {
                let (x, y) = frame.split_at(usize::from(*a) % frame.len());
                let (y, z) = y.split_at(y.len() / 2);
                let mut first = hdr.to_vec();
                first.extend_from_slice(x);
                let _ = queue.send(&[IoSlice::new(&first), IoSlice::new(y), IoSlice::new(z)]);
            }
            _ => {
                let _ = queue.send(&[IoSlice::new(&hdr), IoSlice::new(frame)]);
            }
        }
        // The device's buffers: one roomy, or a first one too small for most frames (the
        // stack then writes through its queue instead of straight into the first).
        let split = [out.len(), 100, 1_600][usize::from(*a) % 3];
        loop {
            let (first, second) = out.split_at_mut(split);
            let Ok(n) = queue.recv(&mut [IoSliceMut::new(first), IoSliceMut::new(second)]) else {
                break;
            };
            check(&out[..n], out.len());
        }
        rest = tail;
    }
    backend.shutdown();
});
