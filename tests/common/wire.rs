//! The UDP end of a `dgram` netdev on loopback: what the daemon sends out of a port arrives on
//! [`Wire::sock`], and what is sent to [`Wire::daemon`] goes to the port's guest.

use std::net::UdpSocket;
use std::time::Duration;

/// One `dgram` netdev's far end.
pub struct Wire {
    pub sock: UdpSocket,
    /// Where the daemon's netdev listens.
    pub daemon: std::net::SocketAddr,
}

impl Wire {
    pub fn new() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let daemon = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        Wire { sock, daemon }
    }

    /// The `--netdev` text of the daemon's end, with `id`.
    pub fn netdev(&self, id: &str) -> String {
        format!(
            "dgram,id={id},local.type=inet,local.host=127.0.0.1,local.port={},\
             remote.type=inet,remote.host=127.0.0.1,remote.port={}",
            self.daemon.port(),
            self.sock.local_addr().unwrap().port()
        )
    }
}
