//! The filesystem the confined daemon may still reach, enforced with Landlock (the `landlock`
//! crate) where the kernel has it: reading what name resolution, the user stack and AF_XDP read
//! (`/proc`, `/sys`, the resolver and NSS files, TFTP roots), the tap device, and creating and
//! removing sockets in the directories its sockets live in (and `--allow-path`), and libxdp's
//! lock directory and bpffs when AF_XDP may be used. Everything
//! else — the rest of `/etc`, `/home`, `/var`, writing anywhere else — is refused, whatever
//! the file permissions say.
//!
//! This module only builds the ruleset; it is enforced in every thread by [`super::privileges`]
//! (`landlock_restrict_self` acts on the calling thread only).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, BitFlags, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetError, ABI,
};

/// The newest Landlock ABI this daemon knows; older kernels enforce what they can.
const TARGET_ABI: ABI = ABI::V5;

/// Files the C library reads to resolve names (hosts, services) for sockets added over QMP.
const RESOLVER_FILES: &[&str] = &[
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
];

/// Read everywhere needed: kernel state, shared libraries NSS loads.
const READ_TREES: &[&str] = &[
    "/proc",
    "/sys",
    "/usr/lib",
    "/lib",
    "/lib64",
    "/dev/urandom",
];

/// Devices opened for reading and writing (and ioctl).
const DEVICES: &[&str] = &["/dev/net/tun", "/dev/null"];

/// What the daemon may still reach, from its configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsAccess {
    /// Files and trees only read (the resolver configuration, TFTP roots).
    pub read: Vec<PathBuf>,
    /// Directories sockets are created in and removed from.
    pub socket_dirs: Vec<PathBuf>,
    /// Directories whose files are created, locked and removed (libxdp's lock directory and
    /// bpffs, for af-xdp; `--allow-path`: sockets, TFTP roots and capture files of netdevs and
    /// captures added over QMP).
    pub state_dirs: Vec<PathBuf>,
}

impl FsAccess {
    /// Every path the ruleset names, with its access (for the docs and the log).
    fn rules(&self, abi: ABI) -> Vec<(PathBuf, BitFlags<AccessFs>)> {
        let read = AccessFs::ReadFile | AccessFs::ReadDir;
        let device = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
        let sockets =
            AccessFs::ReadDir | AccessFs::MakeSock | AccessFs::RemoveFile | AccessFs::ReadFile;
        let state = AccessFs::ReadDir
            | AccessFs::ReadFile
            | AccessFs::WriteFile
            | AccessFs::MakeReg
            | AccessFs::MakeSock
            | AccessFs::MakeDir
            | AccessFs::RemoveFile
            | AccessFs::RemoveDir
            | AccessFs::Truncate;
        let handled = AccessFs::from_all(abi);
        let mut rules = Vec::new();
        let fixed_read = RESOLVER_FILES.iter().chain(READ_TREES).map(PathBuf::from);
        for p in fixed_read.chain(self.read.iter().cloned()) {
            rules.push((p, read & handled));
        }
        for p in DEVICES {
            rules.push((PathBuf::from(p), device & handled));
        }
        for p in &self.socket_dirs {
            rules.push((p.clone(), sockets & handled));
        }
        for p in &self.state_dirs {
            rules.push((p.clone(), state & handled));
        }
        rules.retain(|(p, _)| p.exists());
        rules
    }

    /// The ruleset's descriptor, or `None` where the kernel has no Landlock.
    pub fn ruleset(&self) -> Result<Option<(OwnedFd, usize)>, RulesetError> {
        // libxdp makes its lock directory when it first needs it, which would be too late
        // once only existing paths can be allowed.
        for dir in &self.state_dirs {
            if dir.starts_with("/run") {
                let _ = std::fs::create_dir(dir);
            }
        }
        let rules = self.rules(TARGET_ABI);
        let mut ruleset = Ruleset::default()
            .handle_access(AccessFs::from_all(TARGET_ABI))?
            .create()?;
        for (path, access) in &rules {
            ruleset = ruleset.add_rules(path_beneath_rules([path], *access))?;
        }
        Ok(Option::<OwnedFd>::from(ruleset).map(|fd| (fd, rules.len())))
    }
}

/// Where libxdp keeps its lock (without bpffs) and pins its programs (with it).
pub const XDP_STATE_DIRS: &[&str] = &["/run/xdp", "/sys/fs/bpf"];

/// The directory a socket file lives in.
pub fn socket_dir(path: &Path) -> Option<PathBuf> {
    let parent = path.parent()?;
    Some(if parent.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        parent.to_path_buf()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_only_existing_paths_with_the_right_access() {
        let access = FsAccess {
            read: vec!["/etc/resolv.conf".into(), "/no/such/tftp".into()],
            socket_dirs: vec![std::env::temp_dir()],
            state_dirs: Vec::new(),
        };
        let rules = access.rules(TARGET_ABI);
        assert!(rules.iter().all(|(p, _)| p.exists()));
        let tmp = rules
            .iter()
            .find(|(p, _)| *p == std::env::temp_dir())
            .unwrap();
        assert!(tmp.1.contains(AccessFs::MakeSock | AccessFs::RemoveFile));
        assert!(!tmp.1.contains(AccessFs::WriteFile));
        let tun = rules
            .iter()
            .find(|(p, _)| p == Path::new("/dev/null"))
            .unwrap();
        assert!(tun.1.contains(AccessFs::WriteFile));
        assert!(rules.iter().all(|(_, a)| !a.contains(AccessFs::Execute)));
        assert_eq!(socket_dir(Path::new("vm.sock")), Some(PathBuf::from(".")));
    }
}
