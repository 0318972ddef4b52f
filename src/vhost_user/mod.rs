//! The vhost-user side: framing ([`socket`]), the frontend's memory ([`memory`]) and the request
//! dispatcher ([`handler`]).

pub mod handler;
pub mod memory;
pub mod socket;
