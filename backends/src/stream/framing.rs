//! QEMU's stream framing: each Ethernet frame is preceded by its length as a 4-byte big-endian
//! integer. The same format passt's socket mode and gvproxy speak.
//!
//! [`RxFramer`] reads many frames per `read` into one buffer and hands them out one at a time,
//! resuming across partial reads; a length the format cannot have ends the connection before
//! anything of that size is allocated. [`TxPending`] keeps the unsent rest of a frame a
//! non-blocking socket took only partly.

use std::io;
use std::ops::Range;
use std::os::fd::RawFd;

use crate::batching::Batching;

/// Longest frame a peer may announce (QEMU's own limit for stream peers is 64 KiB of frame).
pub const MAX_STREAM_FRAME: usize = 65_536;
/// Bytes read at most per `read` call.
const RX_BUFFER: usize = 256 * 1024;
const PREFIX: usize = 4;

/// Why a peer's byte stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("peer announced a {0}-byte frame (at most {MAX_STREAM_FRAME} allowed)")]
    TooLong(u32),
}

/// Incoming side: a buffer of bytes read but not yet handed out.
#[derive(Debug)]
pub struct RxFramer {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Off: each read takes exactly the next prefix or frame (the benchmarks' reference).
    batching: Batching,
}

impl Default for RxFramer {
    fn default() -> Self {
        RxFramer::new(Batching::ON)
    }
}

impl RxFramer {
    /// An empty framer; with batching, one read takes whatever the socket holds.
    pub fn new(batching: Batching) -> Self {
        RxFramer {
            buf: vec![0u8; RX_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            batching,
        }
    }

    /// The next complete frame's bytes in [`Self::bytes`], consumed; `None` if more input is
    /// needed. Zero-length frames are skipped.
    pub fn next_frame(&mut self) -> Result<Option<Range<usize>>, FramingError> {
        loop {
            let available = self.end - self.start;
            if available < PREFIX {
                return Ok(None);
            }
            let mut len = [0u8; PREFIX];
            len.copy_from_slice(&self.buf[self.start..self.start + PREFIX]);
            let len = u32::from_be_bytes(len);
            if len as usize > MAX_STREAM_FRAME {
                return Err(FramingError::TooLong(len));
            }
            let len = len as usize;
            if available < PREFIX + len {
                return Ok(None);
            }
            let frame = self.start + PREFIX..self.start + PREFIX + len;
            self.start = frame.end;
            if len > 0 {
                return Ok(Some(frame));
            }
        }
    }

    /// Whether a whole frame is already buffered.
    pub fn has_frame(&self) -> bool {
        let available = self.end - self.start;
        if available < PREFIX {
            return false;
        }
        let mut len = [0u8; PREFIX];
        len.copy_from_slice(&self.buf[self.start..self.start + PREFIX]);
        let len = u32::from_be_bytes(len) as usize;
        len > MAX_STREAM_FRAME || available >= PREFIX + len
    }

    /// The buffered bytes (index with the ranges [`Self::next_frame`] returns).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Reads what the socket has into the free space (moving a partial frame to the front
    /// first). `Ok(0)` is end of stream.
    pub fn fill(&mut self, fd: RawFd) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < PREFIX + MAX_STREAM_FRAME {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // Unbatched (the benchmark reference): read exactly the next prefix or frame body.
        let want = if self.batching.limit(2) == 1 {
            let have = self.end - self.start;
            if have < PREFIX {
                PREFIX - have
            } else {
                let mut len = [0u8; PREFIX];
                len.copy_from_slice(&self.buf[self.start..self.start + PREFIX]);
                (PREFIX + (u32::from_be_bytes(len) as usize).min(MAX_STREAM_FRAME)) - have
            }
        } else {
            self.buf.len() - self.end
        };
        let end = self.end + want.min(self.buf.len() - self.end);
        let n = crate::sys::read(fd, &mut self.buf[self.end..end])?;
        self.end += n;
        Ok(n)
    }

    /// Appends bytes as if read from the socket (tests).
    #[cfg(test)]
    fn push(&mut self, data: &[u8]) {
        self.buf[self.end..self.end + data.len()].copy_from_slice(data);
        self.end += data.len();
    }
}

/// The length prefix of a frame of `len` bytes.
pub fn prefix(len: usize) -> [u8; PREFIX] {
    (len as u32).to_be_bytes()
}

/// Outgoing bytes accepted but not written yet (the tail of one frame).
#[derive(Debug, Default)]
pub struct TxPending {
    bytes: Vec<u8>,
    offset: usize,
}

impl TxPending {
    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.offset == self.bytes.len()
    }

    /// Keeps `parts` from byte `skip` on (the part of a frame the socket did not take).
    pub fn keep(&mut self, parts: &[&[u8]], mut skip: usize) {
        self.bytes.clear();
        self.offset = 0;
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            self.bytes.extend_from_slice(&part[skip..]);
            skip = 0;
        }
    }

    /// Writes what waits; `WouldBlock` if some is still left.
    pub fn flush(&mut self, fd: RawFd) -> io::Result<()> {
        while !self.is_empty() {
            let n = crate::sys::write(fd, &self.bytes[self.offset..])?;
            self.offset += n;
        }
        self.bytes.clear();
        self.offset = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.extend_from_slice(&prefix(f.len()));
            out.extend_from_slice(f);
        }
        out
    }

    #[test]
    fn decodes_frames_split_anywhere() {
        let wire = framed(&[b"first frame", b"", b"second", &[7u8; 1500]]);
        for split in 0..wire.len() {
            let mut rx = RxFramer::default();
            let mut got: Vec<Vec<u8>> = Vec::new();
            for chunk in [&wire[..split], &wire[split..]] {
                rx.push(chunk);
                while let Some(r) = rx.next_frame().unwrap() {
                    got.push(rx.bytes()[r].to_vec());
                }
            }
            assert_eq!(got.len(), 3, "split at {split}");
            assert_eq!(got[0], b"first frame");
            assert_eq!(got[1], b"second");
            assert_eq!(got[2], vec![7u8; 1500]);
        }
    }

    #[test]
    fn refuses_oversized_lengths_before_reading_them() {
        let mut rx = RxFramer::default();
        rx.push(&(MAX_STREAM_FRAME as u32 + 1).to_be_bytes());
        assert!(rx.has_frame());
        assert_eq!(
            rx.next_frame(),
            Err(FramingError::TooLong(MAX_STREAM_FRAME as u32 + 1))
        );
        let mut rx = RxFramer::default();
        rx.push(&[0xff, 0xff, 0xff, 0xff]);
        assert!(rx.next_frame().is_err());
        let mut rx = RxFramer::default();
        rx.push(&(MAX_STREAM_FRAME as u32).to_be_bytes());
        assert_eq!(rx.next_frame(), Ok(None));
    }

    #[test]
    fn keeps_the_unsent_tail() {
        let mut p = TxPending::default();
        assert!(p.is_empty());
        p.keep(&[&[0, 0, 0, 3], b"abc"], 5);
        assert!(!p.is_empty());
        assert_eq!(&p.bytes[p.offset..], b"bc");
    }
}
