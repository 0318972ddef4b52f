//! `NetdevUserOptions`: the user-mode stack's addresses, services and forwarding rules, with
//! QEMU's defaults, its checks in its order, and its error texts.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde_json::{json, Map, Value};

use crate::options::{OptionError, Opts};

/// Options of a `user` netdev, as given (for `to_json`) and resolved into networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserOptions {
    pub hostname: Option<String>,
    pub restrict: bool,
    pub tftp: Option<PathBuf>,
    pub bootfile: Option<String>,
    pub dnssearch: Vec<String>,
    pub domainname: Option<String>,
    pub tftp_server_name: Option<String>,
    pub hostfwd: Vec<HostFwd>,
    pub guestfwd: Vec<GuestFwd>,
    /// The IPv4 network, unless `ipv4=off`.
    pub ipv4: Option<Ipv4Net>,
    /// The IPv6 network, unless `ipv6=off`.
    pub ipv6: Option<Ipv6Net>,
    given: Given,
}

/// The address options as the user wrote them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Given {
    ipv4: Option<bool>,
    ipv6: Option<bool>,
    ip: Option<String>,
    net: Option<String>,
    host: Option<String>,
    dhcpstart: Option<String>,
    dns: Option<String>,
    ipv6_prefix: Option<String>,
    ipv6_prefixlen: Option<i64>,
    ipv6_host: Option<String>,
    ipv6_dns: Option<String>,
}

/// The guest's IPv4 network and the stack's addresses in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub network: Ipv4Addr,
    pub mask: Ipv4Addr,
    /// The gateway; connections to it reach the host's loopback.
    pub host: Ipv4Addr,
    /// The virtual name server; queries to it are relayed to the host's resolvers.
    pub dns: Ipv4Addr,
    /// The first of the addresses the DHCP server leases.
    pub dhcp_start: Ipv4Addr,
}

impl Ipv4Net {
    /// Whether `addr` is inside the network.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & u32::from(self.mask) == u32::from(self.network)
    }

    /// The network's broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !u32::from(self.mask))
    }

    /// The mask's length if it is contiguous (it need not be, as in QEMU).
    pub fn prefix_len(&self) -> u8 {
        u32::from(self.mask).leading_ones() as u8
    }

    /// The address `offset` hosts into the network (`10.0.2.0` + `0x0204` masked = `10.0.2.4`).
    fn at(network: Ipv4Addr, mask: Ipv4Addr, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(network) | (offset & !u32::from(mask)))
    }
}

/// The guest's IPv6 network and the stack's addresses in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Net {
    pub prefix: Ipv6Addr,
    pub prefix_len: u8,
    pub host: Ipv6Addr,
    pub dns: Ipv6Addr,
}

fn same_prefix(a: Ipv6Addr, b: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(a) & mask == u128::from(b) & mask
}

/// One `hostfwd` rule: a host socket whose traffic goes to a guest port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFwd {
    /// The rule as written, for error messages and `to_json`.
    pub text: String,
    pub udp: bool,
    pub host_addr: Ipv4Addr,
    /// 0 lets the kernel choose.
    pub host_port: u16,
    /// `None`: the first DHCP address, as QEMU.
    pub guest_addr: Option<Ipv4Addr>,
    pub guest_port: u16,
}

/// One `guestfwd` rule: guest connections to a virtual address reach a command or a host
/// socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFwd {
    pub text: String,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub target: GuestFwdTarget,
}

/// Where a `guestfwd` connection goes; each guest connection gets its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestFwdTarget {
    /// `cmd:COMMAND`: run by `/bin/sh -c` with the connection as stdin and stdout.
    Command(String),
    /// `tcp:HOST:PORT`: a TCP connection to the host.
    Connect { host: String, port: u16 },
}

fn invalid(text: impl Into<String>) -> OptionError {
    OptionError::Invalid(text.into())
}

impl UserOptions {
    pub fn from_opts(opts: &mut Opts) -> Result<Self, OptionError> {
        let hostname = opts.take_str("hostname")?;
        let restrict = opts.take_bool("restrict")?.unwrap_or(false);
        let given = Given {
            ipv4: opts.take_bool("ipv4")?,
            ipv6: opts.take_bool("ipv6")?,
            ip: opts.take_str("ip")?,
            net: opts.take_str("net")?,
            host: opts.take_str("host")?,
            dhcpstart: opts.take_str("dhcpstart")?,
            dns: opts.take_str("dns")?,
            ipv6_prefix: opts.take_str("ipv6-prefix")?,
            ipv6_prefixlen: opts.take_i64("ipv6-prefixlen")?,
            ipv6_host: opts.take_str("ipv6-host")?,
            ipv6_dns: opts.take_str("ipv6-dns")?,
        };
        let tftp = opts.take_str("tftp")?.map(PathBuf::from);
        let bootfile = opts.take_str("bootfile")?;
        let dnssearch = opts.take_str_list("dnssearch")?;
        let domainname = opts.take_str("domainname")?;
        let tftp_server_name = opts.take_str("tftp-server-name")?;
        let smb = opts.take_str("smb")?;
        let smbserver = opts.take_str("smbserver")?;
        let hostfwd_text = opts.take_str_list("hostfwd")?;
        let guestfwd_text = opts.take_str_list("guestfwd")?;

        let vnet = given
            .net
            .clone()
            .or_else(|| given.ip.as_ref().map(|ip| format!("{ip}/24")));
        let (ipv4_on, ipv6_on) = families(&given, vnet.is_some())?;
        let ipv4 = resolve_ipv4(&given, vnet.as_deref(), restrict)?;
        let ipv6 = resolve_ipv6(&given, restrict)?;
        check_names(&domainname, &hostname, &tftp_server_name)?;
        if smb.is_some() || smbserver.is_some() {
            return Err(invalid(
                "'smb' is not supported by vhost-user-netd: share files with virtiofs or 9p",
            ));
        }
        check_tftp(tftp.as_deref(), bootfile.as_deref())?;
        let hostfwd = hostfwd_text
            .iter()
            .map(|t| HostFwd::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        let guestfwd = parse_guestfwd(&guestfwd_text, ipv4.as_ref())?;
        Ok(UserOptions {
            hostname,
            restrict,
            tftp,
            bootfile,
            dnssearch,
            domainname,
            tftp_server_name,
            hostfwd,
            guestfwd,
            ipv4: ipv4_on.then_some(ipv4).flatten(),
            ipv6: ipv6_on.then_some(ipv6),
            given,
        })
    }

    /// The options as QEMU's `NetdevUserOptions` JSON, as given.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(v) = value {
                m.insert(key.to_string(), v);
            }
        };
        let g = &self.given;
        let s = |v: &Option<String>| v.clone().map(Value::String);
        put("hostname", s(&self.hostname));
        put("restrict", self.restrict.then_some(Value::Bool(true)));
        put("ipv4", g.ipv4.map(Value::Bool));
        put("ipv6", g.ipv6.map(Value::Bool));
        put("ip", s(&g.ip));
        put("net", s(&g.net));
        put("host", s(&g.host));
        put(
            "tftp",
            self.tftp
                .as_ref()
                .map(|p| Value::String(p.display().to_string())),
        );
        put("bootfile", s(&self.bootfile));
        put("dhcpstart", s(&g.dhcpstart));
        put("dns", s(&g.dns));
        put("dnssearch", string_list(self.dnssearch.iter()));
        put("domainname", s(&self.domainname));
        put("ipv6-prefix", s(&g.ipv6_prefix));
        put("ipv6-prefixlen", g.ipv6_prefixlen.map(Value::from));
        put("ipv6-host", s(&g.ipv6_host));
        put("ipv6-dns", s(&g.ipv6_dns));
        put("hostfwd", string_list(self.hostfwd.iter().map(|r| &r.text)));
        put(
            "guestfwd",
            string_list(self.guestfwd.iter().map(|r| &r.text)),
        );
        put("tftp-server-name", s(&self.tftp_server_name));
        m
    }
}

/// QEMU's `['String']` JSON: a list of `{"str": ...}`; absent when empty.
fn string_list<'a>(items: impl Iterator<Item = &'a String>) -> Option<Value> {
    let list: Vec<Value> = items.map(|s| json!({ "str": s })).collect();
    (!list.is_empty()).then_some(Value::Array(list))
}

fn parse_v4(text: &str) -> Option<Ipv4Addr> {
    text.parse().ok()
}

/// QEMU's classful default mask for `net=ADDR` without a mask.
fn classful_mask(addr: Ipv4Addr) -> Ipv4Addr {
    let a = u32::from(addr);
    let mask = if a & 0x8000_0000 == 0 {
        0xff00_0000
    } else if a & 0xfff0_0000 == 0xac10_0000 {
        0xfff0_0000
    } else if a & 0xc000_0000 == 0x8000_0000 || a & 0xffff_0000 == 0xc0a8_0000 {
        // Class B, and the private 192.168.0.0/16.
        0xffff_0000
    } else if a & 0xffff_0000 == 0xc612_0000 {
        0xfffe_0000
    } else if a & 0xe000_0000 == 0xe000_0000 {
        0xffff_ff00
    } else {
        0xffff_fff0
    };
    Ipv4Addr::from(mask)
}

fn parse_network(vnet: &str) -> Result<(Ipv4Addr, Ipv4Addr), OptionError> {
    let bad = || invalid("Failed to parse netmask");
    let (net, mask) = match vnet.split_once('/') {
        None => {
            let net = parse_v4(vnet).ok_or_else(bad)?;
            (net, classful_mask(net))
        }
        Some((net, mask)) => {
            let net = parse_v4(net).ok_or_else(bad)?;
            let mask = match mask.parse::<i64>() {
                Ok(shift) if (4..=32).contains(&shift) => {
                    Ipv4Addr::from(u32::MAX << (32 - shift as u32))
                }
                Ok(_) => return Err(invalid("Invalid netmask provided (must be in range 4-32)")),
                Err(_) => parse_v4(mask)
                    .ok_or_else(|| invalid("Failed to parse netmask (trailing chars)"))?,
            };
            (net, mask)
        }
    };
    Ok((Ipv4Addr::from(u32::from(net) & u32::from(mask)), mask))
}

/// Which address families are on (QEMU: asking for one alone turns the other off), refusing
/// addresses given for a family that is off, and both off.
fn families(given: &Given, ipv4_net_given: bool) -> Result<(bool, bool), OptionError> {
    let ipv4_on = !(given.ipv6 == Some(true) && given.ipv4.is_none() || given.ipv4 == Some(false));
    let ipv6_on = !(given.ipv4 == Some(true) && given.ipv6.is_none() || given.ipv6 == Some(false));
    if !ipv4_on && (ipv4_net_given || given.host.is_some() || given.dns.is_some()) {
        return Err(invalid("IPv4 disabled but netmask/host/dns provided"));
    }
    if !ipv6_on
        && (given.ipv6_prefix.is_some() || given.ipv6_host.is_some() || given.ipv6_dns.is_some())
    {
        return Err(invalid("IPv6 disabled but prefix/host6/dns6 provided"));
    }
    if !ipv4_on && !ipv6_on {
        return Err(invalid("IPv4 and IPv6 disabled"));
    }
    Ok((ipv4_on, ipv6_on))
}

/// The TFTP root must be a directory; a boot file without it is allowed (as in QEMU) but
/// points the guest at nothing.
fn check_tftp(tftp: Option<&std::path::Path>, bootfile: Option<&str>) -> Result<(), OptionError> {
    if let Some(root) = tftp {
        if !root.is_dir() {
            return Err(invalid(format!(
                "tftp root '{}' is not a directory",
                root.display()
            )));
        }
    }
    if bootfile.is_some() && tftp.is_none() {
        log::warn!("bootfile without tftp: the guest is told a file nobody serves");
    }
    Ok(())
}

/// The `guestfwd` rules, none of them for the same guest address and port as an earlier one.
fn parse_guestfwd(texts: &[String], ipv4: Option<&Ipv4Net>) -> Result<Vec<GuestFwd>, OptionError> {
    let guestfwd = texts
        .iter()
        .map(|t| GuestFwd::parse(t, ipv4))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, rule) in guestfwd.iter().enumerate() {
        if guestfwd[..i]
            .iter()
            .any(|r| r.addr == rule.addr && r.port == rule.port)
        {
            return Err(conflicting_guestfwd(&rule.text));
        }
    }
    Ok(guestfwd)
}

fn resolve_ipv4(
    given: &Given,
    vnet: Option<&str>,
    restrict: bool,
) -> Result<Option<Ipv4Net>, OptionError> {
    let (network, mask) = match vnet {
        Some(v) => parse_network(v)?,
        None => (Ipv4Addr::new(10, 0, 2, 0), Ipv4Addr::new(255, 255, 255, 0)),
    };
    let mut net = Ipv4Net {
        network,
        mask,
        host: Ipv4Net::at(network, mask, 0x0202),
        dns: Ipv4Net::at(network, mask, 0x0203),
        dhcp_start: Ipv4Net::at(network, mask, 0x020f),
    };
    if let Some(h) = &given.host {
        net.host = parse_v4(h).ok_or_else(|| invalid("Failed to parse host"))?;
    }
    if !net.contains(net.host) {
        return Err(invalid("Host doesn't belong to network"));
    }
    if let Some(d) = &given.dns {
        net.dns = parse_v4(d).ok_or_else(|| invalid("Failed to parse DNS"))?;
    }
    if restrict && !net.contains(net.dns) {
        return Err(invalid("DNS doesn't belong to network"));
    }
    if net.dns == net.host {
        return Err(invalid("DNS must be different from host"));
    }
    if let Some(d) = &given.dhcpstart {
        net.dhcp_start =
            parse_v4(d).ok_or_else(|| invalid("Failed to parse DHCP start address"))?;
    }
    if !net.contains(net.dhcp_start) {
        return Err(invalid("DHCP doesn't belong to network"));
    }
    if net.dhcp_start == net.host || net.dhcp_start == net.dns {
        return Err(invalid("DHCP must be different from host and DNS"));
    }
    Ok(Some(net))
}

fn resolve_ipv6(given: &Given, restrict: bool) -> Result<Ipv6Net, OptionError> {
    let prefix: Ipv6Addr = given
        .ipv6_prefix
        .as_deref()
        .unwrap_or("fec0::")
        .parse()
        .map_err(|_| invalid("Failed to parse IPv6 prefix"))?;
    // QEMU treats 0 as "not given".
    let prefix_len = match given.ipv6_prefixlen {
        None | Some(0) => 64,
        Some(len) if (0..=126).contains(&len) => len as u8,
        Some(_) => {
            return Err(invalid(
                "Invalid IPv6 prefix provided (IPv6 prefix length must be between 0 and 126)",
            ))
        }
    };
    let with_low = |low: u8| {
        let mut octets = prefix.octets();
        octets[15] |= low;
        Ipv6Addr::from(octets)
    };
    let host = match &given.ipv6_host {
        Some(h) => {
            let host: Ipv6Addr = h
                .parse()
                .map_err(|_| invalid("Failed to parse IPv6 host"))?;
            if !same_prefix(prefix, host, prefix_len) {
                return Err(invalid("IPv6 Host doesn't belong to network"));
            }
            host
        }
        None => with_low(2),
    };
    let dns = match &given.ipv6_dns {
        Some(d) => {
            let dns: Ipv6Addr = d.parse().map_err(|_| invalid("Failed to parse IPv6 DNS"))?;
            if restrict && !same_prefix(prefix, dns, prefix_len) {
                return Err(invalid("IPv6 DNS doesn't belong to network"));
            }
            dns
        }
        None => with_low(3),
    };
    Ok(Ipv6Net {
        prefix,
        prefix_len,
        host,
        dns,
    })
}

fn check_names(
    domainname: &Option<String>,
    hostname: &Option<String>,
    tftp_server_name: &Option<String>,
) -> Result<(), OptionError> {
    if domainname.as_deref() == Some("") {
        return Err(invalid("'domainname' parameter cannot be empty"));
    }
    for (value, name) in [
        (domainname, "domainname"),
        (hostname, "vhostname"),
        (tftp_server_name, "tftp-server-name"),
    ] {
        if value.as_ref().is_some_and(|v| v.len() > 255) {
            return Err(invalid(format!(
                "'{name}' parameter cannot exceed 255 bytes"
            )));
        }
    }
    Ok(())
}

impl HostFwd {
    /// Parses `[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport`, with QEMU's reasons.
    pub fn parse(text: &str) -> Result<HostFwd, OptionError> {
        let fail =
            |reason: &str| invalid(format!("Invalid host forwarding rule '{text}' ({reason})"));
        let (proto, rest) = text
            .split_once(':')
            .ok_or_else(|| fail("No : separators"))?;
        let udp = match proto {
            "" | "tcp" => false,
            "udp" => true,
            _ => return Err(fail("Bad protocol name")),
        };
        let (host_addr, rest) = rest
            .split_once(':')
            .ok_or_else(|| fail("Missing : separator"))?;
        let host_addr = if host_addr.is_empty() {
            Ipv4Addr::UNSPECIFIED
        } else {
            parse_v4(host_addr).ok_or_else(|| fail("Bad host address"))?
        };
        let (host_port, rest) = rest
            .split_once('-')
            .ok_or_else(|| fail("Bad host port separator"))?;
        let host_port = host_port
            .parse::<u16>()
            .map_err(|_| fail("Bad host port"))?;
        let (guest_addr, guest_port) = rest
            .split_once(':')
            .ok_or_else(|| fail("Missing guest address"))?;
        let guest_addr = if guest_addr.is_empty() {
            None
        } else {
            Some(parse_v4(guest_addr).ok_or_else(|| fail("Bad guest address"))?)
        };
        let guest_port = match guest_port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(fail("Bad guest port")),
        };
        Ok(HostFwd {
            text: text.to_string(),
            udp,
            host_addr,
            host_port,
            guest_addr,
            guest_port,
        })
    }
}

fn conflicting_guestfwd(text: &str) -> OptionError {
    invalid(format!(
        "Conflicting/invalid host:port in guest forwarding rule '{text}'"
    ))
}

impl GuestFwd {
    /// Parses `tcp:[IP]:PORT-cmd:COMMAND` or `tcp:[IP]:PORT-tcp:HOST:PORT`. The address
    /// defaults to the network's `.4` and must be a free address inside the network.
    pub fn parse(text: &str, net: Option<&Ipv4Net>) -> Result<GuestFwd, OptionError> {
        let syntax = || invalid(format!("Invalid guest forwarding rule '{text}'"));
        let (rule, device) = text.split_once('-').ok_or_else(syntax)?;
        let mut parts = rule.splitn(3, ':');
        let (Some("tcp"), Some(addr), Some(port)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(syntax());
        };
        let port = port.parse::<u16>().map_err(|_| syntax())?;
        let net = net.ok_or_else(|| invalid("guestfwd needs IPv4"))?;
        let addr = if addr.is_empty() {
            Ipv4Net::at(net.network, net.mask, 0x0204)
        } else {
            parse_v4(addr).ok_or_else(syntax)?
        };
        if !net.contains(addr) || addr == net.host || addr == net.dns {
            return Err(conflicting_guestfwd(text));
        }
        let target = if let Some(command) = device.strip_prefix("cmd:") {
            GuestFwdTarget::Command(command.to_string())
        } else if let Some(endpoint) = device.strip_prefix("tcp:") {
            let (host, port) = endpoint
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .ok_or_else(|| {
                    invalid(format!(
                        "guest forwarding device '{device}' needs tcp:HOST:PORT"
                    ))
                })?;
            GuestFwdTarget::Connect {
                host: host.trim_matches(|c| c == '[' || c == ']').to_string(),
                port,
            }
        } else {
            return Err(invalid(format!(
                "guest forwarding device '{device}' is not supported by vhost-user-netd \
                 (use cmd:COMMAND or tcp:HOST:PORT)"
            )));
        };
        Ok(GuestFwd {
            text: text.to_string(),
            addr,
            port,
            target,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::OptionSource;

    fn parse(text: &str) -> Result<UserOptions, String> {
        let text = if text.is_empty() {
            "user".to_string()
        } else {
            format!("user,{text}")
        };
        let mut opts = Opts::parse_keyval(&text).map_err(|e| e.to_string())?;
        opts.take_str("type").unwrap();
        let parsed = UserOptions::from_opts(&mut opts).map_err(|e| e.to_string())?;
        opts.finish().map_err(|e| e.to_string())?;
        Ok(parsed)
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err()
    }

    #[test]
    fn defaults_are_qemus() {
        let o = parse("").unwrap();
        let v4 = o.ipv4.unwrap();
        assert_eq!(v4.network, Ipv4Addr::new(10, 0, 2, 0));
        assert_eq!(v4.prefix_len(), 24);
        assert_eq!(v4.host, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(v4.dns, Ipv4Addr::new(10, 0, 2, 3));
        assert_eq!(v4.dhcp_start, Ipv4Addr::new(10, 0, 2, 15));
        let v6 = o.ipv6.unwrap();
        assert_eq!(v6.prefix, "fec0::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.prefix_len, 64);
        assert_eq!(v6.host, "fec0::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.dns, "fec0::3".parse::<Ipv6Addr>().unwrap());
        assert!(!o.restrict);
    }

    #[test]
    fn network_moves_the_service_addresses() {
        let v4 = parse("net=192.168.76.0/22").unwrap().ipv4.unwrap();
        assert_eq!(v4.host, Ipv4Addr::new(192, 168, 78, 2));
        assert_eq!(v4.dns, Ipv4Addr::new(192, 168, 78, 3));
        assert_eq!(v4.dhcp_start, Ipv4Addr::new(192, 168, 78, 15));
        let classful = parse("net=172.20.0.0").unwrap().ipv4.unwrap();
        assert_eq!(classful.mask, Ipv4Addr::new(255, 240, 0, 0));
        let dotted = parse("net=10.1.0.0/255.255.0.0").unwrap().ipv4.unwrap();
        assert_eq!(dotted.host, Ipv4Addr::new(10, 1, 2, 2));
        let legacy = parse("ip=10.9.9.0").unwrap().ipv4.unwrap();
        assert_eq!(legacy.host, Ipv4Addr::new(10, 9, 9, 2));
    }

    #[test]
    fn one_family_alone_turns_the_other_off() {
        let only4 = parse("ipv4=on").unwrap();
        assert!(only4.ipv4.is_some() && only4.ipv6.is_none());
        let only6 = parse("ipv6=on").unwrap();
        assert!(only6.ipv4.is_none() && only6.ipv6.is_some());
        let no4 = parse("ipv4=off").unwrap();
        assert!(no4.ipv4.is_none() && no4.ipv6.is_some());
    }

    #[test]
    fn qemus_checks_and_texts() {
        // Each text checked against QEMU 10's `-netdev user`.
        for (opts, text) in [
            ("ipv4=off,ipv6=off", "IPv4 and IPv6 disabled"),
            (
                "ipv4=off,net=10.0.0.0/8",
                "IPv4 disabled but netmask/host/dns provided",
            ),
            (
                "ipv6=off,ipv6-host=fec0::5",
                "IPv6 disabled but prefix/host6/dns6 provided",
            ),
            (
                "net=10.0.3.0/3",
                "Invalid netmask provided (must be in range 4-32)",
            ),
            (
                "net=10.0.3.0/33",
                "Invalid netmask provided (must be in range 4-32)",
            ),
            ("net=foo", "Failed to parse netmask"),
            (
                "net=10.0.0.0/255.255.0.x",
                "Failed to parse netmask (trailing chars)",
            ),
            ("host=10.0.3.2", "Host doesn't belong to network"),
            ("host=foo", "Failed to parse host"),
            ("dns=10.0.2.2", "DNS must be different from host"),
            ("dns=1.1.1.1,restrict=on", "DNS doesn't belong to network"),
            (
                "dhcpstart=10.0.2.3",
                "DHCP must be different from host and DNS",
            ),
            ("dhcpstart=10.1.2.3", "DHCP doesn't belong to network"),
            ("ipv6-prefix=zz", "Failed to parse IPv6 prefix"),
            (
                "ipv6-prefixlen=127",
                "Invalid IPv6 prefix provided (IPv6 prefix length must be between 0 and 126)",
            ),
            (
                "ipv6-prefixlen=-1",
                "Invalid IPv6 prefix provided (IPv6 prefix length must be between 0 and 126)",
            ),
            ("ipv6-host=fec1::1", "IPv6 Host doesn't belong to network"),
            (
                "ipv6-dns=fec1::1,restrict=on",
                "IPv6 DNS doesn't belong to network",
            ),
            ("domainname=", "'domainname' parameter cannot be empty"),
        ] {
            assert_eq!(error(opts), text, "{opts}");
        }
        assert!(parse("dns=1.1.1.1").is_ok());
        assert!(error(&format!("hostname={}", "h".repeat(256))).contains("cannot exceed 255"));
    }

    #[test]
    fn unsupported_services_are_refused_by_name() {
        assert!(error("smb=/tmp").contains("'smb' is not supported"));
        assert!(error("tftp=/nonexistent/dir").contains("is not a directory"));
        assert_eq!(error("bogus=1"), "Invalid parameter 'bogus'");
    }

    #[test]
    fn hostfwd_rules_and_reasons() {
        let o = parse("hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp::5353-10.0.2.20:53").unwrap();
        assert_eq!(o.hostfwd.len(), 2);
        assert!(!o.hostfwd[0].udp);
        assert_eq!(o.hostfwd[0].host_addr, Ipv4Addr::LOCALHOST);
        assert_eq!(o.hostfwd[0].host_port, 2222);
        assert_eq!(o.hostfwd[0].guest_addr, None);
        assert_eq!(o.hostfwd[0].guest_port, 22);
        assert!(o.hostfwd[1].udp);
        assert_eq!(o.hostfwd[1].guest_addr, Some(Ipv4Addr::new(10, 0, 2, 20)));
        // Texts checked against QEMU 10.
        for (rule, reason) in [
            ("foo", "No : separators"),
            ("sctp::1-:22", "Bad protocol name"),
            ("tcp:1", "Missing : separator"),
            ("tcp::22", "Bad host port separator"),
            ("tcp::x-:22", "Bad host port"),
            ("tcp::70000-:22", "Bad host port"),
            ("tcp:1.2.3.4.5:1-:22", "Bad host address"),
            ("tcp:localhost:1-:22", "Bad host address"),
            ("tcp::1-", "Missing guest address"),
            ("tcp::1-zz:22", "Bad guest address"),
            ("tcp::1-:zz", "Bad guest port"),
            ("tcp::1-:0", "Bad guest port"),
        ] {
            assert_eq!(
                error(&format!("hostfwd={rule}")),
                format!("Invalid host forwarding rule '{rule}' ({reason})")
            );
        }
    }

    #[test]
    fn guestfwd_rules() {
        let o = parse("guestfwd=tcp:10.0.2.100:1234-cmd:cat,guestfwd=tcp::80-tcp:127.0.0.1:8080")
            .unwrap();
        assert_eq!(o.guestfwd[0].addr, Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(o.guestfwd[0].target, GuestFwdTarget::Command("cat".into()));
        assert_eq!(o.guestfwd[1].addr, Ipv4Addr::new(10, 0, 2, 4));
        assert_eq!(
            o.guestfwd[1].target,
            GuestFwdTarget::Connect {
                host: "127.0.0.1".into(),
                port: 8080
            }
        );
        for rule in [
            "foo",
            "10.0.2.100:1234-cmd:cat",
            "udp:10.0.2.100:1234-cmd:cat",
            "tcp:10.0.2.100-cmd:cat",
            "tcp:10.0.2.100:x-cmd:cat",
            "tcp:zz:1234-cmd:cat",
            "tcp:10.0.2.100:1234",
        ] {
            assert_eq!(
                error(&format!("guestfwd={rule}")),
                format!("Invalid guest forwarding rule '{rule}'")
            );
        }
        assert_eq!(
            error("guestfwd=tcp:10.0.2.2:1234-cmd:cat"),
            "Conflicting/invalid host:port in guest forwarding rule 'tcp:10.0.2.2:1234-cmd:cat'"
        );
        assert!(error("guestfwd=tcp:10.0.2.100:1234-unix:/x").contains("not supported"));
    }

    #[test]
    fn json_round_trip_with_lists() {
        let o = parse("hostname=vm,dnssearch=a.example,dnssearch=b.example,hostfwd=tcp::2222-:22,restrict=on,ipv6=off")
            .unwrap();
        assert_eq!(o.dnssearch, ["a.example", "b.example"]);
        let json = o.to_json();
        assert_eq!(
            json["dnssearch"],
            json!([{"str": "a.example"}, {"str": "b.example"}])
        );
        let mut again = Opts::new(json, OptionSource::Json);
        assert_eq!(UserOptions::from_opts(&mut again).unwrap(), o);
        again.finish().unwrap();
        let indexed = parse("hostfwd.1.str=tcp::2-:2,hostfwd.0.str=tcp::1-:1").unwrap();
        assert_eq!(indexed.hostfwd[0].host_port, 1);
        assert_eq!(indexed.hostfwd[1].host_port, 2);
    }
}
