//! The af-xdp backend alone on a veth pair in a namespace this test creates: frames sent from the
//! peer's packet socket come out of `recv`, frames given to `send_batch` reach the peer, in skb
//! and native mode. Needs root; skipped elsewhere unless the full suite runs.

#![cfg(feature = "af-xdp")]
#![allow(clippy::unwrap_used, clippy::cast_possible_wrap)]

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use vhost_user_netd_backends::af_xdp::{AfXdpBackend, AfXdpOptions};
use vhost_user_netd_backends::{Backend, InheritedFds, Opts};

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && std::env::var_os("VUNETD_FULL_SUITE").is_some() {
        panic!("the full suite needs root for AF_XDP");
    }
    root
}

/// A namespace with a veth pair (`vxsk0` for the backend, `vpeer0` for the packet socket);
/// the calling thread enters it. Deleted on drop.
struct VethNs {
    name: String,
}

impl VethNs {
    fn enter(tag: &str) -> Self {
        let name = format!("vunetd-b{tag}-{}", std::process::id());
        let ip = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().unwrap().success();
            assert!(ok, "ip {args:?}");
        };
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        let ns = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
        // SAFETY: changes only this thread's network namespace; the fd is valid.
        let entered = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(entered, 0);
        ip(&[
            "link", "add", "vxsk0", "type", "veth", "peer", "name", "vpeer0",
        ]);
        ip(&["link", "set", "vxsk0", "up"]);
        ip(&["link", "set", "vpeer0", "up"]);
        VethNs { name }
    }
}

impl Drop for VethNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A raw packet socket on `vpeer0`.
fn packet_socket() -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket call.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK,
            i32::from(proto),
        )
    };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: just created, owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new("vpeer0").unwrap();
    // SAFETY: NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    // SAFETY: sockaddr_ll is plain data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index as i32;
    // SAFETY: a valid sockaddr_ll of its size.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
    fd
}

/// A test frame: broadcast destination, an experimental EtherType, `tag` repeated.
fn frame(tag: u8, len: usize) -> Vec<u8> {
    let mut f = vec![tag; len];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, tag]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

fn open(mode: &str) -> AfXdpBackend {
    let mut opts = Opts::parse_keyval(&format!("af-xdp,ifname=vxsk0,mode={mode}")).unwrap();
    opts.take_str("type").unwrap();
    let opts = AfXdpOptions::from_opts(&mut opts).unwrap();
    AfXdpBackend::open(&opts, &mut InheritedFds::default()).unwrap()
}

fn exchange(mode: &str) {
    let _ns = VethNs::enter(mode);
    let backend = open(mode);
    let mut queue = backend.queue(0).unwrap();
    assert!(backend.queue(0).is_err(), "a queue is lent to one holder");
    let peer = packet_socket();

    // Peer → backend.
    for tag in 1..=3u8 {
        let f = frame(tag, 60 + usize::from(tag) * 100);
        // SAFETY: sends from a live buffer.
        let n = unsafe { libc::send(peer.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        assert_eq!(n, f.len() as isize, "{}", std::io::Error::last_os_error());
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 4096];
    while got.len() < 3 && Instant::now() < deadline {
        match queue.recv(&mut [IoSliceMut::new(&mut buf)]) {
            Ok(n) => got.push(buf[..n].to_vec()),
            Err(_) => {
                let mut p = libc::pollfd {
                    fd: queue.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 100) };
            }
        }
    }
    let want: Vec<Vec<u8>> = (1..=3u8)
        .map(|t| frame(t, 60 + usize::from(t) * 100))
        .collect();
    // IPv6 router solicitations and the like may come too: look for ours.
    for w in &want {
        assert!(got.contains(w), "frame {} not received ({mode})", w[13]);
    }

    // Backend → peer, one batch.
    let out: Vec<Vec<u8>> = (10..14u8).map(|t| frame(t, 1514)).collect();
    let slices: Vec<[IoSlice<'_>; 2]> = out
        .iter()
        .map(|f| [IoSlice::new(&f[..14]), IoSlice::new(&f[14..])])
        .collect();
    let refs: Vec<&[IoSlice<'_>]> = slices.iter().map(|s| &s[..]).collect();
    assert_eq!(queue.send_batch(&refs).unwrap(), 4);
    queue.flush().unwrap();
    let too_big = frame(20, 5000);
    assert_eq!(queue.send_batch(&[&[IoSlice::new(&too_big)]]).unwrap(), 1);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < 4 && Instant::now() < deadline {
        // SAFETY: receives into a live buffer.
        let n = unsafe { libc::recv(peer.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            let f = buf[..n as usize].to_vec();
            if out.contains(&f) {
                seen.push(f);
            }
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert_eq!(seen, out, "frames at the peer ({mode})");
    let counters = backend.counters();
    let too_big = counters.iter().find(|(k, _)| *k == "tx-dropped-too-big");
    assert_eq!(too_big, Some(&("tx-dropped-too-big", 1)));

    // The queue goes back to the backend when dropped, and can be taken again.
    drop(queue);
    assert!(backend.queue(0).is_ok());
}

#[test]
fn frames_cross_a_veth_in_skb_mode() {
    if can_run() {
        std::thread::spawn(|| exchange("skb")).join().unwrap();
    }
}

#[test]
fn frames_cross_a_veth_in_native_mode() {
    if can_run() {
        std::thread::spawn(|| exchange("native")).join().unwrap();
    }
}
