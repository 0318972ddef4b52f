//! Per-queue-pair counters: plain integers on the hot path, flushed into shared atomics once per
//! batch, and a rate-limited warning for hostile or broken input.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use log::warn;

use vhost_user_netd_ring::guest_iov::ChainError;

macro_rules! counters {
    (
        sums { $($(#[$doc:meta])* $name:ident),* $(,)? }
        maxima { $($(#[$mdoc:meta])* $max:ident),* $(,)? }
    ) => {
        /// Counters as the worker accumulates them during a batch.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Counts {
            $($(#[$doc])* pub $name: u64,)*
            $($(#[$mdoc])* pub $max: u64,)*
        }

        impl Counts {
            /// Every counter with its name, in declaration order (for statistics queries).
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)* $((stringify!($max), self.$max),)*]
            }
        }

        /// Counters shared with readers (statistics queries).
        #[derive(Debug, Default)]
        pub struct SharedCounters { $($name: AtomicU64,)* $($max: AtomicU64,)* }

        impl SharedCounters {
            /// Adds a batch's counts (and keeps the largest of the maxima).
            pub fn add(&self, c: &Counts) {
                $(if c.$name != 0 { self.$name.fetch_add(c.$name, Ordering::Relaxed); })*
                $(if c.$max != 0 { self.$max.fetch_max(c.$max, Ordering::Relaxed); })*
            }

            /// A snapshot.
            pub fn snapshot(&self) -> Counts {
                Counts {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                    $($max: self.$max.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters! {
    sums {
    /// Frames delivered to the guest.
    rx_frames,
    /// Bytes delivered to the guest (without the virtio-net header).
    rx_bytes,
    /// Frames taken from the guest and handed to the backend.
    tx_frames,
    /// Bytes taken from the guest (without the virtio-net header).
    tx_bytes,
    /// rx frames dropped because the link is down or the ring disabled.
    rx_dropped_link_down,
    /// rx frames larger than any buffer the guest could offer.
    rx_dropped_too_big,
    /// rx frames the guest's receive filter (control queue) does not want.
    rx_dropped_filtered,
    /// tx frames dropped because the link is down, the ring is disabled or no backend is bound.
    tx_dropped_link_down,
    /// tx frames the backend refused with an error other than "full".
    tx_dropped_backend_error,
    /// Times the backend was full and tx waited for it.
    tx_backend_full,
    /// Times rx found no guest buffer and waited for the guest.
    rx_no_buffer,
    /// Descriptor chains refused, by reason.
    chain_head_out_of_range,
    chain_next_out_of_range,
    chain_too_many_descriptors,
    chain_bad_address,
    chain_wrong_direction,
    chain_bad_indirect,
    chain_too_long,
    chain_too_many_segments,
    chain_too_short,
    /// Fatal ring errors (avail index jumped, ring outside memory).
    ring_errors,
    /// Guest kicks handled.
    kicks,
    /// Interrupts sent to the guest.
    interrupts,
    /// Control-queue commands applied (counted on the first pair).
    ctrl_commands,
    /// Control-queue commands refused (unknown, malformed, not negotiated).
    ctrl_errors,
    }
    maxima {
    /// Largest frame delivered to the guest (bytes, without header): above the MTU means
    /// GSO frames crossed whole.
    rx_max_frame,
    /// Largest frame taken from the guest (bytes, without header).
    tx_max_frame,
    }
}

impl Counts {
    /// Counts a refused chain.
    pub fn chain_error(&mut self, e: ChainError) {
        let slot = match e {
            ChainError::HeadOutOfRange => &mut self.chain_head_out_of_range,
            ChainError::NextOutOfRange => &mut self.chain_next_out_of_range,
            ChainError::TooManyDescriptors => &mut self.chain_too_many_descriptors,
            ChainError::BadAddress => &mut self.chain_bad_address,
            ChainError::WrongDirection => &mut self.chain_wrong_direction,
            ChainError::BadIndirect => &mut self.chain_bad_indirect,
            ChainError::TooLong => &mut self.chain_too_long,
            ChainError::TooManySegments => &mut self.chain_too_many_segments,
            ChainError::TooShort => &mut self.chain_too_short,
        };
        *slot += 1;
    }

    /// Total refused chains.
    pub fn malformed_chains(&self) -> u64 {
        self.chain_head_out_of_range
            + self.chain_next_out_of_range
            + self.chain_too_many_descriptors
            + self.chain_bad_address
            + self.chain_wrong_direction
            + self.chain_bad_indirect
            + self.chain_too_long
            + self.chain_too_many_segments
            + self.chain_too_short
    }
}

/// Logs at most one warning per interval, saying how many were suppressed.
#[derive(Debug)]
pub struct RateLimitedLog {
    last: Option<Instant>,
    suppressed: u64,
    interval: Duration,
}

impl Default for RateLimitedLog {
    fn default() -> Self {
        RateLimitedLog {
            last: None,
            suppressed: 0,
            interval: Duration::from_secs(1),
        }
    }
}

impl RateLimitedLog {
    /// Warns with `message()` unless a warning went out less than the interval ago.
    pub fn warn(&mut self, message: impl FnOnce() -> String) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.interval)
        {
            self.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        self.last = Some(now);
        if suppressed > 0 {
            warn!("{} ({suppressed} similar messages suppressed)", message());
        } else {
            warn!("{}", message());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_add_up_and_errors_are_sorted() {
        let shared = SharedCounters::default();
        let mut c = Counts {
            rx_frames: 2,
            ..Default::default()
        };
        c.chain_error(ChainError::BadIndirect);
        c.chain_error(ChainError::TooShort);
        shared.add(&c);
        shared.add(&c);
        let s = shared.snapshot();
        assert_eq!(
            (s.rx_frames, s.chain_bad_indirect, s.malformed_chains()),
            (4, 2, 4)
        );
    }

    #[test]
    fn rate_limit_suppresses_bursts() {
        let mut log = RateLimitedLog::default();
        for _ in 0..100 {
            log.warn(|| "x".into());
        }
        assert!(log.last.is_some());
        assert_eq!(log.suppressed, 99);
    }
}
