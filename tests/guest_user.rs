//! The user-mode stack with a real guest: one QEMU guest (TCG) with two NICs inside a network
//! namespace the test creates.
//!
//! The guest fetches files with busybox `nc` (its static `wget` crashes in the initramfs).
//!
//! - eth0 is served by the daemon's zero-configuration default (`--socket-path` alone): DHCP
//!   lease and default route, ping to the gateway, HTTP download from a server on the
//!   namespace's loopback through 10.0.2.2 (IPv4) and fec0::2 (IPv6, SLAAC address), a DNS
//!   lookup relayed to a resolver on loopback, and a ping to an outside address (ping socket).
//! - eth1 is `restrict=on` with QEMU's DHCP options and a `hostfwd`: the lease carries them,
//!   outbound connections are blocked, a host client reaches a listener in the guest, and
//!   `guestfwd` connections reach a command and a host port; its TFTP root serves a boot file
//!   and refuses a name outside the root.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::daemon::Daemon;
use common::netns::Netns;
use common::qemu::{vhost_user_nic_at, Guest, QemuVersion};
use common::{guest_kernel, initramfs, privileged_environment, TempDir};

const BOOT: Duration = Duration::from_secs(180);
const STEP: Duration = Duration::from_secs(120);
const HTTP_PORT: u16 = 8080;
const FILE_LEN: usize = 1 << 20;
/// Where the guest uploads its copy of the file (a sink on the namespace's loopback).
const UPLOAD_PORT: u16 = 8081;
/// An address outside the guest's network, on the namespace's loopback.
const OUTSIDE: &str = "198.51.100.1";
const DNS_NAME: &str = "www.vunetd.test";
const DNS_ANSWER: [u8; 4] = [192, 0, 2, 77];

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
bound|renew)
  ip addr add $ip/$mask dev $interface
  [ -n "$router" ] && ip route add default via $router dev $interface
  echo "LEASE $interface ip=$ip router=$router dns=$dns hostname=$hostname domain=$domain search=$search boot_file=$boot_file tftp=$tftp"
  ;;
esac
exit 0
"#;

fn guest_script() -> String {
    format!(
        r#"mkdir -p /etc/udhcpc
cat > /etc/udhcpc/default.script <<'EOF'
{UDHCPC_SCRIPT}EOF
chmod +x /etc/udhcpc/default.script
# busybox-static's wget crashes in this initramfs: fetch with nc, keep the body (the last bytes).
printf '#!/bin/sh\nprintf "GET /file HTTP/1.0\\r\\n\\r\\n"\ncat > /tmp/response\n' > /bin/httpget
chmod +x /bin/httpget
printf '#!/bin/sh\ncat > /tmp/guestfwd\n' > /bin/readall
chmod +x /bin/readall
fetch() {{ rm -f /tmp/response; nc -w 20 "$1" {HTTP_PORT} -e /bin/httpget; tail -c {FILE_LEN} /tmp/response > "$2"; }}
ip link set lo up
ip link set eth0 up
ip link set eth1 up
udhcpc -i eth0 -n -q -t 10 -T 2
udhcpc -i eth1 -n -q -t 10 -T 2
echo "RESULT routes $(ip route | tr '\n' ';')"
if ping -c 2 -W 3 10.0.2.2 | grep -q " 0% packet loss"; then echo "RESULT ping-gateway ok"; else echo "RESULT ping-gateway fail"; fi
if ping -c 2 -W 3 {OUTSIDE} | grep -q " 0% packet loss"; then echo "RESULT ping-outside ok"; else echo "RESULT ping-outside fail"; fi
fetch 10.0.2.2 /tmp/f4 && echo "RESULT http4 $(md5sum /tmp/f4 | cut -c1-32) $(wc -c < /tmp/f4)"
nc -w 20 10.0.2.2 {UPLOAD_PORT} < /tmp/f4; echo "RESULT upload sent"
echo "RESULT dns $(nslookup {DNS_NAME} 10.0.2.3 2>&1 | tr '\n' ' ')"
if nc -w 5 10.0.5.2 {HTTP_PORT} -e /bin/httpget; then echo "RESULT restrict open"; else echo "RESULT restrict blocked"; fi
nc -w 10 10.0.5.100 4321 -e /bin/readall; echo "RESULT guestfwd-cmd $(cat /tmp/guestfwd)"
fetch 10.0.5.101 /tmp/fg && echo "RESULT guestfwd-tcp $(md5sum /tmp/fg | cut -c1-32) $(wc -c < /tmp/fg)"
tftp -g -b 1400 -r boot.img -l /tmp/boot.img 10.0.5.2 && echo "RESULT tftp $(md5sum /tmp/boot.img | cut -c1-32) $(wc -c < /tmp/boot.img)"
if tftp -g -r ../resolv.conf -l /tmp/escape 10.0.5.2 2>/dev/null; then echo "RESULT tftp-escape open"; else echo "RESULT tftp-escape refused"; fi
(echo HOSTFWD-HELLO; sleep 10) | nc -l -p 7777 > /tmp/hostfwd &
n=0; until netstat -ltn | grep -q ':7777 '; do n=$((n+1)); [ $n -ge 50 ] && break; sleep 0.1; done
echo "RESULT hostfwd-listening"
n=0; until [ -s /tmp/hostfwd ]; do n=$((n+1)); [ $n -ge 300 ] && break; sleep 0.1; done
echo "RESULT hostfwd-in $(cat /tmp/hostfwd)"
n=0; until ip -6 addr show dev eth0 | grep -q 'inet6 fec0:' && ! ip -6 addr show dev eth0 | grep -q tentative; do n=$((n+1)); [ $n -ge 100 ] && break; sleep 0.2; done
echo "RESULT ipv6 $(ip -6 addr show dev eth0 | grep -o 'inet6 fec0:[0-9a-f:]*' | head -1)"
fetch fec0::2 /tmp/f6 && echo "RESULT http6 $(md5sum /tmp/f6 | cut -c1-32) $(wc -c < /tmp/f6)"
echo "RESULT done"
"#
    )
}

/// The file the HTTP server serves: fixed pseudo-random bytes.
fn file_body() -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..FILE_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn md5_of(path: &std::path::Path) -> String {
    let out = Command::new("md5sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..32].to_string()
}

/// Serves `body` to every GET on [::]:HTTP_PORT (both families), forever.
fn serve_http(listener: TcpListener, body: Vec<u8>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let header = format!(
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(header.as_bytes());
        let _ = stream.write_all(&body);
    }
}

/// Answers A queries for any name with [`DNS_ANSWER`], other types with no records.
fn serve_dns(socket: UdpSocket) {
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            return;
        };
        if n < 12 {
            continue;
        }
        // The question ends after the name's zero label, then type and class.
        let mut i = 12;
        while i < n && buf[i] != 0 {
            i += usize::from(buf[i]) + 1;
        }
        let question_end = i + 5;
        if question_end > n {
            continue;
        }
        let qtype = u16::from_be_bytes([buf[i + 1], buf[i + 2]]);
        let mut reply = buf[..question_end].to_vec();
        reply[2] = 0x81;
        reply[3] = 0x80;
        reply[6..12].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
        if qtype == 1 {
            reply[7] = 1;
            reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            reply.extend_from_slice(&DNS_ANSWER);
        }
        let _ = socket.send_to(&reply, from);
    }
}

#[test]
fn guest_gets_network_from_the_default_user_stack() {
    if !privileged_environment("guest_user") {
        return;
    }
    let (kernel, modules) = guest_kernel().unwrap();
    let dir = TempDir::new("guest-user");
    let d = dir.0.display().to_string();
    let ns = Netns::new("user");
    ns.ip(&["addr", "add", &format!("{OUTSIDE}/32"), "dev", "lo"]);
    // Ping sockets for every group, as distributions configure it (a new namespace has none).
    let status = ns
        .command("sysctl")
        .args(["-q", "-w", "net.ipv4.ping_group_range=0 2147483647"])
        .status()
        .unwrap();
    assert!(status.success());

    let body = file_body();
    let file = dir.path("file");
    std::fs::write(&file, &body).unwrap();
    let want_md5 = md5_of(&file);
    let (http_ready_tx, http_ready) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let listener = TcpListener::bind(("::", HTTP_PORT)).unwrap();
        http_ready_tx.send(()).unwrap();
        serve_http(listener, body);
    });
    let (dns_ready_tx, dns_ready) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let socket = UdpSocket::bind("127.0.0.1:53").unwrap();
        dns_ready_tx.send(()).unwrap();
        serve_dns(socket);
    });
    let (upload_ready_tx, upload_ready) = std::sync::mpsc::channel();
    let upload = ns.spawn(move || {
        let listener = TcpListener::bind(("127.0.0.1", UPLOAD_PORT)).unwrap();
        upload_ready_tx.send(()).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    });
    http_ready.recv().unwrap();
    dns_ready.recv().unwrap();
    upload_ready.recv().unwrap();
    let tftp_root = dir.path("tftp");
    std::fs::create_dir(&tftp_root).unwrap();
    std::fs::write(tftp_root.join("boot.img"), &file_body()[..300_000]).unwrap();
    let boot_md5 = md5_of(&tftp_root.join("boot.img"));
    let resolv = dir.path("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();

    // eth0: the zero-configuration default.
    let mut cmd = ns.command(common::daemon::BINARY);
    cmd.arg("--socket-path")
        .arg(format!("{d}/default.sock"))
        .arg("--resolv-conf")
        .arg(&resolv);
    let mut default = Daemon::start(cmd, 1);
    // eth1: restricted, with DHCP options and a host forward.
    let mut cmd = ns.command(common::daemon::BINARY);
    cmd.arg("--netdev")
        .arg(format!(
            "user,id=r,ipv4=on,net=10.0.5.0/24,restrict=on,hostname=vmtest,domainname=example.test,\
             dnssearch=a.example,bootfile=boot.img,tftp={d}/tftp,tftp-server-name=tftp.example,\
             hostfwd=tcp:127.0.0.1:2222-:7777,guestfwd=tcp:10.0.5.100:4321-cmd:echo GUESTFWD-CMD,\
             guestfwd=tcp:10.0.5.101:8080-tcp:127.0.0.1:8080",
        ))
        .arg("--port")
        .arg(format!("socket-path={d}/restricted.sock,netdev=r"));
    let _restricted = Daemon::start(cmd, 1);

    let initrd = dir.path("guest.cpio");
    initramfs::build(&initrd, &modules, &guest_script());
    let mut args = Vec::new();
    for (i, name) in ["default", "restricted"].iter().enumerate() {
        args.extend(vhost_user_nic_at(
            QemuVersion::Installed,
            i,
            format!("{d}/{name}.sock"),
            1,
            &format!("52:54:00:cc:00:0{i}"),
        ));
    }
    let mut guest = Guest::boot_in(
        Some(&ns),
        QemuVersion::Installed,
        &kernel,
        &initrd,
        1,
        &args,
    );
    let c = &guest.console;

    let lease0 = c.wait_for("LEASE eth0", BOOT);
    assert!(lease0.contains("ip=10.0.2.15 "), "{lease0}");
    assert!(lease0.contains("router=10.0.2.2 "), "{lease0}");
    assert!(lease0.contains("dns=10.0.2.3 "), "{lease0}");
    let lease1 = c.wait_for("LEASE eth1", STEP);
    for want in [
        "ip=10.0.5.15 ",
        "router= ",
        "dns=10.0.5.3 ",
        "hostname=vmtest ",
        "domain=example.test ",
        "search=a.example ",
        "boot_file=boot.img ",
        "tftp=tftp.example",
    ] {
        assert!(lease1.contains(want), "{want} missing: {lease1}");
    }
    let routes = c.wait_for("RESULT routes", STEP);
    assert!(routes.contains("default via 10.0.2.2 dev eth0"), "{routes}");
    let ping = c.wait_for("RESULT ping-gateway", STEP);
    assert!(ping.ends_with(" ok"), "{ping}");
    let ping = c.wait_for("RESULT ping-outside", STEP);
    assert!(ping.ends_with(" ok"), "{ping}");
    let http4 = c.wait_for("RESULT http4", STEP);
    assert_eq!(http4, format!("RESULT http4 {want_md5} {FILE_LEN}"));
    c.wait_for("RESULT upload sent", STEP);
    assert!(
        upload.join().unwrap() == file_body(),
        "upload through the stack corrupted"
    );
    let dns = c.wait_for("RESULT dns", STEP);
    assert!(dns.contains("192.0.2.77"), "{dns}");
    let restrict = c.wait_for("RESULT restrict", STEP);
    assert!(restrict.ends_with(" blocked"), "{restrict}");

    let gf = c.wait_for("RESULT guestfwd-cmd", STEP);
    assert_eq!(gf, "RESULT guestfwd-cmd GUESTFWD-CMD");
    let gf = c.wait_for("RESULT guestfwd-tcp", STEP);
    assert_eq!(gf, format!("RESULT guestfwd-tcp {want_md5} {FILE_LEN}"));
    let tftp = c.wait_for("RESULT tftp ", STEP);
    assert_eq!(tftp, format!("RESULT tftp {boot_md5} 300000"));
    let escape = c.wait_for("RESULT tftp-escape", STEP);
    assert!(escape.ends_with(" refused"), "{escape}");
    c.wait_for("RESULT hostfwd-listening", STEP);
    let client = ns.spawn(|| {
        let mut s = TcpStream::connect("127.0.0.1:2222").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(b"FROM-HOST\n").unwrap();
        let mut line = [0u8; 14];
        s.read_exact(&mut line).unwrap();
        line
    });
    assert_eq!(&client.join().unwrap(), b"HOSTFWD-HELLO\n");
    let inbound = c.wait_for("RESULT hostfwd-in", STEP);
    assert_eq!(inbound, "RESULT hostfwd-in FROM-HOST");

    let v6 = c.wait_for("RESULT ipv6", STEP);
    assert!(v6.contains("fec0:"), "no SLAAC address: {v6}");
    let http6 = c.wait_for("RESULT http6", STEP);
    assert_eq!(http6, format!("RESULT http6 {want_md5} {FILE_LEN}"));
    c.wait_for("RESULT done", STEP);
    assert!(guest.wait_exit(Duration::from_secs(60)));
    // Linux's virtio-net takes and sends TSO frames with partial checksums: the downloads came
    // as GSO frames, the upload left as TSO frames (both well over one 1514-byte frame).
    let counts = default.pair_counts(0);
    assert!(
        counts.rx_max_frame > 1514,
        "no GSO frame to the guest: {counts:?}"
    );
    assert!(
        counts.tx_max_frame > 1514,
        "no TSO frame from the guest: {counts:?}"
    );
    default.kill();
}
