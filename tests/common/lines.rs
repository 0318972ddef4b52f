//! Line streams from child processes (serial console, daemon log), awaited by content.

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines read from a pipe by a background thread; every line is kept for failure reports.
#[derive(Debug)]
pub struct Lines {
    rx: Receiver<String>,
    all: Arc<Mutex<Vec<String>>>,
    tag: String,
}

impl Lines {
    pub fn spawn(reader: impl Read + Send + 'static, tag: &str, echo: bool) -> Self {
        let (tx, rx) = channel();
        let all = Arc::new(Mutex::new(Vec::new()));
        let keep = all.clone();
        let prefix = tag.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                let line = line.trim_end_matches('\r').to_string();
                if echo {
                    eprintln!("[{prefix}] {line}");
                }
                keep.lock().unwrap().push(line.clone());
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            all,
            tag: tag.to_string(),
        }
    }

    /// Waits for a line containing `needle`; returns it. Panics with the transcript on timeout.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        match self.try_wait_for(needle, timeout) {
            Some(l) => l,
            None => panic!(
                "{}: no line containing {needle:?} within {timeout:?}; transcript:\n{}",
                self.tag,
                self.transcript()
            ),
        }
    }

    /// Waits for a line containing `needle`, or `None` on timeout or end of stream.
    pub fn try_wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return None
                }
            }
        }
    }

    /// Everything read so far.
    pub fn transcript(&self) -> String {
        self.all.lock().unwrap().join("\n")
    }

    /// Lines read so far containing `needle`.
    pub fn matching(&self, needle: &str) -> Vec<String> {
        self.all
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}
