//! Wire compatibility of the socket netdevs with QEMU's own: guest A runs on vhost-user-netd with
//! one port per backend (stream unix and inet in both roles, dgram unicast and multicast,
//! L2TPv3 over UDP and over IP, and the legacy `socket` netdev listening, connecting, on a
//! multicast group and over UDP), guest B on QEMU 7.2 with the same netdev types natively. One
//! link is a hub inside the daemon: both guests have a vhost-user NIC on a `hubport` of hub 0
//! (two VMs switched by the daemon, no tap). A pings B and sends B 1 MiB over TCP on every
//! link; B reports the checksum of what it received. A's last NIC is a stream client to passt
//! (Debian's, socket mode), which must hand it a DHCP lease. Everything runs in a network
//! namespace the test creates; one boot of each guest.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Child;
use std::time::Duration;

use common::daemon::Daemon;
use common::netns::Netns;
use common::qemu::{qemu_72_root, vhost_user_nic_at, virtio_vectors, Guest, QemuVersion};
use common::{guest_kernel, initramfs, privileged_environment, which, TempDir};

const BOOT: Duration = Duration::from_secs(180);
const STEP: Duration = Duration::from_secs(240);
/// Links between the guests (not counting passt).
const LINKS: usize = 11;
/// The link that is a hub inside the daemon (both guests on vhost-user).
const HUB_LINK: usize = 6;

/// (our netdev, QEMU's netdev) per link; `{D}` is the scratch directory.
fn links() -> [(String, String); LINKS] {
    [
        // stream over unix: we serve, QEMU connects.
        (
            "stream,id=n0,server=on,addr.type=unix,addr.path={D}/s0.sock".into(),
            "stream,id=n0,server=off,addr.type=unix,addr.path={D}/s0.sock".into(),
        ),
        // stream over TCP: QEMU serves, we connect (and retry until it is up).
        (
            "stream,id=n1,server=off,reconnect=1,addr.type=inet,addr.host=127.0.0.1,addr.port=6001"
                .into(),
            "stream,id=n1,server=on,addr.type=inet,addr.host=127.0.0.1,addr.port=6001".into(),
        ),
        // dgram unicast.
        (
            "dgram,id=n2,local.type=inet,local.host=127.0.0.1,local.port=6002,remote.type=inet,remote.host=127.0.0.1,remote.port=6003".into(),
            "dgram,id=n2,local.type=inet,local.host=127.0.0.1,local.port=6003,remote.type=inet,remote.host=127.0.0.1,remote.port=6002".into(),
        ),
        // dgram multicast: we name the interface, QEMU does not.
        (
            "dgram,id=n3,remote.type=inet,remote.host=230.0.0.1,remote.port=6004,local.type=inet,local.host=127.0.0.1,local.port=0".into(),
            "dgram,id=n3,remote.type=inet,remote.host=230.0.0.1,remote.port=6004".into(),
        ),
        // L2TPv3 over UDP, 64-bit cookies, counter.
        (
            "l2tpv3,id=n4,src=127.0.0.1,dst=127.0.0.1,udp=on,srcport=6005,dstport=6006,txsession=16,rxsession=32,cookie64=on,txcookie=81985529216486895,rxcookie=1311768467463790320,counter=on".into(),
            "l2tpv3,id=n4,src=127.0.0.1,dst=127.0.0.1,udp=on,srcport=6006,dstport=6005,txsession=32,rxsession=16,cookie64=on,txcookie=1311768467463790320,rxcookie=81985529216486895,counter=on".into(),
        ),
        // L2TPv3 over IP protocol 115, 32-bit cookies, different loopback addresses.
        (
            "l2tpv3,id=n5,src=127.0.0.1,dst=127.0.0.2,txsession=48,rxsession=64,txcookie=305419896,rxcookie=2271560481".into(),
            "l2tpv3,id=n5,src=127.0.0.2,dst=127.0.0.1,txsession=64,rxsession=48,txcookie=2271560481,rxcookie=305419896".into(),
        ),
        // A hub in the daemon: B's side is a vhost-user NIC on the daemon's port `b6.sock`.
        (
            "hubport,id=n6,hubid=0".into(),
            "vhost-user,id=n6,chardev=hub6".into(),
        ),
        // The legacy socket netdev: we listen, QEMU connects.
        (
            "socket,id=n7,listen=127.0.0.1:6010".into(),
            "socket,id=n7,connect=127.0.0.1:6010".into(),
        ),
        // QEMU listens, we connect (and try again until it is up).
        (
            "socket,id=n8,connect=127.0.0.1:6011".into(),
            "socket,id=n8,listen=127.0.0.1:6011".into(),
        ),
        // A multicast group: we name the interface, QEMU does not.
        (
            "socket,id=n9,mcast=230.0.0.2:6012,localaddr=127.0.0.1".into(),
            "socket,id=n9,mcast=230.0.0.2:6012".into(),
        ),
        // UDP between two addresses.
        (
            "socket,id=n10,udp=127.0.0.1:6014,localaddr=127.0.0.1:6013".into(),
            "socket,id=n10,udp=127.0.0.1:6013,localaddr=127.0.0.1:6014".into(),
        ),
    ]
}

fn script_a() -> String {
    let mut s = String::from("mkdir -p /etc/udhcpc\nprintf '#!/bin/sh\\nexit 0\\n' > /etc/udhcpc/default.script\nchmod +x /etc/udhcpc/default.script\n");
    for i in 0..LINKS {
        s.push_str(&format!(
            "ip link set eth{i} up\nip addr add 10.0.{n}.1/24 dev eth{i}\n",
            n = i + 1
        ));
    }
    s.push_str("echo GUEST-READY\n");
    s.push_str("dd if=/dev/urandom of=/tmp/out bs=64k count=16 2>/dev/null\n");
    s.push_str("echo \"RESULT tx-md5 $(md5sum /tmp/out | cut -c1-32)\"\n");
    for i in 0..LINKS {
        s.push_str(&format!(
            r#"n=0; until ping -c 1 -W 1 10.0.{n}.2 >/dev/null 2>&1; do n=$((n+1)); [ $n -ge 120 ] && break; done
if ping -c 3 -W 3 10.0.{n}.2 | grep -q " 0% packet loss"; then echo "RESULT ping{i} ok"; else echo "RESULT ping{i} fail"; fi
n=0; until nc 10.0.{n}.2 {port} < /tmp/out; do n=$((n+1)); [ $n -ge 10 ] && break; sleep 1; done
echo "RESULT sent{i}"
"#,
            n = i + 1,
            port = 5000 + i
        ));
    }
    s.push_str(&format!(
        "ip link set eth{LINKS} up\nudhcpc -i eth{LINKS} -n -q -t 10 -T 2 2>&1 | sed 's/^/DHCP /'\necho RESULT dhcp-done\n"
    ));
    s
}

fn script_b() -> String {
    let mut s = String::new();
    for i in 0..LINKS {
        s.push_str(&format!(
            "ip link set eth{i} up\nip addr add 10.0.{n}.2/24 dev eth{i}\n",
            n = i + 1
        ));
    }
    for i in 0..LINKS {
        s.push_str(&format!(
            // nc's stdin never ends (busybox nc stops at stdin EOF): it stops at the sender's.
            "sleep 1000 | (nc -l -p {port} > /tmp/in{i}; echo \"RESULT rx{i} $(md5sum /tmp/in{i} | cut -c1-32) $(wc -c < /tmp/in{i})\"; touch /tmp/done{i}) &\n",
            port = 5000 + i
        ));
    }
    s.push_str(&format!(
        "echo GUEST-READY\nwhile [ $(ls /tmp/done* 2>/dev/null | wc -l) -lt {LINKS} ]; do sleep 1; done\n"
    ));
    s
}

/// A passt in socket mode inside the namespace; killed on drop.
struct Passt(Child);

impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn guests_talk_across_every_socket_netdev_and_passt_leases() {
    if !privileged_environment("guest_sockets") {
        return;
    }
    let (Some((kernel, modules)), Some(passt)) = (guest_kernel(), which("passt")) else {
        assert!(
            std::env::var_os("VUNETD_FULL_SUITE").is_none(),
            "guest kernel or passt missing"
        );
        return;
    };
    let qemu72 = qemu_72_root().join("usr/bin/qemu-system-x86_64");
    assert!(qemu72.is_file(), "QEMU 7.2 not unpacked");
    let dir = TempDir::new("guest-sockets");
    let d = dir.0.display().to_string();
    let ns = Netns::new("sockets");
    // Multicast over loopback, and a routable interface so that passt starts.
    ns.ip(&["link", "set", "lo", "multicast", "on"]);
    ns.ip(&["route", "add", "224.0.0.0/4", "dev", "lo"]);
    ns.ip(&["link", "add", "pv0", "type", "veth", "peer", "name", "pv1"]);
    ns.ip(&["addr", "add", "192.168.77.1/24", "dev", "pv0"]);
    ns.ip(&["link", "set", "pv0", "up"]);
    ns.ip(&["link", "set", "pv1", "up"]);
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "192.168.77.254",
        "dev",
        "pv0",
    ]);

    // passt runs as nobody and creates its socket in a directory it can write.
    let passt_dir = dir.path("passt");
    std::fs::create_dir(&passt_dir).unwrap();
    std::fs::set_permissions(
        &passt_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let passt_sock = passt_dir.join("passt.sock");
    let mut passt_cmd = ns.command(passt.to_str().unwrap());
    passt_cmd
        .args(["-f", "-1", "-s"])
        .arg(&passt_sock)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = passt_cmd.spawn().expect("spawn passt");
    let passt_log = common::lines::Lines::spawn(child.stderr.take().unwrap(), "passt", false);
    let _passt = Passt(child);
    passt_log.wait_for("UNIX domain socket bound", Duration::from_secs(20));

    // The daemon: one port per link, plus passt's.
    let mut cmd = ns.command(common::daemon::BINARY);
    let mut netdevs: Vec<String> = links()
        .iter()
        .map(|(ours, _)| ours.replace("{D}", &d))
        .collect();
    netdevs.push(format!(
        "stream,id=n{LINKS},server=off,addr.type=unix,addr.path={}",
        passt_sock.display()
    ));
    for (i, n) in netdevs.iter().enumerate() {
        cmd.arg("--netdev").arg(n).arg("--port").arg(format!(
            "socket-path={d}/a{i}.sock,netdev=n{i},mac=52:54:00:aa:00:{i:02x}"
        ));
    }
    // Guest B's side of the hub.
    cmd.args(["--netdev", "hubport,id=hubb,hubid=0", "--port"])
        .arg(format!("socket-path={d}/b{HUB_LINK}.sock,netdev=hubb"));
    let _daemon = Daemon::start(cmd, netdevs.len() + 1);

    // Guest A on the daemon (QEMU 10).
    let initrd_a = dir.path("a.cpio");
    initramfs::build(&initrd_a, &modules, &script_a());
    let mut args_a = Vec::new();
    for i in 0..netdevs.len() {
        args_a.extend(vhost_user_nic_at(
            QemuVersion::Installed,
            i,
            format!("{d}/a{i}.sock"),
            1,
            &format!("52:54:00:aa:00:{i:02x}"),
        ));
    }
    let mut guest_a = Guest::boot_in(
        Some(&ns),
        QemuVersion::Installed,
        &kernel,
        &initrd_a,
        1,
        &args_a,
    );

    // Guest B on QEMU 7.2's own netdevs.
    let initrd_b = dir.path("b.cpio");
    initramfs::build(&initrd_b, &modules, &script_b());
    let mut args_b = Vec::new();
    args_b.extend([
        "-chardev".to_string(),
        format!("socket,id=hub{HUB_LINK},path={d}/b{HUB_LINK}.sock"),
    ]);
    for (i, (_, theirs)) in links().iter().enumerate() {
        let vectors = if i == HUB_LINK {
            virtio_vectors(QemuVersion::Bookworm72, 1)
        } else {
            String::new()
        };
        args_b.extend([
            "-netdev".to_string(),
            theirs.replace("{D}", &d),
            "-device".into(),
            format!("virtio-net-pci,netdev=n{i},mac=52:54:00:bb:00:{i:02x},romfile={vectors}"),
        ]);
    }
    let mut guest_b = Guest::boot_in(
        Some(&ns),
        QemuVersion::Bookworm72,
        &kernel,
        &initrd_b,
        1,
        &args_b,
    );

    guest_a.console.wait_for("GUEST-READY", BOOT);
    guest_b.console.wait_for("GUEST-READY", BOOT);
    let tx = guest_a.console.wait_for("RESULT tx-md5", STEP);
    let tx_md5 = tx.split_whitespace().nth(2).unwrap().to_string();
    let names = [
        "stream unix",
        "stream inet",
        "dgram",
        "dgram multicast",
        "l2tpv3 udp",
        "l2tpv3 ip",
        "hubport",
        "socket listen",
        "socket connect",
        "socket mcast",
        "socket udp",
    ];
    for (i, name) in names.iter().enumerate() {
        let ping = guest_a.console.wait_for(&format!("RESULT ping{i} "), STEP);
        assert!(ping.ends_with(" ok"), "{name}: {ping}");
        let rx = guest_b.console.wait_for(&format!("RESULT rx{i} "), STEP);
        let fields: Vec<&str> = rx.split_whitespace().collect();
        assert_eq!(fields[3], "1048576", "{name}: byte count ({rx})");
        assert_eq!(fields[2], tx_md5, "{name}: checksum");
    }
    guest_a.console.wait_for("RESULT dhcp-done", STEP);
    let lease = guest_a.console.matching("lease of");
    assert!(
        lease
            .iter()
            .any(|l| l.contains("lease of 192.168.77.1 obtained")),
        "passt's DHCP lease: {lease:?}\n{}",
        guest_a.console.transcript()
    );
    assert!(guest_a.wait_exit(STEP), "guest A powers off");
    assert!(guest_b.wait_exit(STEP), "guest B powers off");
}
