//! Packet capture to pcap files: what `filter-dump`, `--pcap` and the `dump` netdev write,
//! as `tshark`/`tcpdump` read it (classic pcap, microsecond timestamps, Ethernet, QEMU's
//! header).
//!
//! The datapath never waits for the disk: a frame's first `maxlen` bytes are copied into a
//! bounded queue of reused buffers and the caller goes on; a writer thread of the capture's own
//! writes them out. When the queue is full (a slow or blocked disk) the record is dropped and
//! counted, never the frame. A capture may stop by itself after a number of frames or bytes.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use log::warn;

/// Records waiting for the writer before new ones are dropped.
const QUEUE_RECORDS: usize = 4096;
/// QEMU's default and largest snap length.
pub const DEFAULT_MAXLEN: u32 = 65536;

/// Which frames a capture takes, as QEMU's netfilter `queue` names them from the netdev's side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CaptureQueue {
    /// Both directions.
    #[default]
    All,
    /// What the netdev receives: frames the guest sends.
    Rx,
    /// What the netdev transmits: frames to the guest.
    Tx,
}

/// Where a frame through the port goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toward {
    /// From the guest to the netdev.
    Netdev,
    /// From the netdev to the guest.
    Guest,
}

impl CaptureQueue {
    fn takes(self, d: Toward) -> bool {
        match self {
            CaptureQueue::All => true,
            CaptureQueue::Rx => d == Toward::Netdev,
            CaptureQueue::Tx => d == Toward::Guest,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "all" => Some(CaptureQueue::All),
            "rx" => Some(CaptureQueue::Rx),
            "tx" => Some(CaptureQueue::Tx),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CaptureQueue::All => "all",
            CaptureQueue::Rx => "rx",
            CaptureQueue::Tx => "tx",
        }
    }
}

/// What to capture and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSpec {
    pub file: PathBuf,
    /// Bytes kept of each frame (pcap's snap length).
    pub maxlen: u32,
    pub queue: CaptureQueue,
    /// Stop after this many frames.
    pub max_frames: Option<u64>,
    /// Stop before the file would exceed this many bytes.
    pub max_bytes: Option<u64>,
}

impl CaptureSpec {
    pub fn new(file: impl Into<PathBuf>) -> Self {
        CaptureSpec {
            file: file.into(),
            maxlen: DEFAULT_MAXLEN,
            queue: CaptureQueue::All,
            max_frames: None,
            max_bytes: None,
        }
    }
}

/// What a capture counted.
#[derive(Debug, Default)]
pub struct CaptureCounters {
    /// Records written to the file.
    pub written: AtomicU64,
    /// Records dropped because the writer was behind.
    pub dropped: AtomicU64,
    /// Frames not recorded because a limit was reached.
    pub over_limit: AtomicU64,
}

#[derive(Debug)]
struct Record {
    sec: u32,
    usec: u32,
    orig_len: u32,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct Queue {
    records: VecDeque<Record>,
    spare: Vec<Vec<u8>>,
    stopping: bool,
    /// Frames and file bytes accounted so far (for the limits).
    frames: u64,
    bytes: u64,
}

/// A running capture: the queue the datapath feeds and the thread writing it out.
#[derive(Debug)]
pub struct Capture {
    pub spec: CaptureSpec,
    pub counters: CaptureCounters,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// The writer thread, and a channel that disconnects when it ends.
    writer: Mutex<Option<(JoinHandle<()>, std::sync::mpsc::Receiver<()>)>>,
}

fn lock(q: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    q.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pcap file header QEMU writes: magic, version 2.4, no zone, snap length, Ethernet.
fn file_header(snaplen: u32) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    h[16..20].copy_from_slice(&snaplen.to_le_bytes());
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h
}

impl Capture {
    /// Creates (truncates) the file, writes the pcap header and starts the writer. The error
    /// text is QEMU's.
    pub fn start(spec: CaptureSpec) -> Result<Arc<Capture>, String> {
        let open = |p: &Path| -> io::Result<File> {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .custom_flags(libc::O_CLOEXEC)
                .open(p)
        };
        let file = open(&spec.file).map_err(|e| {
            // QEMU prints strerror alone.
            let text = e.to_string();
            let text = text.split(" (os error").next().unwrap_or_default();
            format!("net dump: can't open {}: {text}", spec.file.display())
        })?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        out.write_all(&file_header(spec.maxlen))
            .and_then(|()| out.flush())
            .map_err(|e| format!("net dump write error: {e}"))?;
        let capture = Arc::new(Capture {
            queue: Mutex::new(Queue {
                bytes: 24,
                ..Queue::default()
            }),
            spec,
            counters: CaptureCounters::default(),
            wake: Condvar::new(),
            writer: Mutex::new(None),
        });
        let me = capture.clone();
        let (ended, ending) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                me.write_out(out);
                drop(ended);
            })
            .map_err(|e| format!("capture thread: {e}"))?;
        *capture.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some((thread, ending));
        Ok(capture)
    }

    /// Records a frame of `orig_len` bytes going `dir`, if this capture takes that direction:
    /// `fill` copies its first bytes into the buffer it is given and returns how many. Never
    /// waits for the disk.
    pub fn record(&self, dir: Toward, orig_len: usize, fill: impl FnOnce(&mut [u8]) -> usize) {
        if !self.spec.queue.takes(dir) {
            return;
        }
        let keep = orig_len.min(self.spec.maxlen as usize);
        let mut q = lock(&self.queue);
        if q.stopping {
            return;
        }
        let record_bytes = 16 + keep as u64;
        let over = self.spec.max_frames.is_some_and(|m| q.frames >= m)
            || self
                .spec
                .max_bytes
                .is_some_and(|m| q.bytes + record_bytes > m);
        if over {
            self.counters.over_limit.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if q.records.len() >= QUEUE_RECORDS {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut data = q.spare.pop().unwrap_or_default();
        data.resize(keep, 0);
        let n = fill(&mut data);
        data.truncate(n);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let was_empty = q.records.is_empty();
        q.frames += 1;
        q.bytes += 16 + data.len() as u64;
        q.records.push_back(Record {
            sec: now.as_secs() as u32,
            usec: now.subsec_micros(),
            orig_len: orig_len as u32,
            data,
        });
        drop(q);
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// Stops taking frames, writes what is queued and closes the file. A writer stuck on its
    /// file (a full pipe, a hung disk) is waited for two seconds, then left to finish alone:
    /// removing a capture, or the daemon's shutdown, never hangs on it.
    pub fn stop(&self) {
        lock(&self.queue).stopping = true;
        self.wake.notify_one();
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((thread, ending)) = writer {
            // The writer never sends: the wait ends when it drops its end (it finished).
            let stuck = matches!(
                ending.recv_timeout(std::time::Duration::from_secs(2)),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            );
            if !stuck {
                let _ = thread.join();
            } else {
                warn!(
                    "capture {}: its file does not take what is left; not waiting",
                    self.spec.file.display()
                );
            }
        }
    }

    fn write_out(&self, mut out: BufWriter<File>) {
        let mut batch: VecDeque<Record> = VecDeque::new();
        let mut failed = false;
        loop {
            let stopping = {
                let mut q = lock(&self.queue);
                while q.records.is_empty() && !q.stopping {
                    q = self.wake.wait(q).unwrap_or_else(|p| p.into_inner());
                }
                std::mem::swap(&mut batch, &mut q.records);
                q.stopping
            };
            for r in &batch {
                if failed {
                    break;
                }
                let mut h = [0u8; 16];
                h[0..4].copy_from_slice(&r.sec.to_le_bytes());
                h[4..8].copy_from_slice(&r.usec.to_le_bytes());
                h[8..12].copy_from_slice(&(r.data.len() as u32).to_le_bytes());
                h[12..16].copy_from_slice(&r.orig_len.to_le_bytes());
                if let Err(e) = out.write_all(&h).and_then(|()| out.write_all(&r.data)) {
                    warn!("capture {}: {e}", self.spec.file.display());
                    failed = true;
                } else {
                    self.counters.written.fetch_add(1, Ordering::Relaxed);
                }
            }
            if !failed {
                if let Err(e) = out.flush() {
                    warn!("capture {}: {e}", self.spec.file.display());
                    failed = true;
                }
            }
            {
                let mut q = lock(&self.queue);
                for r in batch.drain(..) {
                    if q.spare.len() < 256 {
                        q.spare.push(r.data);
                    }
                }
            }
            if stopping && lock(&self.queue).records.is_empty() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_written_as_pcap_and_limits_hold() {
        let dir = std::env::temp_dir().join(format!("vunetd-capture-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.pcap");
        let mut spec = CaptureSpec::new(&file);
        spec.maxlen = 10;
        spec.max_frames = Some(2);
        let c = Capture::start(spec).unwrap();
        for len in [5usize, 20, 30] {
            c.record(Toward::Guest, len, |buf| {
                buf.fill(0xab);
                buf.len()
            });
        }
        c.stop();
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(&bytes[..24], &file_header(10));
        // Two records: 5 of 5 bytes, 10 of 20; the third is over the frame limit.
        assert_eq!(bytes.len(), 24 + 16 + 5 + 16 + 10);
        assert_eq!(&bytes[24 + 8..24 + 16], &[5, 0, 0, 0, 5, 0, 0, 0]);
        assert_eq!(&bytes[45 + 8..45 + 16], &[10, 0, 0, 0, 20, 0, 0, 0]);
        assert_eq!(c.counters.written.load(Ordering::Relaxed), 2);
        assert_eq!(c.counters.over_limit.load(Ordering::Relaxed), 1);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            Capture::start(CaptureSpec::new("/nonexistent/x.pcap")).unwrap_err(),
            "net dump: can't open /nonexistent/x.pcap: No such file or directory"
        );
    }
}
