//! The tx path (guest → host): frames written from guest buffers straight to the backend.
//!
//! When the backend is full the chain is given back to the avail ring and tx waits for the
//! backend to become writable: nothing the guest queued is lost or sent twice.

use std::io;

use vhost_user_netd_backends::MAX_FRAME_LEN;
use vm_memory::GuestMemoryMmap;

use super::guest_iov::{ChainError, Direction};
use super::queue_pair::QueuePair;

/// Used elements written before they are published mid-batch.
const PUBLISH_EVERY: u16 = 64;

impl QueuePair {
    /// Sends what the guest queued until the ring is empty or the backend is full.
    pub(super) fn process_tx(&mut self, mem: &GuestMemoryMmap) {
        if !self.tx.is_running() || self.tx_blocked {
            return;
        }
        self.learn_mac = true;
        loop {
            self.tx.disable_notification(mem);
            loop {
                let head = match self.tx.pop_head(mem) {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err(e) => {
                        self.ring_failed(false, e);
                        self.publish(mem, false);
                        return;
                    }
                };
                if !self.tx_one(mem, head) {
                    // Backend full: the chain went back; wait for EPOLLOUT.
                    self.tx_blocked = true;
                    self.counts.tx_backend_full += 1;
                    self.publish(mem, false);
                    return;
                }
                if self.tx.unpublished() >= PUBLISH_EVERY {
                    self.publish(mem, false);
                }
            }
            self.publish(mem, false);
            match self.tx.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => return,
                Err(e) => {
                    self.ring_failed(false, e);
                    return;
                }
            }
        }
    }

    /// Handles one chain. Returns false if the backend was full and the chain was given back.
    fn tx_one(&mut self, mem: &GuestMemoryMmap, head: u16) -> bool {
        let hdr = self.params.hdr_len;
        if !self.tx.enabled || !self.params.link_up || self.backend.is_none() || self.backend_closed
        {
            // A disabled ring is drained and discarded; so is everything while the link is down.
            self.tx.push_used(mem, head, 0);
            self.counts.tx_dropped_link_down += 1;
            return true;
        }
        self.iov.clear();
        let walked = self
            .iov
            .push_chain(
                mem,
                self.tx.desc_table(),
                self.tx.size(),
                head,
                Direction::DeviceReads,
                self.params.indirect,
                hdr + MAX_FRAME_LEN,
            )
            .and_then(|len| {
                if len <= hdr {
                    Err(ChainError::TooShort)
                } else {
                    Ok(len)
                }
            });
        let len = match walked {
            Ok(len) => len,
            Err(e) => {
                self.tx.push_used(mem, head, 0);
                self.counts.chain_error(e);
                let index = self.index;
                self.log
                    .warn(|| format!("pair {index} tx: refused descriptor chain {head}: {e}"));
                return true;
            }
        };
        if !self.params.backend_vnet_hdr {
            self.iov.split_front(hdr, &mut self.hdr_iov);
        }
        let Some(backend) = self.backend.as_mut() else {
            return true;
        };
        match backend.send(self.iov.as_io_slices()) {
            Ok(_) => {
                let frame = (len - hdr) as u64;
                if self.learn_mac {
                    self.learn_mac = false;
                    self.note_source_mac();
                }
                self.counts.tx_frames += 1;
                self.counts.tx_bytes += frame;
                self.counts.tx_max_frame = self.counts.tx_max_frame.max(frame);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.tx.rewind(1);
                return false;
            }
            Err(e) => {
                self.counts.tx_dropped_backend_error += 1;
                let index = self.index;
                self.log
                    .warn(|| format!("pair {index} tx: backend refused a {len}-byte frame: {e}"));
            }
        }
        self.tx.push_used(mem, head, 0);
        true
    }

    /// Records the source MAC of the frame in `self.iov` (a unicast address), telling the watcher
    /// when it changed.
    fn note_source_mac(&mut self) {
        let offset = if self.params.backend_vnet_hdr {
            self.params.hdr_len + 6
        } else {
            6
        };
        let mut mac = [0u8; 6];
        if !self.iov.read_at(offset, &mut mac) || mac[0] & 1 != 0 || mac == [0; 6] {
            return;
        }
        if self.guest_mac != Some(mac) {
            self.guest_mac = Some(mac);
            if let Some(watch) = &self.mac_watch {
                (watch.0)(mac);
            }
        }
    }
}
