//! The af-xdp backend alone on a veth pair in a namespace this test creates: frames sent from the
//! peer's packet socket come out of `recv`, frames given to `send_batch` reach the peer, in skb
//! and native mode. Needs root; skipped elsewhere unless the full suite runs.

#![cfg(feature = "af-xdp")]
#![allow(clippy::unwrap_used, clippy::cast_possible_wrap)]

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use vhost_user_netd_backends::af_xdp::prepare::XskProgram;
use vhost_user_netd_backends::af_xdp::{AfXdpBackend, AfXdpOptions};
use vhost_user_netd_backends::{Backend, Error, FdSource, InheritedFds, Opts};

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && std::env::var_os("VUNETD_FULL_SUITE").is_some() {
        panic!("the full suite needs root for AF_XDP");
    }
    root
}

/// Runs `f` on a thread of its own (it enters namespaces), where root is there to run it.
fn in_own_thread(f: impl FnOnce() + Send + 'static) {
    if can_run() {
        std::thread::spawn(f).join().unwrap();
    }
}

/// Fails if an XDP program is still attached to the backend's end.
fn assert_no_program() {
    let out = Command::new("ip")
        .args(["link", "show", "vxsk0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(" xdp"), "program still attached: {text}");
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

fn open(options: &str, fds: &mut dyn FdSource) -> AfXdpBackend {
    let mut opts = Opts::parse_keyval(&format!("af-xdp,ifname=vxsk0,{options}")).unwrap();
    opts.take_str("type").unwrap();
    let opts = AfXdpOptions::from_opts(&mut opts).unwrap();
    AfXdpBackend::open(&opts, fds).unwrap()
}

/// Descriptors by name, as QMP's `getfd` table hands them out.
struct Named(Vec<(String, OwnedFd)>);

impl FdSource for Named {
    fn take_fd(&mut self, name: &str) -> Result<OwnedFd, Error> {
        let at = self.0.iter().position(|(n, _)| n == name).unwrap();
        Ok(self.0.remove(at).1)
    }
}

fn exchange(mode: &str) {
    let _ns = VethNs::enter(mode);
    let backend = open(&format!("mode={mode}"), &mut InheritedFds::default());
    check_frames(&backend, mode);
}

/// Frames both ways between the backend's queue 0 and a packet socket on the peer.
fn check_frames(backend: &AfXdpBackend, mode: &str) {
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
    let want: Vec<Vec<u8>> = (1..=3u8)
        .map(|t| frame(t, 60 + usize::from(t) * 100))
        .collect();
    // IPv6 neighbour discovery and the like come too: wait for ours among them.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 4096];
    while !want.iter().all(|w| got.contains(w)) && Instant::now() < deadline {
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
    for w in &want {
        assert!(
            got.contains(w),
            "frame {:x} not received ({mode}); got {} others",
            w[11],
            got.len()
        );
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
    in_own_thread(|| exchange("skb"));
}

#[test]
fn frames_cross_a_veth_in_native_mode() {
    in_own_thread(|| exchange("native"));
}

/// Enters a private mount namespace (this thread only) with a bpf filesystem at `dir`.
fn private_bpffs(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    // SAFETY: unshares this thread's filesystem view and mount namespace; plain flags.
    let ret = unsafe { libc::unshare(libc::CLONE_FS | libc::CLONE_NEWNS) };
    assert_eq!(ret, 0, "unshare: {}", std::io::Error::last_os_error());
    let root = std::ffi::CString::new("/").unwrap();
    let target = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    let bpf = std::ffi::CString::new("bpf").unwrap();
    // SAFETY: NUL-terminated strings; no data argument. The first call keeps the mounts below
    // from propagating back to the machine's namespace.
    unsafe {
        let ret = libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        );
        assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
        let ret = libc::mount(
            bpf.as_ptr(),
            target.as_ptr(),
            bpf.as_ptr(),
            0,
            std::ptr::null(),
        );
        assert_eq!(ret, 0, "mount bpf: {}", std::io::Error::last_os_error());
    }
}

/// `inhibit=on` both ways: the program attached beforehand, the backend inserting its own
/// socket into the pinned map (`map-path`), then adopting one already in the map (`sock-fds`).
fn prepared_program(dir: &std::path::Path) {
    let _ns = VethNs::enter("prep");
    private_bpffs(dir);
    let map = dir.join("xsks");
    let program = XskProgram::attach("vxsk0").unwrap();
    program.pin_map(map.to_str().unwrap()).unwrap();

    let by_map = open(
        &format!("inhibit=on,map-path={}", map.display()),
        &mut InheritedFds::default(),
    );
    check_frames(&by_map, "map-path");
    by_map.shutdown();
    drop(by_map);

    let socket = program.socket_for_queue(0).unwrap();
    let mut fds = Named(vec![("xsk0".into(), socket)]);
    let adopted = open("inhibit=on,sock-fds=xsk0", &mut fds);
    check_frames(&adopted, "sock-fds");
    adopted.shutdown();
    drop(adopted);

    program.detach_if_attached_here().unwrap();
    assert_no_program();
}

#[test]
fn inhibit_with_map_path_and_with_sock_fds() {
    if can_run() {
        let dir = std::env::temp_dir().join(format!("vunetd-bpffs-{}", std::process::id()));
        let mount_point = dir.clone();
        let result = std::thread::spawn(move || prepared_program(&mount_point)).join();
        // The thread's mount namespace, and the bpffs in it, ended with the thread.
        let _ = std::fs::remove_dir(&dir);
        result.unwrap();
    }
}

/// With an MTU above one UMEM frame the backend binds multi-buffer sockets under its own
/// frags-aware program: 9,000-byte frames cross both ways whole.
fn jumbo(mode: &str) {
    let _ns = VethNs::enter(&format!("j{mode}"));
    for ifname in ["vxsk0", "vpeer0"] {
        let ok = Command::new("ip")
            .args(["link", "set", ifname, "mtu", "9000"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "mtu 9000 on {ifname}");
    }
    let backend = open(&format!("mode={mode}"), &mut InheritedFds::default());
    assert!(
        backend.describe().contains(&format!("mode={mode}")),
        "{}",
        backend.describe()
    );
    let mut queue = backend.queue(0).unwrap();
    let peer = packet_socket();
    let big = frame(7, 9014);
    // SAFETY: sends from a live buffer.
    let n = unsafe { libc::send(peer.as_raw_fd(), big.as_ptr().cast(), big.len(), 0) };
    assert_eq!(n, big.len() as isize, "{}", std::io::Error::last_os_error());
    let mut buf = vec![0u8; 16384];
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut got, mut others) = (None, Vec::new());
    while got.is_none() && Instant::now() < deadline {
        let (head, tail) = buf.split_at_mut(6000);
        match queue.recv(&mut [IoSliceMut::new(head), IoSliceMut::new(tail)]) {
            Ok(n) if n == big.len() && buf[..n] == big[..] => got = Some(n),
            Ok(n) => others.push(n),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    assert_eq!(
        got,
        Some(9014),
        "9014-byte frame received whole ({mode}); other frames {others:?}; counters {:?}",
        backend.counters()
    );

    let out = frame(8, 9014);
    let pieces = [IoSlice::new(&out[..100]), IoSlice::new(&out[100..])];
    assert_eq!(queue.send_batch(&[&pieces[..]]).unwrap(), 1);
    queue.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        // SAFETY: receives into a live buffer.
        let n = unsafe { libc::recv(peer.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            seen = buf[..n as usize] == out[..];
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert!(seen, "9014-byte frame sent whole ({mode})");
    drop(queue);
    backend.shutdown();
    assert_no_program();
}

#[test]
fn jumbo_frames_cross_with_multi_buffer_in_skb_mode() {
    in_own_thread(|| jumbo("skb"));
}

#[test]
fn jumbo_frames_cross_with_multi_buffer_in_native_mode() {
    in_own_thread(|| jumbo("native"));
}
