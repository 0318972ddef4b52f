//! The daemon's confinement once it is set up (`--sandbox`, on by default), in this order:
//!
//! 1. [`privileges`]: capabilities down to what the configuration still needs at run time
//!    (`--keep-caps`, default `auto`), `--user`/`--group`, and the Landlock ruleset of
//!    [`filesystem`] (where the kernel has Landlock), in every thread;
//! 2. [`seccomp`]: no new privileges and a seccomp filter on every thread;
//! 3. role filters stacked on it by the threads serving a vhost-user connection
//!    ([`seccomp::connection_filter`]) and the queue threads ([`seccomp::queue_worker_filter`]),
//!    which `main` hands to the daemon after this (`Daemon::confine_threads`).
//!
//! Programs the backends start (tap scripts, the bridge helper, `guestfwd` commands) are run by
//! a launcher process forked before any of this (`vhost_user_netd_backends::launcher`), which
//! keeps the daemon's original privileges and runs only the programs its policy names.
//!
//! - `on`: a forbidden system call ends the process (`SIGSYS`; the service manager restarts it).
//! - `log`: a forbidden system call fails with `ENOSYS` and is logged on standard error, and
//!   the daemon goes on: for finding what a configuration still needs.
//! - `off`: nothing is installed and the daemon starts programs itself (for debugging);
//!   `--user` still switches users.

pub mod filesystem;
pub mod privileges;
pub mod seccomp;

use std::os::fd::AsRawFd;

use caps::{Capability, CapsHashSet};

pub use privileges::{Ids, KeepCaps};

/// How the daemon confines itself after set-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxMode {
    /// Nothing (for debugging).
    Off,
    /// A forbidden system call fails with ENOSYS and is logged.
    Log,
    /// A forbidden system call ends the process.
    #[default]
    On,
}

/// The sandbox's settings from the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxConfig {
    pub mode: SandboxMode,
    /// Programs the launcher may run besides those the command line's netdevs name
    /// (`--allow-spawn`): for netdevs added over QMP.
    pub allow_spawn: Vec<String>,
    pub keep_caps: KeepCaps,
    /// `--user`/`--group`, resolved.
    pub ids: Option<Ids>,
    /// Directories netdevs added over QMP may put sockets in or read (`--allow-path`).
    pub allow_paths: Vec<std::path::PathBuf>,
}

/// What the configuration needs at run time: capabilities for `--keep-caps=auto`, and paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeNeeds {
    /// The filesystem left to the daemon.
    pub fs: filesystem::FsAccess,
    /// A QMP listener: `netdev_add` may create taps, raw sockets and AF_XDP sockets.
    pub qmp: bool,
    /// An AF_XDP netdev loaded its XDP program, which is removed when it closes (libxdp looks
    /// it up by id: CAP_SYS_ADMIN). `inhibit=on` with `vhost-user-netd-xdp-helper` needs none.
    pub xdp_program: bool,
}

impl RuntimeNeeds {
    /// The capabilities `auto` keeps.
    pub fn capabilities(&self) -> CapsHashSet {
        let mut set = CapsHashSet::new();
        if self.qmp {
            set.extend([
                Capability::CAP_NET_ADMIN,
                Capability::CAP_NET_RAW,
                Capability::CAP_BPF,
            ]);
        }
        if self.xdp_program {
            // libxdp finds the program to remove by its id, which takes CAP_SYS_ADMIN.
            set.extend([
                Capability::CAP_NET_ADMIN,
                Capability::CAP_BPF,
                Capability::CAP_SYS_ADMIN,
            ]);
        }
        set
    }
}

/// Why the sandbox could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("dropping privileges: {0}")]
    Privileges(#[from] privileges::PrivilegeError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("building the Landlock ruleset: {0}")]
    Landlock(String),
}

/// What [`confine`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    pub mode: SandboxMode,
    pub dropped: Option<privileges::Dropped>,
}

impl std::fmt::Display for Confinement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sandbox {:?}", self.mode)?;
        if self.mode != SandboxMode::Off {
            write!(f, ": no new privileges, seccomp filter on every thread")?;
        }
        if let Some(d) = &self.dropped {
            let mut kept: Vec<Capability> = d.kept.iter().copied().collect();
            kept.sort_by_key(|c| c.index());
            let kept: Vec<String> = kept.iter().map(|c| c.to_string()).collect();
            write!(
                f,
                "; capabilities kept: {}",
                if kept.is_empty() {
                    "none".to_string()
                } else {
                    kept.join(",")
                }
            )?;
            match d.landlock_rules {
                Some(n) => write!(f, "; landlock: {n} paths")?,
                None if self.mode != SandboxMode::Off => write!(
                    f,
                    "; landlock: not in this kernel, filesystem not restricted"
                )?,
                None => {}
            }
            if let Some(ids) = d.ids {
                write!(f, "; running as uid {} gid {}", ids.uid, ids.gid)?;
            }
        }
        Ok(())
    }
}

/// Confines the whole process as `config` says; `needs` decides `--keep-caps=auto` and the
/// filesystem left.
pub fn confine(config: &SandboxConfig, needs: &RuntimeNeeds) -> Result<Confinement, SandboxError> {
    if config.mode == SandboxMode::Off && config.ids.is_none() {
        return Ok(Confinement {
            mode: config.mode,
            dropped: None,
        });
    }
    let keep = match &config.keep_caps {
        KeepCaps::Auto => needs.capabilities(),
        KeepCaps::List(list) => list.clone(),
    };
    let ruleset = if config.mode == SandboxMode::Off {
        None
    } else {
        needs
            .fs
            .ruleset()
            .map_err(|e| SandboxError::Landlock(e.to_string()))?
    };
    let mut dropped = privileges::drop_privileges(
        &keep,
        config.ids,
        ruleset.as_ref().map(|(fd, _)| fd.as_raw_fd()),
    )?;
    dropped.landlock_rules = ruleset.map(|(_, n)| n);
    seccomp::install(config.mode)?;
    Ok(Confinement {
        mode: config.mode,
        dropped: Some(dropped),
    })
}

/// A system call the filter forbids, for the tests that prove it.
#[cfg(feature = "sandbox-probe")]
pub use seccomp::{make_call_forbidden_to_workers, make_forbidden_call};
