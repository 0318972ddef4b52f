//! vhost-user messages from a hostile frontend, with real file descriptors of every size and
//! kind attached: memfds too small for the regions or logs they are said to back, sealed and
//! unsealed ones, memfds shrunk after they were mapped, eventfds at their maximum count, full
//! pipes, directories, sockets and `/dev/null` as notifiers and channels.
//!
//! The input is a little program: each step sends one message to the daemon's dispatcher
//! (`Handler::serve`, on a real device with its queue workers and a socketpair backend) or
//! shrinks a memfd sent earlier. Memory tables, single regions, ring addresses and logs are
//! built from small choices so that they often describe something mappable; other payloads are
//! raw bytes. The process must neither crash nor hang, whatever the order, and the connection
//! must still answer `GET_FEATURES` at the end unless the daemon ended it.

#![no_main]

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vhost_user_netd::device::{DeviceConfig, NetDevice};
use vhost_user_netd::vhost_user::handler::Handler;
use vhost_user_netd::vhost_user::socket::{Connection, Message};
use vhost_user_netd_backends::socketpair::SocketpairBackend;
use vhost_user_netd_backends::Backend;
use vhost_user_netd_fuzz::Input;

/// Where the fuzzer's "frontend" pretends its memory is mapped.
const USER_BASE: u64 = 0x7f00_0000_0000;
/// Sizes memfds and regions are picked from.
const SIZES: [u64; 6] = [0, 4096, 8192, 65536, 1 << 20, 1 << 21];

/// The vhost-user requests the dispatcher knows, and a few it does not.
const REQUESTS: [u32; 44] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 9999,
];

/// A size: mostly from [`SIZES`], sometimes anything.
fn size(input: &mut Input) -> u64 {
    match input.byte() {
        250..=255 => input.u64(),
        b => SIZES[usize::from(b) % SIZES.len()],
    }
}

fn memfd(size: u64, seal: bool) -> Option<File> {
    let flags = libc::MFD_CLOEXEC | if seal { libc::MFD_ALLOW_SEALING } else { 0 };
    // SAFETY: the name is a valid NUL-terminated string; memfd_create takes no other pointer.
    let fd = unsafe { libc::memfd_create(c"fuzz".as_ptr(), flags) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size.min(1 << 22)).ok()?;
    if seal {
        // SAFETY: F_ADD_SEALS takes an integer argument.
        unsafe {
            libc::fcntl(
                fd,
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
            )
        };
    }
    Some(file)
}

fn pipe() -> Option<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return None;
    }
    // SAFETY: both descriptors were just created and are owned here.
    Some(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A descriptor of the kind the input chooses; memfds are kept in `files` for shrinking.
fn descriptor(input: &mut Input, files: &mut Vec<File>) -> Option<OwnedFd> {
    match input.next()? % 9 {
        0 | 1 => {
            let seal = input.byte() % 2 == 0;
            let file = memfd(size(input), seal)?;
            let fd = file.try_clone().ok()?.into();
            files.push(file);
            Some(fd)
        }
        2 => {
            let fd = vhost_user_netd_backends::sys::eventfd().ok()?;
            vhost_user_netd_backends::sys::set_nonblocking(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                false,
            )
            .ok()?;
            if input.byte() % 2 == 0 {
                let _ = vhost_user_netd_backends::sys::write(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &(u64::MAX - 1).to_ne_bytes(),
                );
            }
            Some(fd)
        }
        3 => {
            // A pipe's write end, full.
            let (r, w) = pipe()?;
            let raw = std::os::fd::AsRawFd::as_raw_fd(&w);
            vhost_user_netd_backends::sys::set_nonblocking(raw, true).ok()?;
            while vhost_user_netd_backends::sys::write(raw, &[0u8; 4096]).is_ok() {}
            vhost_user_netd_backends::sys::set_nonblocking(raw, false).ok()?;
            files.push(File::from(r));
            Some(w)
        }
        4 => pipe().map(|(r, _)| r),
        5 => File::open("/dev/null").ok().map(OwnedFd::from),
        6 => File::open("/").ok().map(OwnedFd::from),
        7 => UnixStream::pair().ok().map(|(a, _)| OwnedFd::from(a)),
        _ => File::open("/proc/self/stat").ok().map(OwnedFd::from),
    }
}

fn region(input: &mut Input) -> Vec<u8> {
    let gpa = u64::from(input.byte()) << 16;
    let size = size(input);
    let user = USER_BASE + (u64::from(input.byte()) << 20);
    let offset = match input.byte() % 4 {
        0 | 1 => 0,
        2 => 4096,
        _ => input.u64(),
    };
    [gpa, size, user, offset]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// The payload of `request`: structured for memory, ring and log requests, raw otherwise.
fn payload(request: u32, input: &mut Input) -> Vec<u8> {
    match request {
        // SET_MEM_TABLE: a count, padding, then regions.
        5 => {
            let count = u32::from(input.next().unwrap_or(1) % 4);
            let mut p = count.to_le_bytes().to_vec();
            p.extend_from_slice(&[0; 4]);
            for _ in 0..count {
                p.extend(region(input));
            }
            p
        }
        // ADD_MEM_REG / REM_MEM_REG: padding, then one region.
        37 | 38 => {
            let mut p = vec![0; 8];
            p.extend(region(input));
            p
        }
        // SET_LOG_BASE: size and offset.
        6 => [size(input), u64::from(input.byte()) << 12]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        // SET_VRING_NUM / SET_VRING_BASE / GET_VRING_BASE / SET_VRING_ENABLE: index, number.
        8 | 10 | 11 | 18 => {
            let index = u32::from(input.byte() % 4);
            let num = u32::from(input.pick(&[0u16, 1, 2, 256, 1024, 300, 32768, 65535]));
            [index.to_le_bytes(), num.to_le_bytes()].concat()
        }
        // SET_VRING_ADDR: index, flags, then three addresses near the regions and a log address.
        9 => {
            let index = u32::from(input.byte() % 4);
            let mut p = [index.to_le_bytes(), 0u32.to_le_bytes()].concat();
            for _ in 0..3 {
                let a =
                    USER_BASE + (u64::from(input.byte()) << 20) + (u64::from(input.byte()) << 8);
                p.extend_from_slice(&a.to_le_bytes());
            }
            p.extend_from_slice(&0u64.to_le_bytes());
            p
        }
        // SET_VRING_KICK / CALL / ERR: index, maybe the no-descriptor bit.
        12..=14 => {
            let v = u64::from(input.byte() % 4) | if input.byte() % 8 == 0 { 0x100 } else { 0 };
            v.to_le_bytes().to_vec()
        }
        _ => {
            let n = usize::from(input.byte());
            input.bytes(n).to_vec()
        }
    }
}

fn run(data: &[u8]) {
    static SETUP: std::sync::Once = std::sync::Once::new();
    // As in the daemon: a peer that went away is an error on the write, not a signal.
    // SAFETY: installing SIG_IGN for SIGPIPE touches no memory.
    SETUP.call_once(|| unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    });
    let Ok((backend, _peers)) = SocketpairBackend::new(1, true) else {
        return;
    };
    let caps = backend.capabilities();
    let config = DeviceConfig {
        mac: None,
        mtu: None,
        queue_pairs: 1,
    };
    let workers = vhost_user_netd::device::worker::Workers::default();
    let Ok(device) = NetDevice::new(config, Some(Arc::new(backend)), caps, true, &workers) else {
        return;
    };
    let Ok((mut ours, theirs)) = UnixStream::pair() else {
        return;
    };
    let _ = ours.set_nonblocking(true);
    let Ok(mut handler) = Handler::new(Connection::new(theirs), Arc::new(Mutex::new(device)))
    else {
        return;
    };
    let mut files: Vec<File> = Vec::new();
    let mut input = Input::new(data);
    let mut sink = [0u8; 4096];
    for _ in 0..48 {
        let Some(op) = input.next() else { break };
        if op % 8 == 7 {
            // A memfd sent earlier shrinks under whatever mapped it.
            if !files.is_empty() {
                let i = usize::from(input.byte()) % files.len();
                let to = size(&mut input) / 2;
                let _ = files[i].set_len(to);
            }
            continue;
        }
        let request = input.pick(&REQUESTS);
        let flags = 1 | if op & 1 != 0 { 8 } else { 0 };
        let payload = payload(request, &mut input);
        let count = input.byte() % 4;
        let fds = (0..count)
            .filter_map(|_| descriptor(&mut input, &mut files))
            .collect();
        let msg = Message {
            request,
            flags,
            payload,
            fds,
        };
        if handler.serve(msg).is_err() {
            // The connection ended (a mapping lost its memory and the daemon hung up).
            return;
        }
        // Replies are read so that the dispatcher never waits on a full socket.
        while matches!(ours.read(&mut sink), Ok(n) if n > 0) {}
    }
    // Whatever came before, the connection still answers: GET_FEATURES gets its 8 bytes.
    let get_features = Message {
        request: 1,
        flags: 1,
        ..Message::default()
    };
    if handler.serve(get_features).is_ok() {
        let mut reply = [0u8; 20];
        let n = ours.read(&mut reply).unwrap_or(0);
        assert_eq!(n, 20, "GET_FEATURES answered after the sequence");
        assert_eq!(
            u32::from_le_bytes([reply[8], reply[9], reply[10], reply[11]]),
            8
        );
    }
    drop(handler);
}

fuzz_target!(|data: &[u8]| run(data));
