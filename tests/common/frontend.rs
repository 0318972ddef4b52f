//! An in-process vhost-user frontend for tests without a VM: the `vhost` crate's `Frontend` for
//! the protocol, memfd "guest" memory and driver-side split rings, and the daemon's device served
//! on the other end of a socket pair with a socketpair backend (no privileges needed).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vhost_user_netd::config::{Listen, PortConfig};
use vhost_user_netd::events::EventBus;
use vhost_user_netd::port::Port;
use vhost_user_netd_backends::socketpair::SocketpairBackend;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[allow(unused_imports)] // each test binary uses a different subset
pub use vhost_user_netd_ring::test_ring::{DriverRing, GuestRam, RawDescriptor};

/// Where the frontend pretends guest RAM is mapped in its address space.
pub const USER_BASE: u64 = 0x7f00_0000_0000;
pub const RAM_SIZE: u64 = 128 << 20;
pub const QUEUE_SIZE: u16 = 256;
/// Room per ring: the ring and 256 buffers of up to 64 KiB + header (GSO frames).
pub const RING_STRIDE: u64 = 20 << 20;
pub const BUF_LEN: u64 = 2048;

pub const F_MRG_RXBUF: u64 = 1 << 15;
pub const F_EVENT_IDX: u64 = 1 << 29;
pub const F_INDIRECT: u64 = 1 << 28;
pub const F_PROTOCOL: u64 = 1 << 30;
pub const F_LOG_ALL: u64 = 1 << 26;
pub const F_VERSION_1: u64 = 1 << 32;
pub const F_CTRL_VQ: u64 = 1 << 17;
pub const F_CTRL_RX: u64 = 1 << 18;
pub const F_CTRL_VLAN: u64 = 1 << 19;
pub const F_CTRL_RX_EXTRA: u64 = 1 << 20;
pub const F_CTRL_MAC_ADDR: u64 = 1 << 23;

/// The daemon's device on one end, the test's driver on the other.
pub struct TestFrontend {
    pub fe: Frontend,
    pub ram: GuestRam,
    pub rings: Vec<DriverRing>,
    pub calls: Vec<EventFd>,
    pub kicks: Vec<EventFd>,
    /// The test's ends of the backend, one per queue pair.
    pub peers: Vec<UnixDatagram>,
    pub server: Option<JoinHandle<()>>,
    pub acked: u64,
    /// The in-process port (`None` when connected to a daemon process).
    pub port: Option<Port>,
}

/// Starts the device for `queue_pairs` on a socketpair backend; returns the frontend socket.
pub fn start_device(
    queue_pairs: u16,
    events: Option<Arc<EventBus>>,
) -> (UnixStream, Vec<UnixDatagram>, Port, JoinHandle<()>) {
    let (backend, peers) = SocketpairBackend::new(queue_pairs, true).expect("socketpair backend");
    let port = Port::new(
        PortConfig {
            id: "p0".into(),
            listen: Listen::Path("/unused".into()),
            client: false,
            netdev: "n0".into(),
            mac: Some(vhost_user_netd::mac::MacAddr([
                0x52, 0x54, 0, 0x12, 0x34, 0x56,
            ])),
            mtu: None,
            queues: queue_pairs,
        },
        Arc::new(backend),
    );
    let port = match events {
        Some(e) => port.with_events(e),
        None => port,
    };
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let server_port = port.clone();
    let server = std::thread::spawn(move || server_port.serve_connection(theirs));
    let peers = peers
        .into_iter()
        .map(|fd: OwnedFd| {
            let s = UnixDatagram::from(fd);
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s
        })
        .collect();
    (ours, peers, port, server)
}

impl TestFrontend {
    /// Connects to a daemon's vhost-user socket at `path` and starts every ring.
    pub fn connect(path: &std::path::Path, queue_pairs: u16, wanted: u64) -> Self {
        let fe =
            Frontend::connect(path, u64::from(queue_pairs) * 2 + 1).expect("connect to the daemon");
        Self::over_frontend(fe, queue_pairs, wanted)
    }

    /// Talks to a daemon over an already-connected socket and starts every ring.
    pub fn over(stream: UnixStream, queue_pairs: u16, wanted: u64) -> Self {
        let fe = Frontend::from_stream(stream, u64::from(queue_pairs) * 2 + 1);
        Self::over_frontend(fe, queue_pairs, wanted)
    }

    /// Connects to another vhost-user net backend (passt, in the benches) and starts every
    /// ring: none of this daemon's own answers is checked (its control queue, say).
    pub fn connect_other(path: &std::path::Path, queue_pairs: u16, wanted: u64) -> Self {
        let fe =
            Frontend::connect(path, u64::from(queue_pairs) * 2 + 1).expect("connect to backend");
        let mut t = Self::unstarted(fe);
        t.handshake_with(queue_pairs, wanted, false);
        t
    }

    fn unstarted(fe: Frontend) -> Self {
        TestFrontend {
            fe,
            ram: GuestRam::with_size(RAM_SIZE),
            rings: Vec::new(),
            calls: Vec::new(),
            kicks: Vec::new(),
            peers: Vec::new(),
            server: None,
            acked: 0,
            port: None,
        }
    }

    fn over_frontend(fe: Frontend, queue_pairs: u16, wanted: u64) -> Self {
        let mut t = Self::unstarted(fe);
        t.handshake(queue_pairs, wanted);
        t
    }

    /// Connects, negotiates `wanted` (masked by what is offered) and starts every ring.
    pub fn new(queue_pairs: u16, wanted: u64) -> Self {
        Self::new_with_events(queue_pairs, wanted, None)
    }

    /// As [`Self::new`], with the port's events (QMP) going to `events`.
    pub fn new_with_events(queue_pairs: u16, wanted: u64, events: Option<Arc<EventBus>>) -> Self {
        let (sock, peers, port, server) = start_device(queue_pairs, events);
        let fe = Frontend::from_stream(sock, u64::from(queue_pairs) * 2 + 1);
        let ram = GuestRam::with_size(RAM_SIZE);
        let mut t = TestFrontend {
            fe,
            ram,
            rings: Vec::new(),
            calls: Vec::new(),
            kicks: Vec::new(),
            peers,
            server: Some(server),
            acked: 0,
            port: Some(port),
        };
        t.handshake(queue_pairs, wanted);
        t
    }

    fn handshake(&mut self, queue_pairs: u16, wanted: u64) {
        self.handshake_with(queue_pairs, wanted, true);
    }

    /// `daemon`: the backend is this daemon, whose answers are checked on the way.
    fn handshake_with(&mut self, queue_pairs: u16, wanted: u64, daemon: bool) {
        let fe = &mut self.fe;
        fe.set_owner().expect("set_owner");
        let offered = fe.get_features().expect("get_features");
        assert_ne!(offered & F_PROTOCOL, 0, "protocol features offered");
        let pf = fe.get_protocol_features().expect("get_protocol_features");
        fe.set_protocol_features(
            pf & (VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::LOG_SHMFD
                | VhostUserProtocolFeatures::BACKEND_REQ),
        )
        .expect("set_protocol_features");
        if daemon {
            assert_eq!(
                fe.get_queue_num().expect("queue num"),
                u64::from(queue_pairs) * 2 + 1,
                "two vrings per pair and the control queue"
            );
        }
        self.acked = offered & (wanted | F_PROTOCOL | F_VERSION_1);
        fe.set_features(self.acked).expect("set_features");
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: RAM_SIZE,
            userspace_addr: USER_BASE,
            mmap_offset: 0,
            mmap_handle: self.ram.file.as_raw_fd(),
        };
        fe.set_mem_table(&[region]).expect("set_mem_table");
        for q in 0..usize::from(queue_pairs) * 2 {
            self.setup_ring(q);
        }
        self.sync();
    }

    /// Sets up vring `q` (the next one) and enables it.
    fn setup_ring(&mut self, q: usize) {
        {
            let ring = DriverRing::new(&self.ram, QUEUE_SIZE, 0x10_0000 + q as u64 * RING_STRIDE);
            let cfg = VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: QUEUE_SIZE,
                flags: 0,
                desc_table_addr: USER_BASE + ring.desc,
                used_ring_addr: USER_BASE + ring.used,
                avail_ring_addr: USER_BASE + ring.avail,
                log_addr: None,
            };
            let fe = &mut self.fe;
            fe.set_vring_num(q, QUEUE_SIZE).expect("vring num");
            fe.set_vring_addr(q, &cfg).expect("vring addr");
            fe.set_vring_base(q, 0).expect("vring base");
            let call = EventFd::new(EFD_NONBLOCK).expect("call");
            let kick = EventFd::new(EFD_NONBLOCK).expect("kick");
            fe.set_vring_call(q, &call).expect("vring call");
            fe.set_vring_kick(q, &kick).expect("vring kick");
            fe.set_vring_enable(q, true).expect("vring enable");
            self.rings.push(ring);
            self.calls.push(call);
            self.kicks.push(kick);
        }
    }

    /// Sets up the control queue (the vring after the data ones); returns its index.
    pub fn setup_ctrl(&mut self) -> usize {
        let q = self.rings.len();
        self.setup_ring(q);
        self.sync();
        q
    }

    /// Sends one control command on vring `q`; returns the device's one-byte answer
    /// (0 = `VIRTIO_NET_OK`).
    pub fn ctrl_command(&mut self, q: usize, class: u8, cmd: u8, data: &[u8]) -> u8 {
        let request_at = self.rings[q].buffer_addr(0, BUF_LEN);
        let ack_at = self.rings[q].buffer_addr(1, BUF_LEN);
        let mut request = vec![class, cmd];
        request.extend_from_slice(data);
        self.ram.write(request_at, &request);
        self.ram.write(ack_at, &[0xff]);
        self.rings[q].post_chain(
            &self.ram,
            0,
            &[(request_at, request.len() as u32, false), (ack_at, 1, true)],
        );
        self.kick(q);
        let used = self.wait_used(q, 1);
        assert_eq!(used[0].1, 1, "one reply byte written");
        self.ram.read(ack_at, 1)[0]
    }

    /// A request with a reply: once it is answered, the device has handled everything sent
    /// before it (the `Frontend` does not wait for acks of `SET_VRING_ENABLE` and friends).
    pub fn sync(&self) {
        self.fe.get_features().expect("sync round trip");
    }

    /// `SET_VRING_ENABLE`, applied by the time this returns.
    pub fn enable(&mut self, vring: usize, on: bool) {
        self.fe
            .set_vring_enable(vring, on)
            .expect("set_vring_enable");
        self.sync();
    }

    /// Stops every ring set up (`GET_VRING_BASE`), as QEMU does when its VM stops (a
    /// migration's switch-over); returns where each stopped.
    pub fn stop_rings(&mut self) -> Vec<u32> {
        (0..self.rings.len())
            .map(|q| self.fe.get_vring_base(q).expect("get_vring_base"))
            .collect()
    }

    /// Starts the rings again from `bases`, with new kick descriptors, as QEMU does when its
    /// VM runs again.
    pub fn restart_rings(&mut self, bases: &[u32]) {
        for (q, base) in bases.iter().enumerate() {
            self.fe.set_vring_base(q, *base as u16).expect("vring base");
            let kick = EventFd::new(EFD_NONBLOCK).expect("kick");
            self.fe.set_vring_kick(q, &kick).expect("vring kick");
            self.kicks[q] = kick;
        }
        self.sync();
    }

    /// Header length the device uses with the acked features.
    pub fn hdr_len(&self) -> usize {
        12
    }

    pub fn kick(&self, vring: usize) {
        self.kicks[vring].write(1).expect("kick");
    }

    /// Waits until the device has published at least `count` used entries on `vring` in total
    /// since the last `take_used`, awaiting the call eventfd. Returns them.
    pub fn wait_used(&mut self, vring: usize, count: usize) -> Vec<(u32, u32)> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            got.extend(self.rings[vring].take_used(&self.ram));
            if got.len() >= count {
                return got;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(
                !left.is_zero(),
                "vring {vring}: {} of {count} used entries after 10 s",
                got.len()
            );
            let revents = vhost_user_netd_backends::sys::poll_one(
                &self.calls[vring],
                libc::POLLIN,
                left.as_millis() as i32,
            )
            .expect("poll call");
            if revents != 0 {
                let _ = self.calls[vring].read();
            }
        }
    }

    /// Posts a tx frame (with a zero virtio-net header) on pair `pair` in slot `slot`.
    pub fn send(&mut self, pair: usize, slot: u16, frame: &[u8]) {
        let mut data = vec![0u8; self.hdr_len()];
        data.extend_from_slice(frame);
        let vring = pair * 2 + 1;
        self.rings[vring].post_tx(&self.ram, slot, &data, BUF_LEN);
        self.kick(vring);
    }

    /// Receives one frame from the backend peer of `pair`.
    pub fn peer_recv(&self, pair: usize) -> Vec<u8> {
        let mut buf = vec![0u8; 70_000];
        let n = self.peers[pair].recv(&mut buf).expect("peer recv");
        buf.truncate(n);
        buf
    }

    /// Sends one frame (with vnet header) from the backend peer of `pair`.
    pub fn peer_send(&self, pair: usize, frame_with_hdr: &[u8]) {
        self.peers[pair].send(frame_with_hdr).expect("peer send");
    }
}

impl Drop for TestFrontend {
    fn drop(&mut self) {
        // Closing our end ends the device's connection; its thread then returns.
        let (dead, _) = UnixStream::pair().expect("pair");
        let fe = std::mem::replace(&mut self.fe, Frontend::from_stream(dead, 1));
        drop(fe);
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
    }
}

/// A test Ethernet frame of `len` bytes with a recognisable pattern.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, seed]);
    f
}
