//! Guest data that arrived past a gap (a frame lost on its way in), held until the gap is
//! filled so that the guest resends only what was lost: the one place the stack's TCP copies
//! guest data, and only after a loss. Its blocks are what the stack's acknowledgements carry as
//! SACK options.

use super::tcp_seq::after;

/// Segments held at most per flow.
const HELD_MAX: usize = 256;

/// One held segment.
#[derive(Debug)]
pub struct Held {
    pub seq: u32,
    pub data: Vec<u8>,
    pub fin: bool,
}

impl Held {
    fn end(&self) -> u32 {
        self.seq
            .wrapping_add(self.data.len() as u32)
            .wrapping_add(u32::from(self.fin))
    }
}

/// The held segments of one flow, in sequence order.
#[derive(Debug, Default)]
pub struct OutOfOrder {
    held: Vec<Held>,
    bytes: usize,
}

impl OutOfOrder {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Holds a segment at `seq`, past `rcv_nxt`, if the held bytes stay within `limit`.
    pub fn hold(&mut self, rcv_nxt: u32, seq: u32, parts: &[&[u8]], fin: bool, limit: usize) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.bytes + len > limit || self.held.len() >= HELD_MAX {
            return;
        }
        let offset = |s: u32| s.wrapping_sub(rcv_nxt);
        let end = offset(seq) + len as u32 + u32::from(fin);
        if self
            .held
            .iter()
            .any(|h| offset(h.seq) <= offset(seq) && offset(h.end()) >= end)
        {
            // Already held (a retransmission).
            return;
        }
        let at = self
            .held
            .iter()
            .position(|h| offset(h.seq) > offset(seq))
            .unwrap_or(self.held.len());
        self.bytes += len;
        self.held.insert(
            at,
            Held {
                seq,
                data: parts.concat(),
                fin,
            },
        );
    }

    /// Takes the first held segment if it starts at or before `rcv_nxt` (it may continue the
    /// stream; the caller skips what it already has).
    pub fn take_next(&mut self, rcv_nxt: u32) -> Option<Held> {
        let first = self.held.first()?;
        if after(first.seq, rcv_nxt) {
            return None;
        }
        let held = self.held.remove(0);
        self.bytes -= held.data.len();
        Some(held)
    }

    /// The held ranges merged into blocks (start, end), the first four.
    pub fn blocks(&self) -> ([(u32, u32); 4], usize) {
        let mut blocks = [(0, 0); 4];
        let mut count = 0;
        for h in &self.held {
            let end = h.seq.wrapping_add(h.data.len() as u32);
            if count > 0 && !after(h.seq, blocks[count - 1].1) {
                let last: &mut (u32, u32) = &mut blocks[count - 1];
                if after(end, last.1) {
                    last.1 = end;
                }
            } else if count < blocks.len() {
                blocks[count] = (h.seq, end);
                count += 1;
            } else {
                break;
            }
        }
        (blocks, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_segments_come_back_in_order_and_merge_into_blocks() {
        let mut o = OutOfOrder::default();
        let base = u32::MAX - 100; // across the wrap
        o.hold(base, base.wrapping_add(300), &[&[3; 100]], false, 1 << 20);
        o.hold(base, base.wrapping_add(100), &[&[1; 100]], false, 1 << 20);
        o.hold(base, base.wrapping_add(200), &[&[2; 100]], false, 1 << 20);
        o.hold(base, base.wrapping_add(100), &[&[1; 50]], false, 1 << 20);
        o.hold(base, base.wrapping_add(500), &[&[5; 10]], true, 1 << 20);
        let (blocks, n) = o.blocks();
        assert_eq!(
            &blocks[..n],
            &[
                (base.wrapping_add(100), base.wrapping_add(400)),
                (base.wrapping_add(500), base.wrapping_add(510))
            ]
        );
        assert!(o.take_next(base).is_none(), "the gap is still open");
        let first = o.take_next(base.wrapping_add(100)).unwrap();
        assert_eq!((first.seq, first.data[0]), (base.wrapping_add(100), 1));
        assert_eq!(o.take_next(base.wrapping_add(200)).unwrap().data[0], 2);
        assert_eq!(o.take_next(base.wrapping_add(300)).unwrap().data[0], 3);
        assert!(o.take_next(base.wrapping_add(400)).is_none());
        // Past the limit nothing more is held.
        o.hold(base, base.wrapping_add(600), &[&[6; 100]], false, 50);
        assert_eq!(o.blocks().1, 1);
    }
}
