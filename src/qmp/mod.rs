//! The QMP management socket: QEMU's net QAPI on the daemon.
//!
//! - [`framing`]: byte stream → top-level JSON values (no line splitting), bounded.
//! - [`protocol`]: the command envelope and reply/event encoding, with QEMU's error texts.
//! - [`session`]: greeting, capabilities negotiation, one client's command loop.
//! - [`commands`]: typed handlers; they reach the daemon through a control handle only.
//! - [`session_out`]: a session's bounded output queue and writer (an event sink).
//! - [`server`]: `unix:` and loopback `tcp:` listeners.
//! - [`stats`]: the per-port statistics query.

pub mod commands;
pub mod framing;
pub mod objects;
pub mod ports;
pub mod protocol;
pub mod server;
pub mod session;
pub mod session_out;
pub mod stats;
