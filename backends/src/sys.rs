//! Checked wrappers over the raw system calls the backends use.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Converts a `-1` return into the thread's `errno`.
pub fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

fn iov_count(len: usize) -> libc::c_int {
    libc::c_int::try_from(len).unwrap_or(libc::c_int::MAX)
}

/// `readv(2)`, retried on `EINTR`.
pub fn readv(fd: RawFd, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
    let count = iov_count(bufs.len());
    loop {
        // SAFETY: IoSliceMut is ABI-compatible with iovec; each entry points at memory the caller
        // lent us mutably for the duration of the call, and `count` does not exceed the slice.
        let ret = unsafe { libc::readv(fd, bufs.as_mut_ptr().cast::<libc::iovec>(), count) };
        match check_size(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// `writev(2)`, retried on `EINTR`.
pub fn writev(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let count = iov_count(bufs.len());
    loop {
        // SAFETY: IoSlice is ABI-compatible with iovec; each entry points at readable memory the
        // caller lent us for the duration of the call, and `count` does not exceed the slice.
        let ret = unsafe { libc::writev(fd, bufs.as_ptr().cast::<libc::iovec>(), count) };
        match check_size(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// `sendmsg(2)` of `bufs` on a connected socket, never raising SIGPIPE whatever the process
/// does with it (a peer that closed is `EPIPE`); retried on `EINTR`.
pub fn send_vectored(sock: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: all-zero is a valid msghdr (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr().cast::<libc::iovec>().cast_mut();
    msg.msg_iovlen = bufs.len();
    loop {
        // SAFETY: IoSlice is ABI-compatible with iovec; the kernel only reads the buffers the
        // caller lent for the call, and `msg` names only those iovecs.
        let ret = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        match check_size(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Copies the bytes a stream socket holds from its peek offset into `bufs` without consuming
/// them (`recvmsg` with `MSG_PEEK`, never blocking); with `SO_PEEK_OFF` set, the offset moves
/// past what was copied. `Ok(0)` is the peer's end of stream.
pub fn peek(fd: RawFd, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
    // SAFETY: all-zero is a valid msghdr (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_mut_ptr().cast::<libc::iovec>();
    msg.msg_iovlen = bufs.len();
    loop {
        // SAFETY: IoSliceMut is ABI-compatible with iovec; each entry points at memory the caller
        // lent us mutably for the call, and `msg` names only those iovecs.
        let ret = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        match check_size(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Drops the first `len` bytes a TCP socket holds without copying them (`MSG_TRUNC`); returns
/// how many went.
pub fn discard(fd: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: with MSG_TRUNC on a TCP socket the kernel copies nothing; the null buffer is
        // never written.
        let ret = unsafe {
            libc::recv(
                fd,
                std::ptr::null_mut(),
                len,
                libc::MSG_TRUNC | libc::MSG_DONTWAIT,
            )
        };
        match check_size(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Sets a socket's peek offset (`SO_PEEK_OFF`): where the next [`peek`] starts, relative to the
/// first byte not yet consumed. TCP sockets take it from Linux 6.9 on.
pub fn set_peek_offset(fd: RawFd, offset: usize) -> io::Result<()> {
    let offset = libc::c_int::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, offset)
}

/// The smoothed round-trip time of a TCP socket (`TCP_INFO`).
pub fn tcp_rtt(fd: RawFd) -> io::Result<std::time::Duration> {
    // SAFETY: all-zero is a valid tcp_info (plain integers).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are live and describe a tcp_info-sized buffer.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    })?;
    Ok(std::time::Duration::from_micros(u64::from(info.tcpi_rtt)))
}

/// A socket's receive buffer size as the kernel keeps it (`SO_RCVBUF`, twice what was set).
pub fn receive_buffer(fd: RawFd) -> io::Result<usize> {
    Ok(usize::try_from(getsockopt_int(fd, libc::SO_RCVBUF)?).unwrap_or(0))
}

/// Sets or clears `O_NONBLOCK`.
pub fn set_nonblocking(fd: RawFd, nonblocking: bool) -> io::Result<()> {
    // SAFETY: F_GETFL takes no pointer argument; an invalid fd only yields EBADF.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let flags = if nonblocking {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: F_SETFL takes an integer argument; an invalid fd only yields EBADF.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) })?;
    Ok(())
}

/// Duplicates a descriptor with `FD_CLOEXEC` set.
pub fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes an integer argument; an invalid fd only yields EBADF.
    let new = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: `new` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Takes ownership of a descriptor number inherited from the parent (`fd=N`), after checking
/// that it is open.
pub fn adopt_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_GETFD takes no pointer argument; it only tells whether the number is open.
    check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: the descriptor is open, was inherited for this netdev and nothing else in the
    // process claims it (the CLI refuses the same number twice).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Polls one descriptor for `events` with a timeout in milliseconds; returns the revents.
pub fn poll_one(fd: &impl AsRawFd, events: libc::c_short, timeout_ms: i32) -> io::Result<i16> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call and the count is 1.
    check(unsafe { libc::poll(&mut pfd, 1, timeout_ms) })?;
    Ok(pfd.revents)
}

/// Most descriptors accepted with one message (more is an error, and all are closed).
pub const MAX_RECV_FDS: usize = 32;

/// `recvmsg(2)` into `buf`, appending any descriptors sent with SCM_RIGHTS to `fds` (with
/// close-on-exec). Returns the bytes read (0 at end of stream). Retried on `EINTR`.
pub fn recv_with_fds(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    // Room for MAX_RECV_FDS ints plus the cmsg header, 8-aligned.
    let mut control = [0u64; (MAX_RECV_FDS * 4 + 16) / 8 + 2];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; zero is a valid value for every field.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let n = loop {
        // SAFETY: msg points at the iovec (inside `buf`) and `control`, both live for the call.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // SAFETY: msg was filled by recvmsg; the CMSG_* macros only walk its control buffer.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: cmsg is non-null and inside the control buffer (CMSG_FIRSTHDR/NXTHDR contract).
        let (level, kind, len) =
            unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a constant computation.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = len.saturating_sub(header) / std::mem::size_of::<RawFd>();
            // SAFETY: CMSG_DATA points at `count` ints inside this cmsg in the control buffer.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: i < count, inside the cmsg's data; read_unaligned copes with alignment.
                let raw = unsafe { std::ptr::read_unaligned(data.add(i)) };
                // SAFETY: the kernel installed `raw` in our table for us; nobody else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: as above; returns null after the last header.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        fds.clear();
        return Err(io::Error::other("too many file descriptors in one message"));
    }
    Ok(n)
}

/// `sendmsg(2)` of one message, with `fd` beside it (SCM_RIGHTS) when given. Never raises
/// SIGPIPE; retried on `EINTR`.
pub fn send_with_fd(sock: RawFd, buf: &[u8], fd: Option<RawFd>) -> io::Result<usize> {
    let mut control = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; zero is a valid value for every field.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a constant computation.
        msg.msg_controllen =
            unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        // SAFETY: the control buffer (32 bytes) holds one cmsg with one int; CMSG_FIRSTHDR
        // points at its start and CMSG_DATA inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        }
    }
    loop {
        // SAFETY: msg points at the iovec (over `buf`) and `control`, both live for the call.
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `read(2)`, retried on `EINTR`.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    readv(fd, &mut [IoSliceMut::new(buf)])
}

/// `write(2)` (never raising SIGPIPE on sockets: the daemon ignores SIGPIPE), retried on `EINTR`.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    writev(fd, &[IoSlice::new(buf)])
}

/// `writev(2)` over iovecs the caller built, retried on `EINTR`.
///
/// # Safety
/// Every iovec must point at `iov_len` readable bytes that stay valid for the call.
pub unsafe fn writev_raw(fd: RawFd, iovecs: &[libc::iovec]) -> io::Result<usize> {
    let count = iov_count(iovecs.len());
    loop {
        // SAFETY: the caller guarantees every iovec is readable for the call.
        let ret = unsafe { libc::writev(fd, iovecs.as_ptr(), count) };
        match check_size(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// `shutdown(2)` both directions (wakes every poller of the socket with a hang-up).
pub fn shutdown(fd: RawFd) {
    // SAFETY: plain integer arguments; an invalid or unconnected socket only yields an error.
    let _ = unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// Polls several descriptors; returns how many have events (their `revents` are set).
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    loop {
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        match check(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map(|n| n as usize),
        }
    }
}

/// A non-blocking, close-on-exec eventfd: a wake-up another thread can poll.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments; returns a new descriptor or -1.
    let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: `fd` was just created by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Signals an eventfd.
pub fn eventfd_signal(fd: RawFd) {
    let _ = write(fd, &1u64.to_ne_bytes());
}

/// Sets an integer socket option.
pub fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    setsockopt_struct(fd, level, name, &value)
}

/// Reads an integer `SOL_SOCKET` option.
fn getsockopt_int(fd: RawFd, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live and describe a c_int-sized buffer.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// The address family of a socket (`SO_DOMAIN`), e.g. `AF_UNIX` or `AF_INET`.
pub fn socket_domain(fd: RawFd) -> io::Result<libc::c_int> {
    getsockopt_int(fd, libc::SO_DOMAIN)
}

/// The type of a socket (`SO_TYPE`), e.g. `SOCK_STREAM`.
pub fn socket_type(fd: RawFd) -> io::Result<libc::c_int> {
    getsockopt_int(fd, libc::SO_TYPE)
}

/// Whether a socket listens (`SO_ACCEPTCONN`).
pub fn socket_listens(fd: RawFd) -> io::Result<bool> {
    Ok(getsockopt_int(fd, libc::SO_ACCEPTCONN)? != 0)
}

/// The protocol of a socket (`SO_PROTOCOL`), e.g. `IPPROTO_UDP`.
pub fn socket_protocol(fd: RawFd) -> io::Result<libc::c_int> {
    getsockopt_int(fd, libc::SO_PROTOCOL)
}

/// A socket address in the kernel's form.
pub fn sockaddr_from(addr: std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        std::net::SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        std::net::SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// A unix socket path in the kernel's form.
pub fn sockaddr_unix(path: &str) -> io::Result<(libc::sockaddr_storage, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; zero is a valid value.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    if bytes.is_empty() || bytes.len() >= sun.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("UNIX socket path '{path}' is empty or too long"),
        ));
    }
    for (dst, src) in sun.sun_path.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    // SAFETY: sockaddr_storage is plain data; zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_un.
    unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sun) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((storage, len as libc::socklen_t))
}

/// A new non-blocking, close-on-exec socket.
pub fn socket(
    domain: libc::c_int,
    kind: libc::c_int,
    protocol: libc::c_int,
) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments; returns a new descriptor or -1.
    let fd = check(unsafe {
        libc::socket(
            domain,
            kind | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            protocol,
        )
    })?;
    // SAFETY: `fd` was just created by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `bind(2)` to an address in the kernel's form.
pub fn bind(fd: RawFd, addr: &(libc::sockaddr_storage, libc::socklen_t)) -> io::Result<()> {
    // SAFETY: the address is a live sockaddr_storage and `addr.1` does not exceed its size.
    check(unsafe {
        libc::bind(
            fd,
            (&addr.0 as *const libc::sockaddr_storage).cast(),
            addr.1,
        )
    })?;
    Ok(())
}

/// Sets a socket option whose value is a plain C struct.
pub fn setsockopt_struct<T: Copy>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is a live T and its size is passed with it.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// A non-blocking TCP socket with a connection to `addr` under way: poll it for writability,
/// then [`take_socket_error`] tells how the connection went.
pub fn connect_nonblocking(addr: std::net::SocketAddr) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = socket(domain, libc::SOCK_STREAM, 0)?;
    let (storage, len) = sockaddr_from(addr);
    // SAFETY: `storage` is a live sockaddr_storage and `len` does not exceed its size.
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    match check(ret) {
        Ok(_) => Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(fd),
        Err(e) => Err(e),
    }
}

/// The pending error of a socket (`SO_ERROR`), cleared by reading it.
pub fn take_socket_error(fd: RawFd) -> io::Result<()> {
    match getsockopt_int(fd, libc::SO_ERROR)? {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Makes the next `close` of a TCP socket send a reset instead of a FIN.
pub fn set_linger_reset(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = setsockopt_struct(fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger);
}

/// `shutdown(2)` of the sending direction: the peer reads end-of-file.
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: plain integer arguments; an unconnected socket only yields an error.
    let _ = unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// Raises the soft limit on open descriptors to the hard limit: a stack with many flows holds
/// one socket per flow, beyond the usual soft limit of 1024.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a live rlimit the kernel fills in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0
        && limit.rlim_cur < limit.rlim_max
    {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit; failure leaves the old limit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
}

/// The MTU of interface `name` in the calling thread's network namespace (`SIOCGIFMTU`; sysfs
/// may show another namespace's interfaces).
pub fn interface_mtu(name: &str) -> io::Result<u32> {
    // SAFETY: ifreq is plain data; zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (dst, &b) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([b]);
    }
    // SAFETY: a datagram socket only to carry the ioctl; closed below.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCGIFMTU reads the name from and writes the MTU into `req`, valid for the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFMTU, &mut req) })?;
    // SAFETY: the kernel filled the `ifru_mtu` member of the union.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// A group's id from its name (`getgrnam_r`: safe with other threads running), `None` if the
/// group database has no such group.
pub fn group_id(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: group is plain data; zero is a valid value for every field.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is to live memory of the size given; `found` is set to `&group` or
    // null, and `group`'s strings point into `buf`, which outlives their use here.
    let ret = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    (ret == 0 && !found.is_null()).then_some(group.gr_gid)
}
