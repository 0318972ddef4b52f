//! Captures of a port's frames: QEMU's `filter-dump` object (`object-add`, `--object`,
//! `--pcap`) and the slot a port's queue workers feed them through. The pcap writing itself is
//! `vhost_user_netd_backends::pcap`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub use vhost_user_netd_backends::pcap::{
    Capture, CaptureQueue, CaptureSpec, Toward, DEFAULT_MAXLEN,
};

/// A `filter-dump` object (QEMU's `-object filter-dump` / QMP `object-add`): a capture of a
/// netdev's frames. Besides QEMU's properties (`netdev`, `file`, `maxlen`, `queue`, `status`,
/// `position`, `insert`), `x-max-frames` and `x-max-bytes` stop it after that many frames or
/// before the file grows past that many bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterDump {
    pub id: String,
    pub netdev: String,
    pub spec: CaptureSpec,
    /// `status=off`: created, recording nothing.
    pub on: bool,
}

impl FilterDump {
    /// Takes the object's properties from `opts` (without `qom-type`), with QEMU's checks and
    /// texts.
    pub fn from_opts(opts: &mut vhost_user_netd_backends::Opts) -> Result<Self, String> {
        let e = |e: vhost_user_netd_backends::OptionError| e.to_string();
        let id = opts.take_id("id").map_err(e)?;
        let netdev = opts.require_str("netdev").map_err(e)?;
        let file = opts.require_str("file").map_err(e)?;
        let maxlen = match opts.take_u32("maxlen").map_err(e)? {
            Some(0) => return Err("Property 'filter-dump.maxlen' doesn't take value '0'".into()),
            Some(n) => n,
            None => DEFAULT_MAXLEN,
        };
        let queue = match opts.take_str("queue").map_err(e)? {
            None => CaptureQueue::All,
            Some(q) => CaptureQueue::parse(&q)
                .ok_or_else(|| format!("Parameter 'queue' does not accept value '{q}'"))?,
        };
        let on = match opts.take_str("status").map_err(e)?.as_deref() {
            None | Some("on") => true,
            Some("off") => false,
            Some(_) => {
                return Err("Invalid value for netfilter status, should be 'on' or 'off'".into())
            }
        };
        // Where the filter sits among a netdev's filters: a capture sees the frames as they
        // cross the port whatever the order, so these are checked and otherwise ignored.
        if let Some(p) = opts.take_str("position").map_err(e)? {
            if p != "head" && p != "tail" && !p.starts_with("id=") {
                return Err("Parameter 'position' expects 'head', 'tail' or 'id=<id>'".into());
            }
        }
        if let Some(i) = opts.take_str("insert").map_err(e)? {
            if i != "before" && i != "behind" {
                return Err(format!("Parameter 'insert' does not accept value '{i}'"));
            }
        }
        let max_frames = opts.take_u64("x-max-frames").map_err(e)?;
        let max_bytes = opts.take_size("x-max-bytes").map_err(e)?;
        let spec = CaptureSpec {
            file: file.into(),
            maxlen,
            queue,
            max_frames,
            max_bytes,
        };
        Ok(FilterDump {
            id,
            netdev,
            spec,
            on,
        })
    }
}

/// The captures on one port's traffic, read by its queue workers: one atomic load per frame
/// while there is none.
#[derive(Debug, Default)]
pub struct CaptureSlot {
    active: AtomicBool,
    captures: Mutex<Vec<(String, Arc<Capture>)>>,
}

impl CaptureSlot {
    /// Whether any capture is on (checked per frame; cheap).
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Runs `f` on every capture.
    pub fn each(&self, mut f: impl FnMut(&Capture)) {
        self.each_with_id(|_, c| f(c));
    }

    /// Runs `f` on every capture, with its id.
    pub fn each_with_id(&self, mut f: impl FnMut(&str, &Capture)) {
        let all = self.captures.lock().unwrap_or_else(|p| p.into_inner());
        for (id, c) in all.iter() {
            f(id, c);
        }
    }

    pub fn add(&self, id: &str, capture: Arc<Capture>) {
        let mut all = self.captures.lock().unwrap_or_else(|p| p.into_inner());
        all.push((id.to_string(), capture));
        self.active.store(true, Ordering::Relaxed);
    }

    /// Takes capture `id` off (the caller stops it).
    pub fn remove(&self, id: &str) -> Option<Arc<Capture>> {
        let mut all = self.captures.lock().unwrap_or_else(|p| p.into_inner());
        let pos = all.iter().position(|(i, _)| i == id)?;
        let (_, c) = all.remove(pos);
        self.active.store(!all.is_empty(), Ordering::Relaxed);
        Some(c)
    }
}
