//! The `dump` netdev (QEMU 1.x's `-net dump`, `NetdevDumpOptions`: `file`, `len`): every frame
//! that crosses a hub, recorded to a pcap file. QEMU put it on a VLAN (`vlan=`, 0 by default),
//! which later QEMU turned into hubs; here `vlan` is the hub id. It joins the hub as a mirror:
//! it gets a copy of every frame a member sends (unicast between two guests included, though
//! the hub does not flood those) and sends none. An uplink thread moves the copies into the
//! capture, whose writer thread does the disk I/O: a slow disk drops records, never frames.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use super::uplink::Uplink;
use super::{HubPortBackend, Hubs};
use crate::options::{OptionError, Opts};
use crate::pcap::{Capture, CaptureSpec, Toward, DEFAULT_MAXLEN};
use crate::{sys, Backend, BackendQueue, Capabilities, Error, Offloads};

/// The dump netdev's options as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DumpOptions {
    /// QEMU's default: `qemu-vlan<N>.pcap` in the working directory.
    pub file: Option<String>,
    /// Bytes kept of each frame (QEMU's default 64 KiB).
    pub len: Option<u64>,
    /// The hub (QEMU 1.x's VLAN), 0 by default.
    pub vlan: Option<i32>,
}

impl DumpOptions {
    pub fn from_opts(opts: &mut Opts) -> Result<Self, OptionError> {
        let o = DumpOptions {
            file: opts.take_str("file")?,
            len: opts.take_size("len")?,
            vlan: opts.take_i32("vlan")?,
        };
        if o.len == Some(0) {
            return Err(OptionError::Invalid(
                "Parameter 'len' expects a non-zero size".into(),
            ));
        }
        Ok(o)
    }

    pub fn hub(&self) -> i32 {
        self.vlan.unwrap_or(0)
    }

    /// The file written, QEMU's default unless given.
    pub fn file(&self) -> String {
        self.file
            .clone()
            .unwrap_or_else(|| format!("qemu-vlan{}.pcap", self.hub()))
    }

    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(f) = &self.file {
            m.insert("file".into(), Value::String(f.clone()));
        }
        if let Some(l) = self.len {
            m.insert("len".into(), l.into());
        }
        if let Some(v) = self.vlan {
            m.insert("vlan".into(), v.into());
        }
        m
    }
}

/// A running dump: the mirror on the hub, the capture, and the thread between them.
#[derive(Debug)]
pub struct DumpBackend {
    capture: Arc<Capture>,
    hub: i32,
    /// Stopped (and joined, which moves what the hub handed over) before the capture closes.
    uplink: Mutex<Option<Uplink>>,
    _mirror: HubPortBackend,
}

impl DumpBackend {
    pub fn open(options: &DumpOptions, hubs: &Hubs, name: &str) -> Result<Self, Error> {
        let maxlen = options
            .len
            .map_or(DEFAULT_MAXLEN, |l| l.min(u64::from(DEFAULT_MAXLEN)) as u32);
        let mut spec = CaptureSpec::new(options.file());
        spec.maxlen = maxlen;
        let capture = Capture::start(spec).map_err(|e| Error::io("dump", io::Error::other(e)))?;
        let mirror = HubPortBackend::open_mirror(options.hub(), hubs)?;
        let sink = PcapSink {
            capture: capture.clone(),
        };
        let uplink = Uplink::start(name, &mirror, &sink, "pcap")?;
        Ok(DumpBackend {
            capture,
            hub: options.hub(),
            uplink: Mutex::new(Some(uplink)),
            _mirror: mirror,
        })
    }
}

impl DumpBackend {
    /// Moves the last frames into the capture, then closes it.
    fn finish(&self) {
        self.uplink.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.capture.stop();
    }
}

impl Drop for DumpBackend {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Backend for DumpBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities::PLAIN_ONE_QUEUE
    }

    fn queue(&self, _index: u16) -> Result<Box<dyn BackendQueue>, Error> {
        Err(Error::Option(OptionError::Invalid(
            "a dump netdev records its hub's frames; no port can use it".into(),
        )))
    }

    fn describe(&self) -> String {
        format!(
            "dump vlan={} file={}",
            self.hub,
            self.capture.spec.file.display()
        )
    }

    fn shutdown(&self) {
        self.finish();
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.capture.counters;
        vec![
            ("dump-written", c.written.load(Relaxed)),
            ("dump-dropped-writer-behind", c.dropped.load(Relaxed)),
        ]
    }
}

/// The uplink's far side: frames sent to it are recorded, nothing is ever received.
#[derive(Debug)]
struct PcapSink {
    capture: Arc<Capture>,
}

impl Backend for PcapSink {
    fn capabilities(&self) -> Capabilities {
        Capabilities::PLAIN_ONE_QUEUE
    }

    fn queue(&self, index: u16) -> Result<Box<dyn BackendQueue>, Error> {
        crate::only_queue_zero(index)?;
        Ok(Box::new(PcapSinkQueue {
            capture: self.capture.clone(),
            never: sys::eventfd().map_err(|e| Error::io("eventfd", e))?,
        }))
    }

    fn describe(&self) -> String {
        "pcap".into()
    }
}

#[derive(Debug)]
struct PcapSinkQueue {
    capture: Arc<Capture>,
    /// Never readable: the sink receives nothing.
    never: OwnedFd,
}

impl BackendQueue for PcapSinkQueue {
    fn fd(&self) -> RawFd {
        self.never.as_raw_fd()
    }

    fn recv(&mut self, _bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::WouldBlock))
    }

    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let len = bufs.iter().map(|b| b.len()).sum();
        self.capture
            .record(Toward::Netdev, len, |buf| crate::copy_prefix(bufs, buf));
        Ok(len)
    }

    fn set_offloads(&mut self, _offloads: Offloads) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::HubPortOptions;

    #[test]
    fn options_are_qemus_with_its_defaults() {
        let mut opts = Opts::parse_keyval("len=128").unwrap();
        let o = DumpOptions::from_opts(&mut opts).unwrap();
        assert_eq!(o.file(), "qemu-vlan0.pcap");
        assert_eq!(o.len, Some(128));
        let mut opts = Opts::parse_keyval("vlan=3,file=/x.pcap,len=64k").unwrap();
        let o = DumpOptions::from_opts(&mut opts).unwrap();
        assert_eq!(
            (o.hub(), o.file(), o.len),
            (3, "/x.pcap".into(), Some(65536))
        );
    }

    #[test]
    fn a_dump_sees_unicast_between_two_members_too() {
        let hubs = Hubs::default();
        let dir = std::env::temp_dir().join(format!("vunetd-dump-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("d.pcap");
        let opts = DumpOptions {
            file: Some(file.display().to_string()),
            len: None,
            vlan: Some(9100),
        };
        let dump = DumpBackend::open(&opts, &hubs, "d0").unwrap();
        let port = |hubs: &Hubs| {
            HubPortBackend::open(
                &HubPortOptions {
                    hubid: 9100,
                    netdev: None,
                },
                hubs,
            )
            .unwrap()
        };
        let (a, b) = (port(&hubs), port(&hubs));
        let (mut qa, mut qb) = (a.queue(0).unwrap(), b.queue(0).unwrap());
        let mac_a = [2, 0, 0, 0, 0, 0xa];
        let mac_b = [2, 0, 0, 0, 0, 0xb];
        let frame = |dst: [u8; 6], src: [u8; 6]| {
            let mut f = dst.to_vec();
            f.extend_from_slice(&src);
            f.extend_from_slice(&[0x88, 0xb5]);
            f.resize(64, 0x55);
            f
        };
        // b learns a; then a frame to b's MAC is unicast, which the dump still gets.
        qb.send(&[IoSlice::new(&frame([0xff; 6], mac_b))]).unwrap();
        qa.send(&[IoSlice::new(&frame(mac_b, mac_a))]).unwrap();
        let mut buf = [0u8; 128];
        assert!(
            qa.recv(&mut [IoSliceMut::new(&mut buf)]).is_ok(),
            "a got b's broadcast"
        );
        assert!(
            qb.recv(&mut [IoSliceMut::new(&mut buf)]).is_ok(),
            "b got a's unicast"
        );
        // Dropping it stops the uplink, which first moves what the hub handed over.
        drop(dump);
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(bytes.len(), 24 + 2 * (16 + 64), "both frames recorded");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
