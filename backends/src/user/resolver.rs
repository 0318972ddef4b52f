//! Where the virtual name server's queries go: the host's resolvers from `resolv.conf`.
//!
//! The relay itself is a UDP (or TCP) flow whose destination is rewritten from the virtual DNS
//! address to the first host resolver and back; this module only decides that address.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// The `nameserver` addresses of a `resolv.conf` text, in order (IPv6 zone ids dropped).
pub fn parse_nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let addr = words.next()?;
            addr.split('%').next()?.parse().ok()
        })
        .collect()
}

/// The host resolver a query to the virtual name server goes to, read from `path` (the
/// daemon's `--resolv-conf`) for every new flow so that a changed file takes effect.
pub fn host_resolver(path: &Path, port: u16) -> Option<SocketAddr> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            log::warn!("user netdev: cannot read {}: {e}", path.display());
            return None;
        }
    };
    let first = parse_nameservers(&text).into_iter().next();
    if first.is_none() {
        log::warn!("user netdev: no nameserver in {}", path.display());
    }
    first.map(|ip| SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameserver_lines() {
        let text =
            "# comment\nsearch example.com\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\n\
                    nameserver bogus\noptions edns0\n";
        assert_eq!(
            parse_nameservers(text),
            vec![
                "127.0.0.53".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
        assert!(parse_nameservers("").is_empty());
    }
}
