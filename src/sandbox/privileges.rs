//! Dropping privileges once set-up is done: capabilities down to what the configuration still
//! needs at run time (`--keep-caps`), another user and group (`--user`/`--group`), and the
//! Landlock ruleset of [`super::filesystem`].
//!
//! Capabilities and credentials belong to each thread in Linux, and set-up has already started
//! threads (queue workers, port listeners, QMP), so the change is made in every thread: the
//! calling thread signals each other one (as glibc does for `setuid`, and libcap's `psx`), whose
//! handler makes the same async-signal-safe system calls on itself, and waits for each to
//! answer. Threads started later inherit the result. Rounds repeat until no thread is left that
//! has not answered, so a thread started during a round by one not yet changed is caught too.

use std::collections::BTreeSet;
use std::os::fd::RawFd;
use std::str::FromStr;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use caps::{CapSet, Capability, CapsHashSet};

/// What `--keep-caps` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KeepCaps {
    /// What the configuration needs: with a QMP listener, what `netdev_add` may need
    /// (CAP_NET_ADMIN for taps, CAP_NET_RAW for l2tpv3 and AF_XDP, CAP_BPF for AF_XDP); with
    /// an AF_XDP netdev that loaded its program, CAP_NET_ADMIN, CAP_BPF and CAP_SYS_ADMIN to
    /// remove it at exit; otherwise none.
    #[default]
    Auto,
    /// Exactly these (those the daemon holds; `none` is the empty list).
    List(CapsHashSet),
}

impl FromStr for KeepCaps {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => return Ok(KeepCaps::Auto),
            "none" | "" => return Ok(KeepCaps::List(CapsHashSet::new())),
            _ => {}
        }
        s.split(',')
            .map(|name| {
                let canonical = name.trim().to_ascii_uppercase();
                let canonical = if canonical.starts_with("CAP_") {
                    canonical
                } else {
                    format!("CAP_{canonical}")
                };
                Capability::from_str(&canonical).map_err(|_| format!("unknown capability '{name}'"))
            })
            .collect::<Result<CapsHashSet, _>>()
            .map(KeepCaps::List)
    }
}

/// The credentials to switch to (`--user`, `--group`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// What is left after the drop (for the log line and the tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub kept: CapsHashSet,
    pub ids: Option<Ids>,
    /// Whether the bounding set was cut too (needs CAP_SETPCAP).
    pub bounding: bool,
    /// Paths in the Landlock ruleset enforced, if the kernel has Landlock.
    pub landlock_rules: Option<usize>,
}

/// Why privileges could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("reading capabilities: {0}")]
    Read(String),
    #[error("{what}: {source}")]
    Call {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("thread {0} did not take the new privileges")]
    Thread(i32),
}

// The target of the change, read by the signal handler (a handler gets no arguments).
static KEEP: AtomicU64 = AtomicU64::new(0);
static UID: AtomicU32 = AtomicU32::new(u32::MAX);
static GID: AtomicU32 = AtomicU32::new(u32::MAX);
static CUT_BOUNDING: AtomicU32 = AtomicU32::new(0);
/// A Landlock ruleset to enforce (with no new privileges), -1 if none.
static RULESET: AtomicI32 = AtomicI32::new(-1);
/// The first error a thread met (as a step number * 1000 + errno), 0 if none.
static FAILED: AtomicI32 = AtomicI32::new(0);
/// Threads that answered (their tids).
static ANSWERED: [AtomicI32; 4096] = [const { AtomicI32::new(0) }; 4096];
static ANSWERS: AtomicUsize = AtomicUsize::new(0);

const LAST_CAP: u32 = 63;

/// Drops every thread's capabilities to `keep` (those the process holds), switches to `ids`
/// if given, and enforces the Landlock `ruleset` if given (with no new privileges).
pub fn drop_privileges(
    keep: &CapsHashSet,
    ids: Option<Ids>,
    ruleset: Option<RawFd>,
) -> Result<Dropped, PrivilegeError> {
    let permitted =
        caps::read(None, CapSet::Permitted).map_err(|e| PrivilegeError::Read(e.to_string()))?;
    let kept: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    let bounding = permitted.contains(&Capability::CAP_SETPCAP);
    KEEP.store(
        kept.iter().map(|c| c.bitmask()).fold(0, |a, b| a | b),
        Ordering::SeqCst,
    );
    UID.store(ids.map_or(u32::MAX, |i| i.uid), Ordering::SeqCst);
    GID.store(ids.map_or(u32::MAX, |i| i.gid), Ordering::SeqCst);
    CUT_BOUNDING.store(u32::from(bounding), Ordering::SeqCst);
    RULESET.store(ruleset.unwrap_or(-1), Ordering::SeqCst);
    FAILED.store(0, Ordering::SeqCst);
    broadcast()?;
    let failed = FAILED.load(Ordering::SeqCst);
    if failed != 0 {
        return Err(PrivilegeError::Call {
            what: STEPS[(failed / 1000) as usize % STEPS.len()],
            source: std::io::Error::from_raw_os_error(failed % 1000),
        });
    }
    Ok(Dropped {
        kept,
        ids,
        bounding,
        landlock_rules: None,
    })
}

const STEPS: [&str; 8] = [
    "",
    "PR_CAPBSET_DROP",
    "PR_CAP_AMBIENT_CLEAR_ALL",
    "setgroups/setresgid",
    "setresuid",
    "capset",
    "PR_SET_NO_NEW_PRIVS",
    "landlock_restrict_self",
];

fn signal_number() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

fn gettid() -> i32 {
    // SAFETY: gettid(2) takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Applies the target to every thread, the caller included.
fn broadcast() -> Result<(), PrivilegeError> {
    install_handler()?;
    let me = gettid();
    let mut done: BTreeSet<i32> = BTreeSet::new();
    loop {
        let pending: Vec<i32> = threads()
            .into_iter()
            .filter(|t| *t != me && !done.contains(t))
            .collect();
        if pending.is_empty() {
            break;
        }
        ANSWERS.store(0, Ordering::SeqCst);
        for slot in &ANSWERED {
            slot.store(0, Ordering::Relaxed);
        }
        for &tid in &pending {
            // SAFETY: tgkill(2) with our own pid, a tid read from /proc/self/task and a signal
            // whose handler is installed; a thread that ended meanwhile gives ESRCH.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal_number()) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for &tid in &pending {
            while !answered(tid) && thread_exists(tid) {
                if Instant::now() > deadline {
                    return Err(PrivilegeError::Thread(tid));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        done.extend(pending);
    }
    apply_here();
    Ok(())
}

fn answered(tid: i32) -> bool {
    let n = ANSWERS.load(Ordering::SeqCst).min(ANSWERED.len());
    ANSWERED[..n]
        .iter()
        .any(|t| t.load(Ordering::SeqCst) == tid)
}

fn thread_exists(tid: i32) -> bool {
    std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
}

fn threads() -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

extern "C" fn on_signal(_signal: libc::c_int) {
    apply_here();
    let slot = ANSWERS.fetch_add(1, Ordering::SeqCst);
    if let Some(s) = ANSWERED.get(slot) {
        s.store(gettid(), Ordering::SeqCst);
    }
}

fn install_handler() -> Result<(), PrivilegeError> {
    // SAFETY: sigaction is plain data; zero then filled in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_signal as *const () as usize;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: installs a handler that makes only async-signal-safe system calls and touches
    // only atomics.
    if unsafe { libc::sigaction(signal_number(), &action, std::ptr::null_mut()) } != 0 {
        return Err(PrivilegeError::Call {
            what: "sigaction",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn fail(step: i32) {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let _ = FAILED.compare_exchange(0, step * 1000 + errno, Ordering::SeqCst, Ordering::SeqCst);
}

/// The change, on the calling thread: only raw system calls (async-signal-safe).
fn apply_here() {
    let keep = KEEP.load(Ordering::SeqCst);
    if CUT_BOUNDING.load(Ordering::SeqCst) != 0 {
        for cap in 0..=LAST_CAP {
            // A thread started by one already changed has nothing left to drop (and no
            // CAP_SETPCAP to drop it with).
            // SAFETY: prctl with integer arguments; EINVAL past the kernel's last cap.
            let held = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) } == 1;
            if held && keep & (1 << cap) == 0 {
                // SAFETY: as above.
                let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
                if ret != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
                {
                    fail(1);
                }
            }
        }
    }
    // SAFETY: prctl with integer arguments.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } != 0
    {
        fail(2);
    }
    let uid = UID.load(Ordering::SeqCst);
    let gid = GID.load(Ordering::SeqCst);
    // SAFETY: getuid(2) takes no arguments and cannot fail.
    let current = unsafe { libc::syscall(libc::SYS_getuid) } as u32;
    if uid != u32::MAX && current != uid {
        // SAFETY: raw system calls on this thread only (glibc's wrappers would signal every
        // thread themselves); `groups` lives for the call.
        unsafe {
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
            let groups = [gid];
            if libc::syscall(libc::SYS_setgroups, 1, groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
            {
                fail(3);
            }
            if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
                fail(4);
            }
            libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
        }
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [
        Data {
            effective: keep as u32,
            permitted: keep as u32,
            inheritable: 0,
        },
        Data {
            effective: (keep >> 32) as u32,
            permitted: (keep >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: capset(2) reads a version-3 header and two data words that live for the call.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        fail(5);
    }
    let ruleset = RULESET.load(Ordering::SeqCst);
    if ruleset >= 0 {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            fail(6);
        }
        // SAFETY: landlock_restrict_self(2) takes a ruleset descriptor (open for the whole
        // broadcast) and flags 0.
        if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0) } != 0 {
            fail(7);
        }
    }
}

/// Looks up `--user` (a name or a number) and `--group` (default: the user's group).
pub fn resolve_ids(user: &str, group: Option<&str>) -> Result<Ids, String> {
    let (uid, user_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, passwd_by_uid(uid).map(|p| p.1)),
        Err(_) => {
            let (uid, gid) =
                passwd_by_name(user).ok_or_else(|| format!("no user named '{user}'"))?;
            (uid, Some(gid))
        }
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => vhost_user_netd_backends::sys::group_id(g)
                .ok_or_else(|| format!("no group named '{g}'"))?,
        },
        None => user_gid.ok_or_else(|| {
            format!("user {user} has no entry in the user database: name --group too")
        })?,
    };
    Ok(Ids { uid, gid })
}

fn passwd_by_name(name: &str) -> Option<(u32, u32)> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns null or a pointer to static storage, read at once; the command
    // line is parsed before any thread starts.
    let p = unsafe { libc::getpwnam(name.as_ptr()) };
    // SAFETY: non-null, so it points at a valid passwd record.
    (!p.is_null()).then(|| unsafe { ((*p).pw_uid, (*p).pw_gid) })
}

fn passwd_by_uid(uid: u32) -> Option<(u32, u32)> {
    // SAFETY: as in passwd_by_name.
    let p = unsafe { libc::getpwuid(uid) };
    // SAFETY: non-null, so it points at a valid passwd record.
    (!p.is_null()).then(|| unsafe { ((*p).pw_uid, (*p).pw_gid) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_caps_parses_names_in_any_spelling() {
        assert_eq!("auto".parse::<KeepCaps>().unwrap(), KeepCaps::Auto);
        assert_eq!(
            "none".parse::<KeepCaps>().unwrap(),
            KeepCaps::List(CapsHashSet::new())
        );
        let KeepCaps::List(l) = "net_admin,CAP_NET_RAW, bpf".parse::<KeepCaps>().unwrap() else {
            panic!()
        };
        assert_eq!(
            l,
            [
                Capability::CAP_NET_ADMIN,
                Capability::CAP_NET_RAW,
                Capability::CAP_BPF
            ]
            .into()
        );
        assert_eq!(
            "net_admin,flying".parse::<KeepCaps>().unwrap_err(),
            "unknown capability 'flying'"
        );
    }

    #[test]
    fn users_resolve_by_name_and_number() {
        assert_eq!(resolve_ids("root", None).unwrap(), Ids { uid: 0, gid: 0 });
        assert_eq!(
            resolve_ids("65534", Some("0")).unwrap(),
            Ids { uid: 65534, gid: 0 }
        );
        assert!(resolve_ids("no-such-user-here", None)
            .unwrap_err()
            .contains("no user named"));
        assert!(resolve_ids("root", Some("no-such-group-here")).is_err());
    }
}
