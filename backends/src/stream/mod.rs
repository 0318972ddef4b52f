//! The `stream` netdev: frames over a unix or TCP stream socket in QEMU's length-prefixed
//! format, as a server (one peer at a time) or a client (reconnecting if asked).
//!
//! A connection thread per netdev listens, accepts, connects and notices hang-ups; the datapath
//! (`queue.rs`) runs on the device's worker. The carrier is up exactly while a peer is connected,
//! and every change reaches the daemon through the [`LinkWatch`].

pub mod framing;
pub mod options;
mod queue;

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{info, warn};
use serde_json::Value;

pub use options::StreamOptions;
use queue::{StreamIo, StreamQueue};

use crate::batching::Batching;
use crate::fd_source::FdSource;
use crate::socket_address::{describe_inet, describe_unix, SocketAddress, UnixAddress};
use crate::{sys, Backend, BackendQueue, Capabilities, Error, LinkEvent, LinkWatch};

/// How long one TCP connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A `stream` netdev.
#[derive(Debug)]
pub struct StreamBackend {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    description: String,
    /// A unix server's socket file, removed at shutdown.
    socket_file: Option<PathBuf>,
}

/// State shared with the connection thread.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the connection thread (shutdown).
    wake: OwnedFd,
    /// Whether reads take many frames at once.
    batching: Batching,
}

#[derive(Default)]
struct State {
    conn: Option<Arc<Mutex<StreamIo>>>,
    peer: Option<Value>,
    watch: Option<LinkWatch>,
    stopped: bool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("connected", &self.conn.is_some())
            .field("peer", &self.peer)
            .field("stopped", &self.stopped)
            .finish()
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stopped(&self) -> bool {
        self.state().stopped
    }

    /// A peer connected: the carrier comes up (the watch is called without the lock held).
    fn connected(&self, io: Arc<Mutex<StreamIo>>, peer: Value) {
        let watch = {
            let mut s = self.state();
            if s.stopped {
                return;
            }
            s.conn = Some(io);
            s.peer = Some(peer.clone());
            s.watch.clone()
        };
        if let Some(w) = watch {
            w(LinkEvent::Up { peer });
        }
    }

    fn disconnected(&self) {
        let watch = {
            let mut s = self.state();
            s.conn = None;
            s.peer = None;
            s.watch.clone().filter(|_| !s.stopped)
        };
        if let Some(w) = watch {
            w(LinkEvent::Down);
        }
    }

    /// Waits until `fd` has one of `events` (true) or the netdev is shut down or `timeout`
    /// passes (false).
    fn wait_for(&self, fd: RawFd, events: libc::c_short, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            let ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    left.as_millis().min(i32::MAX as u128) as i32
                }
            };
            let mut fds = [
                libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            if fd < 0 {
                fds[0].events = 0;
            }
            match sys::poll(&mut fds, ms) {
                Ok(_) if fds[1].revents != 0 || self.stopped() => return false,
                Ok(_) if fds[0].revents != 0 => return true,
                Ok(_) => {}
                Err(e) => {
                    warn!("stream: poll: {e}");
                    return false;
                }
            }
        }
    }
}

/// Where connections come from.
enum Endpoint {
    Listen {
        listener: Listener,
        /// A unix server reports its own path as the peer (as QEMU does).
        own_path: Option<String>,
    },
    Connect {
        target: Target,
        reconnect: Option<Duration>,
    },
    /// A connected descriptor handed over once (`addr.type=fd` with `server=off`).
    Once,
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

#[derive(Debug, Clone)]
enum Target {
    Unix(UnixAddress),
    Tcp(Vec<SocketAddr>),
}

/// A connected socket and its peer as event data.
type Connection = (OwnedFd, Value);

impl StreamBackend {
    /// Opens the netdev: binds a server's listener, or makes a client's first connection
    /// attempt (an error unless `reconnect` says to keep trying).
    pub fn open(
        options: &StreamOptions,
        fds: &mut dyn FdSource,
        batching: Batching,
    ) -> Result<Self, Error> {
        let keep_alive =
            matches!(&options.addr, SocketAddress::Inet(i) if i.keep_alive == Some(true));
        if matches!(&options.addr, SocketAddress::Inet(i) if i.mptcp == Some(true)) {
            return Err(Error::Option(crate::OptionError::Invalid(
                "mptcp is not supported by vhost-user-netd".into(),
            )));
        }
        let (endpoint, description, socket_file, mut first) = if options.is_server() {
            let (endpoint, description, socket_file) = server_endpoint(options, fds)?;
            (endpoint, description, socket_file, None)
        } else {
            let (endpoint, description, first) = client_endpoint(options, fds, keep_alive)?;
            (endpoint, description, None, first)
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: sys::eventfd().map_err(|e| Error::io("eventfd", e))?,
            batching,
        });
        if let Some((fd, peer)) = first.take() {
            let io = Arc::new(Mutex::new(StreamIo::new(fd, batching)));
            shared.connected(io, peer);
        }
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("netdev-stream".into())
            .spawn(move || run(&thread_shared, endpoint, keep_alive))
            .map_err(|e| Error::io("spawning the stream thread", e))?;
        Ok(StreamBackend {
            shared,
            thread: Mutex::new(Some(thread)),
            description,
            socket_file,
        })
    }
}

impl Backend for StreamBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities::PLAIN_ONE_QUEUE
    }

    fn queue(&self, index: u16) -> Result<Box<dyn BackendQueue>, Error> {
        crate::only_queue_zero(index)?;
        let conn = self.shared.state().conn.clone();
        match conn {
            Some(io) => Ok(Box::new(StreamQueue::new(io))),
            None => Err(Error::io(
                "stream",
                io::Error::from(io::ErrorKind::NotConnected),
            )),
        }
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn carrier(&self) -> bool {
        self.shared.state().conn.is_some()
    }

    fn watch_link(&self, watch: LinkWatch) {
        let peer = {
            let mut s = self.shared.state();
            s.watch = Some(watch.clone());
            s.peer.clone()
        };
        if let Some(peer) = peer {
            watch(LinkEvent::Up { peer });
        }
    }

    fn shutdown(&self) {
        let conn = {
            let mut s = self.shared.state();
            s.stopped = true;
            s.watch = None;
            s.conn.take()
        };
        if let Some(io) = conn {
            sys::shutdown(queue::lock(&io).raw_fd());
        }
        sys::eventfd_signal(self.shared.wake.as_raw_fd());
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        if let Some(path) = &self.socket_file {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for StreamBackend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The connection thread: get a connection, watch it until it ends, repeat as the role says.
/// A server's listening socket: bound now (a unix path, an inet address) or taken from `fd=`.
/// Returns it with the netdev's description and the socket file to remove at shutdown.
fn server_endpoint(
    options: &StreamOptions,
    fds: &mut dyn FdSource,
) -> Result<(Endpoint, String, Option<PathBuf>), Error> {
    let mut socket_file = None;
    let (listener, own_path, text) = match &options.addr {
        SocketAddress::Unix(u) => {
            let l = listen_unix(u)?;
            if u.abstract_ns != Some(true) {
                socket_file = Some(PathBuf::from(&u.path));
            }
            (
                Listener::Unix(l),
                Some(u.path.clone()),
                format!("unix:{}", u.path),
            )
        }
        SocketAddress::Inet(i) => {
            let l = listen_tcp(i)?;
            let local = l.local_addr().map_err(|e| Error::io("stream", e))?;
            (Listener::Tcp(l), None, format!("tcp:{local}"))
        }
        SocketAddress::Fd(name) => {
            let fd = fds.take_fd(name)?;
            let listener = listener_from_fd(fd)?;
            let own = match &listener {
                Listener::Unix(l) => l
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| p.display().to_string())),
                Listener::Tcp(_) => None,
            };
            (listener, own, format!("fd={name}"))
        }
    };
    Ok((
        Endpoint::Listen { listener, own_path },
        format!("stream server {text}"),
        socket_file,
    ))
}

/// A client's connection: an `fd=` socket taken as it is, or a first attempt to connect (a
/// failure is an error unless `reconnect` says to keep trying). Returns the endpoint, the
/// netdev's description and the connection made, if one was.
fn client_endpoint(
    options: &StreamOptions,
    fds: &mut dyn FdSource,
    keep_alive: bool,
) -> Result<(Endpoint, String, Option<Connection>), Error> {
    let target = match &options.addr {
        SocketAddress::Fd(name) => {
            let fd = fds.take_fd(name)?;
            let peer = peer_of(&fd);
            sys::set_nonblocking(fd.as_raw_fd(), true).map_err(|e| Error::io("stream fd", e))?;
            return Ok((
                Endpoint::Once,
                format!("stream fd={name}"),
                Some((fd, peer)),
            ));
        }
        SocketAddress::Unix(u) => Target::Unix(u.clone()),
        SocketAddress::Inet(i) => Target::Tcp(i.resolve(None)?),
    };
    let reconnect = options.reconnect_delay();
    let first = match connect(&target, keep_alive) {
        Ok(c) => Some(c),
        Err(e) if reconnect.is_some() => {
            info!("stream: connecting failed ({e}); retrying every {reconnect:?}");
            None
        }
        Err(e) => return Err(e),
    };
    let text = match &target {
        Target::Unix(u) => format!("unix:{}", u.path),
        Target::Tcp(a) => format!("tcp:{}", a[0]),
    };
    Ok((
        Endpoint::Connect { target, reconnect },
        format!("stream client {text}"),
        first,
    ))
}

fn run(shared: &Shared, endpoint: Endpoint, keep_alive: bool) {
    let mut first = true;
    loop {
        if first {
            first = false;
            // A first connection made in `open` is already installed.
            let conn = shared.state().conn.clone();
            if let Some(io) = conn {
                let fd = queue::lock(&io).raw_fd();
                watch_until_hangup(shared, fd);
                if shared.stopped() {
                    return;
                }
                shared.disconnected();
            }
        }
        if shared.stopped() {
            return;
        }
        let conn = match &endpoint {
            Endpoint::Listen { listener, own_path } => {
                accept(shared, listener, own_path.as_deref())
            }
            Endpoint::Connect { target, reconnect } => {
                let Some(delay) = reconnect else {
                    info!("stream: peer gone and reconnect is off; the link stays down");
                    return;
                };
                if shared.wait_for(-1, 0, Some(*delay)) || shared.stopped() {
                    return;
                }
                match connect(target, keep_alive) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        log::debug!("stream: reconnecting: {e}");
                        continue;
                    }
                }
            }
            Endpoint::Once => return,
        };
        let Some((fd, peer)) = conn else { return };
        info!("stream: connected to {peer}");
        let raw = fd.as_raw_fd();
        shared.connected(
            Arc::new(Mutex::new(StreamIo::new(fd, shared.batching))),
            peer,
        );
        watch_until_hangup(shared, raw);
        if shared.stopped() {
            return;
        }
        info!("stream: peer disconnected");
        shared.disconnected();
    }
}

/// Returns when the peer hangs up (or the netdev shuts down).
fn watch_until_hangup(shared: &Shared, fd: RawFd) {
    shared.wait_for(fd, libc::POLLRDHUP, None);
}

fn accept(shared: &Shared, listener: &Listener, own_path: Option<&str>) -> Option<Connection> {
    loop {
        let raw = match listener {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        };
        if !shared.wait_for(raw, libc::POLLIN, None) {
            return None;
        }
        let accepted = match listener {
            Listener::Unix(l) => l.accept().map(|(s, a)| {
                let path = own_path
                    .map(str::to_string)
                    .or_else(|| a.as_pathname().map(|p| p.display().to_string()))
                    .unwrap_or_default();
                (OwnedFd::from(s), describe_unix(&path))
            }),
            Listener::Tcp(l) => l.accept().map(|(s, a)| {
                let _ = s.set_nodelay(true);
                (OwnedFd::from(s), describe_inet(&a))
            }),
        };
        match accepted {
            Ok((fd, peer)) => {
                if let Err(e) = sys::set_nonblocking(fd.as_raw_fd(), true) {
                    warn!("stream: accepted socket: {e}");
                    continue;
                }
                return Some((fd, peer));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                warn!("stream: accept: {e}");
                if !shared.wait_for(-1, 0, Some(Duration::from_millis(100))) && shared.stopped() {
                    return None;
                }
            }
        }
    }
}

fn connect(target: &Target, keep_alive: bool) -> Result<Connection, Error> {
    let (fd, peer) = match target {
        Target::Unix(u) => {
            let s = if u.abstract_ns == Some(true) {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(u.path.as_bytes())
                    .map_err(|e| Error::io("abstract socket name", e))?;
                UnixStream::connect_addr(&addr)
            } else {
                UnixStream::connect(&u.path)
            }
            .map_err(|e| Error::io(format!("connecting to {}", u.path), e))?;
            (OwnedFd::from(s), describe_unix(&u.path))
        }
        Target::Tcp(addrs) => {
            let mut last = None;
            let mut found = None;
            for a in addrs {
                match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
                    Ok(s) => {
                        found = Some((s, *a));
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            let (s, a) = found.ok_or_else(|| {
                Error::io(
                    format!("connecting to {}", addrs[0]),
                    last.unwrap_or_else(|| io::Error::from(io::ErrorKind::NotFound)),
                )
            })?;
            let _ = s.set_nodelay(true);
            if keep_alive {
                sys::setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)
                    .map_err(|e| Error::io("SO_KEEPALIVE", e))?;
            }
            (OwnedFd::from(s), describe_inet(&a))
        }
    };
    sys::set_nonblocking(fd.as_raw_fd(), true).map_err(|e| Error::io("stream socket", e))?;
    Ok((fd, peer))
}

fn listen_unix(u: &UnixAddress) -> Result<UnixListener, Error> {
    let what = || format!("listening on {}", u.path);
    if u.abstract_ns == Some(true) {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(u.path.as_bytes())
            .map_err(|e| Error::io(what(), e))?;
        return UnixListener::bind_addr(&addr).map_err(|e| Error::io(what(), e));
    }
    // A stale socket from an earlier run is replaced (as QEMU does); other files are not.
    if std::fs::symlink_metadata(&u.path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(&u.path);
    }
    UnixListener::bind(&u.path).map_err(|e| Error::io(what(), e))
}

fn listen_tcp(i: &crate::socket_address::InetAddress) -> Result<TcpListener, Error> {
    let first = i.first_port()?;
    let last = i.to.unwrap_or(first).max(first);
    let mut error = None;
    for port in first..=last {
        for addr in i.resolve(Some(port))? {
            match TcpListener::bind(addr) {
                Ok(l) => return Ok(l),
                Err(e) => error = Some(e),
            }
        }
    }
    Err(Error::io(
        format!("listening on {}:{}", i.host, i.port),
        error.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable)),
    ))
}

fn listener_from_fd(fd: OwnedFd) -> Result<Listener, Error> {
    let domain = sys::socket_domain(fd.as_raw_fd()).map_err(|e| Error::io("stream fd", e))?;
    Ok(if domain == libc::AF_UNIX {
        Listener::Unix(UnixListener::from(fd))
    } else {
        Listener::Tcp(TcpListener::from(fd))
    })
}

/// A connected descriptor's peer in event form.
fn peer_of(fd: &OwnedFd) -> Value {
    let domain = sys::socket_domain(fd.as_raw_fd()).unwrap_or(libc::AF_UNIX);
    let Ok(dup) = fd.try_clone() else {
        return Value::Null;
    };
    if domain == libc::AF_UNIX {
        let s = UnixStream::from(dup);
        let path = s
            .peer_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            .or_else(|| {
                s.local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            })
            .unwrap_or_default();
        describe_unix(&path)
    } else {
        TcpStream::from(dup)
            .peer_addr()
            .map(|a| describe_inet(&a))
            .unwrap_or(Value::Null)
    }
}
