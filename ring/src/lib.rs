//! The virtio split ring as a device sees it, with no knowledge of any device type: rings
//! ([`vring`], [`ring_map`]), descriptor chains turned into host iovecs ([`guest_iov`]), the
//! migration dirty log ([`dirty_log`]), and mappings of frontend memory that can lose their pages
//! ([`memory_fault`], with [`file_info`] for the checks before mapping).
//!
//! `unsafe` is denied here except in the modules that touch guest memory or the signal handler;
//! each of their blocks has a SAFETY note.

#![deny(unsafe_code)]

pub mod dirty_log;
pub mod file_info;
pub mod guest_iov;
pub mod layout;
pub mod memory_fault;
pub mod prefetch;
pub mod ring_map;
#[cfg(any(test, feature = "test-driver"))]
pub mod test_ring;
pub mod vring;
