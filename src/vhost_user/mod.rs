//! The vhost-user side: framing ([`socket`]), the frontend's memory ([`memory`]), the checks on
//! the descriptors it sends for signalling ([`frontend_fd`]) and the request dispatcher
//! ([`handler`]).

pub mod frontend_fd;
pub mod handler;
pub mod memory;
pub mod socket;
