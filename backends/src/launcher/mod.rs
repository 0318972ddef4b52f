//! Starting programs on the backends' behalf: tap `script=`/`downscript=`, `helper=`, and the
//! user stack's `guestfwd=...-cmd:` commands.
//!
//! Without a sandbox the daemon starts them itself ([`Launcher::InProcess`]), as QEMU does. A
//! sandboxed daemon may neither `execve` nor keep the privileges a script needs, so it forks a
//! launcher process before it confines itself ([`Launcher::fork`]): a single-threaded copy of
//! the daemon with its original credentials and no seccomp filter, which holds no descriptor but
//! its end of a socket pair and starts programs when the daemon asks. It runs only the programs
//! its [`LaunchPolicy`] names, fixed when it was forked (QEMU's default scripts and helper,
//! those named on the command line, and `--allow-spawn`), so a compromised daemon cannot make it
//! run anything else. It ends when the daemon closes the socket, killing the commands it
//! started.

mod process;
pub mod programs;
pub mod protocol;

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Child;
use std::sync::{Arc, Mutex};

use crate::netdev::{NetdevConfig, NetdevKind};
use crate::tap::options::{DEFAULT_DOWNSCRIPT, DEFAULT_HELPER, DEFAULT_SCRIPT};
use crate::user::options::GuestFwdTarget;
use protocol::{Reply, Request};

/// The programs a launcher process may start (by the exact text the netdev option gives: a
/// script or helper path, or a `guestfwd` command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPolicy {
    programs: BTreeSet<String>,
}

impl Default for LaunchPolicy {
    /// QEMU's default scripts and bridge helper: what a tap without `script=` runs.
    fn default() -> Self {
        LaunchPolicy {
            programs: [DEFAULT_SCRIPT, DEFAULT_DOWNSCRIPT, DEFAULT_HELPER]
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }
}

impl LaunchPolicy {
    /// Allows one more program.
    pub fn allow(&mut self, program: impl Into<String>) {
        self.programs.insert(program.into());
    }

    /// Allows what `netdev` starts: its scripts, helper or `guestfwd` commands.
    pub fn allow_netdev(&mut self, netdev: &NetdevConfig) {
        match &netdev.kind {
            NetdevKind::Tap(t) => {
                for p in [&t.script, &t.downscript, &t.helper].into_iter().flatten() {
                    if p != "no" && !p.is_empty() {
                        self.allow(p.clone());
                    }
                }
            }
            NetdevKind::Bridge(b) => self.allow(b.helper()),
            NetdevKind::User(u) => {
                for rule in &u.guestfwd {
                    if let GuestFwdTarget::Command(c) = &rule.target {
                        self.allow(c.clone());
                    }
                }
            }
            _ => {}
        }
    }

    pub fn permits(&self, program: &str) -> bool {
        self.programs.contains(program)
    }

    pub fn programs(&self) -> impl Iterator<Item = &str> {
        self.programs.iter().map(String::as_str)
    }
}

/// Who starts programs for the backends.
#[derive(Debug, Clone, Default)]
pub enum Launcher {
    /// The daemon itself (no sandbox).
    #[default]
    InProcess,
    /// A launcher process forked before the sandbox.
    Process(Arc<Client>),
}

impl Launcher {
    /// Forks the launcher process. Call while the process has one thread (before any backend
    /// or port starts one): the child goes on running this program's code.
    pub fn fork(policy: LaunchPolicy) -> io::Result<Launcher> {
        Ok(Launcher::Process(Arc::new(process::start(policy)?)))
    }

    /// The launcher process's pid, when there is one.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Launcher::InProcess => None,
            Launcher::Process(c) => Some(c.pid),
        }
    }

    /// Runs `script IFNAME` and waits for it (a non-zero exit is an error).
    pub fn run_script(&self, script: &str, ifname: &str) -> io::Result<()> {
        match self {
            Launcher::InProcess => programs::run_script(script, ifname),
            Launcher::Process(c) => c
                .call(&Request::RunScript {
                    script: script.into(),
                    ifname: ifname.into(),
                })
                .and_then(|(reply, _)| c.expect_done(reply)),
        }
    }

    /// Runs a bridge helper and returns the tap it opened.
    pub fn open_with_helper(&self, helper: &str, bridge: &str) -> io::Result<OwnedFd> {
        match self {
            Launcher::InProcess => programs::open_with_helper(helper, bridge),
            Launcher::Process(c) => {
                let (reply, fd) = c.call(&Request::OpenWithHelper {
                    helper: helper.into(),
                    bridge: bridge.into(),
                })?;
                c.expect_done(reply)?;
                fd.ok_or_else(|| io::Error::other("the launcher sent no tap"))
            }
        }
    }

    /// Starts a `guestfwd` command; returns the daemon's end of its stdin/stdout (non-blocking).
    pub fn spawn_command(&self, command: &str) -> io::Result<(OwnedFd, Spawned)> {
        let (fd, spawned) = match self {
            Launcher::InProcess => {
                let (fd, child) = programs::spawn_command(command)?;
                (fd, Spawned::Local(child))
            }
            Launcher::Process(c) => {
                match c.call(&Request::SpawnCommand {
                    command: command.into(),
                })? {
                    (Reply::Spawned { pid }, Some(fd)) => (
                        fd,
                        Spawned::Remote {
                            pid,
                            client: c.clone(),
                        },
                    ),
                    (reply, _) => return Err(c.expect_done(reply).err().unwrap_or_else(bad)),
                }
            }
        };
        crate::sys::set_nonblocking(fd.as_raw_fd(), true)?;
        Ok((fd, spawned))
    }
}

fn bad() -> io::Error {
    io::Error::other("unexpected answer from the launcher")
}

/// A command started for a `guestfwd` connection.
#[derive(Debug)]
pub enum Spawned {
    Local(Child),
    Remote { pid: u32, client: Arc<Client> },
}

impl Spawned {
    /// Whether the command has ended (and was reaped).
    pub fn has_exited(&mut self) -> bool {
        match self {
            Spawned::Local(child) => !matches!(child.try_wait(), Ok(None)),
            Spawned::Remote { pid, client } => {
                match client.call(&Request::HasExited { pid: *pid }) {
                    Ok((Reply::Exited(done), _)) => done,
                    _ => true,
                }
            }
        }
    }

    /// Ends the command and reaps it.
    pub fn kill(&mut self) {
        match self {
            Spawned::Local(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Spawned::Remote { pid, client } => {
                let _ = client.call(&Request::Kill { pid: *pid });
            }
        }
    }
}

/// The daemon's side of the launcher's socket; one request at a time.
pub struct Client {
    socket: Mutex<OwnedFd>,
    pid: u32,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "launcher pid {}", self.pid)
    }
}

impl Client {
    fn call(&self, request: &Request) -> io::Result<(Reply, Option<OwnedFd>)> {
        let socket = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        crate::sys::send_with_fd(socket.as_raw_fd(), &request.encode(), None)?;
        let mut buf = vec![0u8; protocol::MAX_MESSAGE];
        let mut fds = Vec::new();
        let n = crate::sys::recv_with_fds(socket.as_raw_fd(), &mut buf, &mut fds)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the launcher process has ended",
            ));
        }
        let reply = Reply::decode(&buf[..n]).map_err(io::Error::other)?;
        Ok((reply, fds.into_iter().next()))
    }

    fn expect_done(&self, reply: Reply) -> io::Result<()> {
        match reply {
            Reply::Done => Ok(()),
            Reply::Failed(why) => Err(io::Error::other(why)),
            _ => Err(bad()),
        }
    }
}
