//! The device driven by an in-process vhost-user frontend (the `vhost` crate's `Frontend`, memfd
//! guest memory, driver-side rings) over a socketpair backend: no VM, no privileges.

#![allow(clippy::unwrap_used, clippy::cast_possible_wrap)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::frontend::*;
use common::raw_frontend::{RawFrontend, NEED_REPLY, V1};
use vhost::VhostBackend;

const F_WRITE: u16 = 2;
const F_NEXT: u16 = 1;

fn hdr() -> Vec<u8> {
    vec![0u8; 12]
}

#[test]
fn tx_frames_reach_the_backend_with_their_header() {
    let mut t = TestFrontend::new(1, F_MRG_RXBUF | F_EVENT_IDX);
    for i in 0..3u8 {
        t.send(0, u16::from(i), &frame(60 + usize::from(i), i));
    }
    let used = t.wait_used(1, 3);
    assert_eq!(used.iter().map(|u| u.0).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert!(used.iter().all(|u| u.1 == 0), "tx used length is 0");
    for i in 0..3u8 {
        let got = t.peer_recv(0);
        assert_eq!(&got[..12], &hdr()[..]);
        assert_eq!(&got[12..], &frame(60 + usize::from(i), i)[..]);
    }
}

#[test]
fn rx_without_mergeable_buffers_fills_one_chain_per_frame() {
    let mut t = TestFrontend::new(1, F_EVENT_IDX);
    t.rings[0].post_buffers(&t.ram, 0, 8, 1600, true);
    t.kick(0);
    let mut sent = hdr();
    sent.extend_from_slice(&frame(1000, 9));
    t.peer_send(0, &sent);
    let used = t.wait_used(0, 1);
    assert_eq!(used, vec![(0, sent.len() as u32)]);
    let addr = t.rings[0].buffer_addr(0, 1600);
    assert_eq!(t.ram.read(addr, sent.len()), sent);
}

#[test]
fn rx_with_mergeable_buffers_spans_chains_and_sets_num_buffers() {
    let mut t = TestFrontend::new(1, F_MRG_RXBUF | F_EVENT_IDX);
    t.rings[0].post_buffers(&t.ram, 0, 16, 256, true);
    t.kick(0);
    let mut sent = hdr();
    sent.extend_from_slice(&frame(1000, 3));
    t.peer_send(0, &sent);
    let used = t.wait_used(0, 4);
    assert_eq!(used.len(), 4, "1012 bytes in 256-byte buffers");
    assert_eq!(used.iter().map(|u| u.1).sum::<u32>(), sent.len() as u32);
    let mut got = Vec::new();
    for (i, (id, len)) in used.iter().enumerate() {
        assert_eq!(*id as usize, i);
        got.extend(
            t.ram
                .read(t.rings[0].buffer_addr(*id as u16, 256), *len as usize),
        );
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 4, "num_buffers");
    assert_eq!(&got[12..], &sent[12..]);
    // The 12 buffers the frame did not need stay available: a second frame uses the next one.
    let mut second = hdr();
    second.extend_from_slice(&frame(100, 4));
    t.peer_send(0, &second);
    let used = t.wait_used(0, 1);
    assert_eq!(used, vec![(4, second.len() as u32)]);
}

#[test]
fn rx_waits_for_buffers_instead_of_dropping() {
    let mut t = TestFrontend::new(1, F_MRG_RXBUF | F_EVENT_IDX);
    let mut sent = hdr();
    sent.extend_from_slice(&frame(500, 5));
    t.peer_send(0, &sent);
    // Only now does the guest post buffers; the frame must still arrive.
    t.rings[0].post_buffers(&t.ram, 0, 4, 2048, true);
    t.kick(0);
    let used = t.wait_used(0, 1);
    assert_eq!(used, vec![(0, sent.len() as u32)]);
}

/// Without EVENT_IDX the driver kicks after every refill unless `used.flags` says not to: while
/// rx has buffers the device says not to, and asks again once the guest runs out.
#[test]
fn rx_kicks_are_asked_for_only_when_out_of_buffers() {
    const NO_NOTIFY: u16 = 1;
    let mut t = TestFrontend::new(1, F_MRG_RXBUF);
    t.rings[0].post_buffers(&t.ram, 0, 2, 2048, true);
    t.kick(0);
    let mut sent = hdr();
    sent.extend_from_slice(&frame(100, 1));
    t.peer_send(0, &sent);
    t.wait_used(0, 1);
    assert_eq!(t.rings[0].used_flags(&t.ram) & NO_NOTIFY, NO_NOTIFY);
    // The second frame takes the last buffer, the third finds none.
    t.peer_send(0, &sent);
    t.peer_send(0, &sent);
    t.wait_used(0, 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while t.rings[0].used_flags(&t.ram) & NO_NOTIFY != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "kicks never asked for again while the guest is out of buffers"
        );
        std::thread::yield_now();
    }
    t.rings[0].post_buffers(&t.ram, 2, 1, 2048, true);
    t.kick(0);
    assert_eq!(t.wait_used(0, 1).len(), 1, "the waiting frame arrives");
}

#[test]
fn two_queue_pairs_are_independent() {
    let mut t = TestFrontend::new(2, F_MRG_RXBUF | F_EVENT_IDX);
    t.send(1, 0, &frame(80, 1));
    t.wait_used(3, 1);
    assert_eq!(&t.peer_recv(1)[12..], &frame(80, 1)[..]);
    t.rings[2].post_buffers(&t.ram, 0, 4, 2048, true);
    t.kick(2);
    let mut sent = hdr();
    sent.extend_from_slice(&frame(90, 2));
    t.peer_send(1, &sent);
    assert_eq!(t.wait_used(2, 1), vec![(0, sent.len() as u32)]);
    assert!(
        t.rings[0].take_used(&t.ram).is_empty(),
        "pair 0 rx untouched"
    );
}

#[test]
fn disabled_tx_ring_is_drained_and_discarded() {
    let mut t = TestFrontend::new(1, F_MRG_RXBUF);
    t.enable(1, false);
    t.send(0, 0, &frame(70, 1));
    assert_eq!(
        t.wait_used(1, 1),
        vec![(0, 0)],
        "chain returned while disabled"
    );
    t.enable(1, true);
    t.send(0, 1, &frame(71, 2));
    t.wait_used(1, 1);
    assert_eq!(
        &t.peer_recv(0)[12..],
        &frame(71, 2)[..],
        "the first frame was discarded"
    );
}

#[test]
fn disabled_rx_ring_keeps_frames_in_the_backend() {
    let mut t = TestFrontend::new(1, F_MRG_RXBUF);
    t.enable(0, false);
    t.rings[0].post_buffers(&t.ram, 0, 4, 2048, true);
    t.kick(0);
    let mut sent = hdr();
    sent.extend_from_slice(&frame(64, 8));
    t.peer_send(0, &sent);
    assert!(t.rings[0].take_used(&t.ram).is_empty());
    t.enable(0, true);
    assert_eq!(
        t.wait_used(0, 1),
        vec![(0, sent.len() as u32)],
        "delivered once enabled"
    );
}

#[test]
fn malformed_tx_chains_are_returned_and_the_queue_goes_on() {
    let mut t = TestFrontend::new(1, F_MRG_RXBUF | F_EVENT_IDX);
    let ring = 1;
    let buf = t.rings[ring].buffer_addr(0, BUF_LEN);
    t.ram.write(buf, &[0u8; 100]);
    // 0: device-writable buffer on tx; 1: outside guest memory; 2: loops onto itself;
    // 3: shorter than the header; then a good frame in slot 4.
    t.ram.write_descs(
        t.rings[ring].desc,
        &[
            RawDescriptor::new(buf, 100, F_WRITE, 0),
            RawDescriptor::new(RAM_SIZE - 10, 100, 0, 0),
            RawDescriptor::new(buf, 100, F_NEXT, 2),
            RawDescriptor::new(buf, 8, 0, 0),
        ],
    );
    t.rings[ring].make_available(&t.ram, &[0, 1, 2, 3]);
    t.send(0, 4, &frame(60, 7));
    let used = t.wait_used(ring, 5);
    assert_eq!(used, vec![(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)]);
    assert_eq!(
        &t.peer_recv(0)[12..],
        &frame(60, 7)[..],
        "only the good frame went out"
    );
}

fn malformed_rx(features: u64) {
    let mut t = TestFrontend::new(1, features | F_EVENT_IDX);
    let ring = 0;
    let good = t.rings[ring].buffer_addr(3, 2048);
    t.ram.write_descs(
        t.rings[ring].desc,
        &[
            RawDescriptor::new(t.rings[ring].buffer_addr(0, 2048), 2048, 0, 0), // read-only on rx
            RawDescriptor::new(u64::MAX - 100, 2048, F_WRITE, 0),               // outside memory
            RawDescriptor::new(t.rings[ring].buffer_addr(2, 2048), 4, F_WRITE, 0), // shorter than a header
            RawDescriptor::new(good, 2048, F_WRITE, 0),
        ],
    );
    t.rings[ring].make_available(&t.ram, &[0, 1, 2, 3]);
    t.kick(ring);
    let mut sent = hdr();
    sent.extend_from_slice(&frame(200, 6));
    t.peer_send(0, &sent);
    let used = t.wait_used(ring, 4);
    assert_eq!(used[..3], [(0, 0), (1, 0), (2, 0)]);
    assert_eq!(used[3], (3, sent.len() as u32));
    let got = t.ram.read(good, sent.len());
    assert_eq!(&got[12..], &sent[12..]);
}

#[test]
fn malformed_rx_chains_with_mergeable_buffers() {
    malformed_rx(F_MRG_RXBUF);
}

#[test]
fn malformed_rx_chains_without_mergeable_buffers() {
    malformed_rx(0);
}

#[test]
fn a_new_frontend_gets_a_fresh_device_after_disconnect() {
    let t = TestFrontend::new(1, F_MRG_RXBUF);
    let port = t.port.clone().expect("in-process port");
    drop(t); // joins the server thread: the connection really ended
    let (ours, theirs) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || port.serve_connection(theirs));
    let fe = vhost::vhost_user::Frontend::from_stream(ours, 2);
    fe.set_owner().unwrap();
    assert_ne!(fe.get_features().unwrap(), 0);
    drop(fe);
    server.join().unwrap();
}

#[test]
fn hostile_vhost_user_messages_get_errors_not_crashes() {
    let (sock, _peers, port, server) = start_device(1, None);
    let mut fe = RawFrontend::new(sock);
    // Negotiate REPLY_ACK so failures are reported.
    fe.send(15, V1, &[], &[]); // GET_PROTOCOL_FEATURES
    let (_, p) = fe.reply();
    let pf = u64::from_le_bytes(p[..8].try_into().unwrap());
    assert_ne!(pf & 0x8, 0, "REPLY_ACK offered");
    fe.send(16, V1, &0x8u64.to_le_bytes(), &[]);
    let ack = |fe: &mut RawFrontend| fe.reply_u64();
    // Unknown request, wrong payload sizes, vring out of range, bad ring size, no memory.
    fe.send(999, V1 | NEED_REPLY, &[], &[]);
    assert_eq!(ack(&mut fe), 1, "unknown request");
    fe.send(2, V1 | NEED_REPLY, &[1, 2, 3], &[]); // SET_FEATURES with 3 bytes
    assert_eq!(ack(&mut fe), 1, "short payload");
    let state = |index: u32, num: u32| [index.to_le_bytes(), num.to_le_bytes()].concat();
    fe.send(8, V1 | NEED_REPLY, &state(99, 256), &[]); // SET_VRING_NUM on vring 99
    assert_eq!(ack(&mut fe), 1, "vring out of range");
    fe.send(8, V1 | NEED_REPLY, &state(0, 300), &[]); // not a power of two
    assert_eq!(ack(&mut fe), 1, "bad ring size");
    fe.send(2, V1 | NEED_REPLY, &(1u64 << 63).to_le_bytes(), &[]); // unoffered feature
    assert_eq!(ack(&mut fe), 1, "unoffered feature");
    let mut addr = vec![0u8; 40];
    addr[8..16].copy_from_slice(&0x1000u64.to_le_bytes());
    fe.send(9, V1 | NEED_REPLY, &addr, &[]); // SET_VRING_ADDR without a memory table
    assert_eq!(ack(&mut fe), 1, "ring address outside any region");
    let mut table = vec![0u8; 8 + 32];
    table[0] = 1; // one region, but no descriptor attached
    table[16..24].copy_from_slice(&4096u64.to_le_bytes());
    fe.send(5, V1 | NEED_REPLY, &table, &[]);
    assert_eq!(ack(&mut fe), 1, "memory table without fds");
    // GET_CONFIG asking for far too much: a zero-size config reply, not a crash.
    let cfg = [
        0u32.to_le_bytes(),
        4000u32.to_le_bytes(),
        0u32.to_le_bytes(),
    ]
    .concat();
    let mut req = cfg.clone();
    req.extend_from_slice(&vec![0u8; 4000]);
    fe.send(24, V1, &req, &[]);
    let (code, p) = fe.reply();
    assert_eq!(
        (code, u32::from_le_bytes(p[4..8].try_into().unwrap())),
        (24, 0)
    );
    // GET_VRING_BASE of a vring that does not exist still answers.
    fe.send(11, V1, &state(77, 0), &[]);
    assert_eq!(fe.reply().0, 11);
    // Every refused request was counted (the config read and vring base of vring 77 too).
    let device = port.device().expect("connected");
    let failed = vhost_user_netd::device::lock(&device).failed_requests();
    assert_eq!(failed, 9, "refused requests counted");
    drop(device);
    // Still serving: GET_FEATURES answers.
    fe.send(1, V1, &[], &[]);
    assert_eq!(fe.reply().1.len(), 8);
    // A payload over the size limit ends the connection (the wire can no longer be trusted).
    fe.send(1, V1, &[], &[]);
    fe.reply();
    let mut m = Vec::new();
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&V1.to_le_bytes());
    m.extend_from_slice(&u32::MAX.to_le_bytes());
    fe.sock.write_all(&m).unwrap();
    server
        .join()
        .expect("server thread ended without panicking");
}

#[test]
fn bad_header_version_ends_the_connection_cleanly() {
    let (sock, _peers, _port, server) = start_device(1, None);
    let mut fe = RawFrontend::new(sock);
    fe.send(1, 0x2, &[], &[]);
    server
        .join()
        .expect("server thread ended without panicking");
}

#[test]
fn guest_writes_are_logged_only_while_log_all_is_on() {
    use std::os::fd::AsRawFd;
    let mut t = TestFrontend::new(1, F_MRG_RXBUF | F_EVENT_IDX | F_CTRL_VQ | F_CTRL_RX);
    let ctrl = t.setup_ctrl();
    // One bit per 4 KiB page: RAM_SIZE needs RAM_SIZE / 4096 / 8 bytes.
    let bitmap = GuestRam::with_size(4096);
    let region = vhost::VhostUserDirtyLogRegion {
        mmap_size: RAM_SIZE / 4096 / 8,
        mmap_offset: 0,
        mmap_handle: bitmap.file.as_raw_fd(),
    };
    t.fe.set_log_base(0, Some(region))
        .expect("SET_LOG_BASE answered");
    let dirty = |page: u64| bitmap.read(page / 8, 1)[0] & (1 << (page % 8)) != 0;

    t.rings[0].post_buffers(&t.ram, 0, 4, 2048, true);
    t.kick(0);
    let mut sent = hdr();
    sent.extend_from_slice(&frame(100, 1));
    t.peer_send(0, &sent);
    t.wait_used(0, 1);
    assert!(
        bitmap.read(0, 512).iter().all(|b| *b == 0),
        "nothing logged without LOG_ALL"
    );

    // Migration starts: the frontend turns LOG_ALL on.
    t.fe.set_features(t.acked | F_LOG_ALL).unwrap();
    t.sync();
    t.peer_send(0, &sent);
    let used = t.wait_used(0, 1);
    let buffer_page = t.rings[0].buffer_addr(used[0].0 as u16, 2048) / 4096;
    assert!(dirty(buffer_page), "rx buffer page {buffer_page} logged");
    assert!(dirty(t.rings[0].used / 4096), "used ring page logged");
    assert!(
        !dirty(t.rings[0].buffer_addr(3, 2048) / 4096 + 64),
        "untouched page stays clean"
    );
    // The control queue's reply byte and used ring too.
    assert_eq!(t.ctrl_command(ctrl, 0, 0, &[0]), 0);
    assert!(
        dirty(t.rings[ctrl].buffer_addr(1, BUF_LEN) / 4096),
        "reply page logged"
    );
    assert!(dirty(t.rings[ctrl].used / 4096), "control used ring logged");
}

#[test]
fn a_full_backend_holds_tx_back_without_losing_or_duplicating_frames() {
    let mut t = TestFrontend::new(1, F_MRG_RXBUF | F_EVENT_IDX);
    // Far more than the socket pair buffers: the backend fills up while nobody reads.
    const N: u16 = 200;
    for i in 0..N {
        let f = frame(1400, i as u8);
        let mut data = vec![0u8; 12];
        data.extend_from_slice(&f);
        t.rings[1].post_tx(&t.ram, i, &data, BUF_LEN);
    }
    // 200 x 1412 bytes exceed a socket pair's default buffer (wmem_default, 208 KiB): with
    // nobody reading, the device must meet EAGAIN, give the chain back and wait for EPOLLOUT.
    assert!(usize::from(N) * 1412 > 212_992);
    t.kick(1);
    // Drain the backend: everything arrives exactly once, in order, as the device resumes.
    for i in 0..N {
        let got = t.peer_recv(0);
        assert_eq!(&got[12..], &frame(1400, i as u8)[..], "frame {i}");
    }
    assert_eq!(t.wait_used(1, usize::from(N)).len(), usize::from(N));
    t.peers[0].set_nonblocking(true).unwrap();
    assert!(
        t.peers[0].recv(&mut [0u8; 16]).is_err(),
        "no duplicate frames"
    );
}

#[test]
fn a_new_call_descriptor_on_a_running_ring_is_signalled_so_no_interrupt_is_lost() {
    let mut t = TestFrontend::new(1, F_MRG_RXBUF | F_EVENT_IDX);
    // An interrupt may have gone to the old descriptor just before the swap (QEMU sends its
    // final SET_VRING_CALL after SET_VRING_KICK); the new one must get one too.
    let fresh = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
    t.fe.set_vring_call(1, &fresh).unwrap();
    t.sync();
    assert_eq!(fresh.read().expect("new call descriptor signalled"), 1);
    t.calls[1] = fresh;
    // And it is the one used from now on.
    t.send(0, 0, &frame(60, 1));
    t.wait_used(1, 1);
}

#[test]
fn set_link_changes_the_config_status_and_notifies_the_frontend() {
    use vhost::vhost_user::message::VhostUserConfigFlags;
    use vhost::vhost_user::VhostUserFrontend;
    let mut t = TestFrontend::new(1, F_MRG_RXBUF | F_EVENT_IDX | (1 << 16));
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    t.fe.set_backend_request_fd(&theirs).unwrap();
    t.sync();
    let status = |t: &mut TestFrontend| {
        let (_, cfg) =
            t.fe.get_config(0, 24, VhostUserConfigFlags::empty(), &[0u8; 24])
                .unwrap();
        u16::from_le_bytes([cfg[6], cfg[7]])
    };
    assert_eq!(status(&mut t), 1, "VIRTIO_NET_S_LINK_UP");
    let port = t.port.clone().unwrap();
    for (up, expected) in [(false, 0), (true, 1)] {
        port.set_link(up);
        let mut header = [0u8; 12];
        ours.read_exact(&mut header).expect("config-change message");
        assert_eq!(
            u32::from_le_bytes(header[..4].try_into().unwrap()),
            2,
            "CONFIG_CHANGE_MSG"
        );
        assert_eq!(status(&mut t), expected);
    }
    // Setting the state it already has sends nothing.
    port.set_link(true);
    ours.set_nonblocking(true).unwrap();
    assert!(
        ours.read(&mut [0u8; 12]).is_err(),
        "no message without a change"
    );
}

/// The port's MAC in [`start_device`].
const PORT_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const OTHER_MAC: [u8; 6] = [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc];

/// A frame to `dst`, VLAN-tagged if `vid` is given, whose last byte is `tag`.
fn addressed(dst: [u8; 6], vid: Option<u16>, tag: u8) -> Vec<u8> {
    let mut f = hdr();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 9]);
    if let Some(v) = vid {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(&[0u8; 45]);
    f.push(tag);
    f
}

/// Sends `dropped` then `kept`; the next used rx buffer must hold `kept` (frames are delivered
/// in order, so had `dropped` passed it would be there instead).
fn expect_filtered(t: &mut TestFrontend, dropped: &[u8], kept: &[u8]) {
    t.peer_send(0, dropped);
    t.peer_send(0, kept);
    let used = t.wait_used(0, 1);
    let (id, len) = used[0];
    assert_eq!(len as usize, kept.len());
    let addr = t.rings[0].buffer_addr(id as u16, BUF_LEN);
    assert_eq!(
        t.ram.read(addr + 12, len as usize - 12),
        &kept[12..],
        "filtered frame passed"
    );
    // Give the buffer back.
    t.rings[0].make_available(&t.ram, &[id as u16]);
    t.kick(0);
}

fn delivered(t: &mut TestFrontend, frame: &[u8]) {
    t.peer_send(0, frame);
    let (id, len) = t.wait_used(0, 1)[0];
    assert_eq!(len as usize, frame.len());
    t.rings[0].make_available(&t.ram, &[id as u16]);
    t.kick(0);
}

#[test]
fn control_queue_commands_set_the_filter_the_rx_path_applies() {
    use std::sync::{Arc, Mutex};
    use vhost_user_netd::events::{EventBus, EventSink};
    use vhost_user_netd::qmp::session_out::SessionOut;

    /// Collects what the event bus writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let events = Arc::new(EventBus::default());
    let sink = Sink::default();
    let session = SessionOut::spawn(Box::new(sink.clone()), Box::new(|| {}), "sink", ()).unwrap();
    let subscriber: Arc<dyn EventSink> = session.clone();
    events.subscribe(&subscriber);
    let changes = || {
        // Events are written by the session's own thread.
        session.drain(std::time::Instant::now() + Duration::from_secs(5));
        String::from_utf8_lossy(&sink.0.lock().unwrap())
            .matches("NIC_RX_FILTER_CHANGED")
            .count()
    };

    let features = F_MRG_RXBUF
        | F_EVENT_IDX
        | F_CTRL_VQ
        | F_CTRL_RX
        | F_CTRL_RX_EXTRA
        | F_CTRL_VLAN
        | F_CTRL_MAC_ADDR;
    let mut t = TestFrontend::new_with_events(1, features, Some(events.clone()));
    assert_eq!(t.acked & F_CTRL_VQ, F_CTRL_VQ, "control queue offered");
    let ctrl = t.setup_ctrl();
    assert_eq!(ctrl, 2);
    let port = t.port.clone().unwrap();
    t.rings[0].post_buffers(&t.ram, 0, 32, BUF_LEN as u32, true);
    t.kick(0);

    // From reset the device is promiscuous, and query-rx-filter says what the daemon knows.
    delivered(&mut t, &addressed(OTHER_MAC, None, 1));
    let q = vhost_user_netd::qmp::stats::rx_filter(&port);
    assert_eq!(q["promiscuous"], true);

    // Promiscuous off: only our MAC and broadcast get through.
    assert_eq!(t.ctrl_command(ctrl, 0, 0, &[0]), 0);
    expect_filtered(
        &mut t,
        &addressed(OTHER_MAC, None, 2),
        &addressed(PORT_MAC, None, 3),
    );
    delivered(&mut t, &addressed([0xff; 6], None, 4));
    let q = vhost_user_netd::qmp::stats::rx_filter(&port);
    assert_eq!(q["promiscuous"], false, "{q}");
    assert_eq!(q["unicast"], "normal");
    assert_eq!(q["main-mac"], "52:54:00:12:34:56");
    assert_eq!(changes(), 1, "NIC_RX_FILTER_CHANGED once");

    // The MAC table lets another unicast address in (and, unqueried, no second event).
    let mut table = 1u32.to_le_bytes().to_vec();
    table.extend_from_slice(&OTHER_MAC);
    table.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(t.ctrl_command(ctrl, 1, 0, &table), 0);
    delivered(&mut t, &addressed(OTHER_MAC, None, 5));
    assert_eq!(changes(), 1, "no second event before query-rx-filter");
    port.rx_filter_queried();
    let q = vhost_user_netd::qmp::stats::rx_filter(&port);
    assert_eq!(q["unicast-table"], serde_json::json!(["52:54:00:aa:bb:cc"]));

    // VLAN filtering: only VLANs added pass.
    assert_eq!(t.ctrl_command(ctrl, 2, 0, &5u16.to_le_bytes()), 0);
    assert_eq!(changes(), 2, "event again after the query");
    expect_filtered(
        &mut t,
        &addressed(PORT_MAC, Some(6), 6),
        &addressed(PORT_MAC, Some(5), 7),
    );
    let q = vhost_user_netd::qmp::stats::rx_filter(&port);
    assert_eq!(q["vlan-table"], serde_json::json!([5]));
    assert_eq!(q["vlan"], "normal");
    // Migration starts (SET_FEATURES with LOG_ALL): the guest's filter stays.
    t.fe.set_features(t.acked | F_LOG_ALL).unwrap();
    t.sync();
    let q = vhost_user_netd::qmp::stats::rx_filter(&port);
    assert_eq!(q["vlan-table"], serde_json::json!([5]), "{q}");
    port.rx_filter_queried();
    assert_eq!(t.ctrl_command(ctrl, 3, 0, &[]), 0, "announce ack");
    assert_eq!(changes(), 2, "an announce ack is no filter change");

    // Refused commands answer VIRTIO_NET_ERR and change nothing.
    assert_eq!(t.ctrl_command(ctrl, 0, 0, &[]), 1, "no payload");
    assert_eq!(t.ctrl_command(ctrl, 9, 9, &[0]), 1, "unknown class");
    assert_eq!(
        t.ctrl_command(ctrl, 1, 0, &[200, 0, 0, 0]),
        1,
        "short table"
    );
    assert_eq!(
        t.ctrl_command(ctrl, 2, 0, &5000u16.to_le_bytes()),
        1,
        "VLAN id"
    );
    expect_filtered(
        &mut t,
        &addressed([0x52, 0x54, 0, 1, 1, 1], None, 8),
        &addressed(PORT_MAC, None, 9),
    );

    let device = port.device().unwrap();
    let counts = vhost_user_netd::device::lock(&device).counters()[0];
    assert_eq!(counts.rx_dropped_filtered, 3);
    assert_eq!(counts.ctrl_commands, 4);
    assert_eq!(counts.ctrl_errors, 4);
}
