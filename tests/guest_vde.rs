//! `-netdev vde` against its real peer: a `vde_switch` (Debian's vde2) in a directory the test
//! owns, guest A on the daemon's vde netdev, guest B on QEMU's own `-netdev vde`, both plugged
//! into the switch. A pings B and sends it 1 MiB over TCP; B reports the checksum.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::daemon::Daemon;
use common::guest_traffic::{guest_done, prepare, BOOT, STEP};
use common::qemu::{vhost_user_nic, Guest, QemuVersion};
use common::{privileged_environment, which};

/// Each guest takes 10.0.0.N from its MAC's last byte: A (10) sends, B (11) receives.
const SCRIPT: &str = r#"
ip link set eth0 up
n=$((0x$(cut -d: -f6 /sys/class/net/eth0/address)))
ip addr add 10.0.0.$n/24 dev eth0
echo "GUEST-READY $n"
if [ $n = 11 ]; then
  sleep 1000 | (nc -l -p 5000 > /tmp/in; echo "RESULT rx $(md5sum /tmp/in | cut -c1-32) $(wc -c < /tmp/in)"; touch /tmp/done) &
  while [ ! -f /tmp/done ]; do sleep 1; done
else
  dd if=/dev/urandom of=/tmp/out bs=64k count=16 2>/dev/null
  echo "RESULT tx $(md5sum /tmp/out | cut -c1-32)"
  m=0; until ping -c 1 -W 1 10.0.0.11 >/dev/null 2>&1; do m=$((m+1)); [ $m -ge 90 ] && break; done
  if ping -c 3 -W 5 10.0.0.11 | grep -q " 0% packet loss"; then echo "RESULT ping ok"; else echo "RESULT ping fail"; fi
  m=0; until nc 10.0.0.11 5000 < /tmp/out; do m=$((m+1)); [ $m -ge 10 ] && break; sleep 1; done
  echo "RESULT sent"
fi
"#;

/// A `vde_switch` in the foreground, its console on a pipe we hold; killed on drop.
struct Switch(Child);

impl Drop for Switch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_guest_on_the_daemons_vde_netdev_talks_to_a_guest_on_qemus_own() {
    if !privileged_environment("guest_vde") {
        return;
    }
    assert!(which("vde_switch").is_some(), "vde_switch (Debian's vde2)");
    let prepared = prepare("vde", SCRIPT);
    let dir = &prepared.dir;
    let switch_dir = dir.path("switch");
    let switch = Switch(
        Command::new("vde_switch")
            .arg("-s")
            .arg(&switch_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The control socket appears once the switch is up.
    let ctl = switch_dir.join("ctl");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !ctl.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "vde_switch did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let socket = dir.path("a.sock");
    let mut cmd = Daemon::command(&["--netdev"]);
    cmd.arg(format!("vde,id=n0,sock={}", switch_dir.display()))
        .arg("--socket-path")
        .arg(&socket);
    let daemon = Daemon::start(cmd, 1);

    let args_a = vhost_user_nic(
        QemuVersion::Installed,
        socket.display().to_string(),
        1,
        "52:54:00:00:00:0a",
    );
    let args_b = vec![
        "-netdev".to_string(),
        format!("vde,id=v0,sock={}", switch_dir.display()),
        "-device".into(),
        "virtio-net-pci,netdev=v0,mac=52:54:00:00:00:0b,romfile=".into(),
    ];
    let boot = |args: &[String]| {
        Guest::boot_in(
            None,
            QemuVersion::Installed,
            &prepared.kernel,
            &prepared.initrd,
            1,
            args,
        )
    };
    let (mut a, mut b) = (boot(&args_a), boot(&args_b));
    a.console.wait_for("GUEST-READY", BOOT);
    b.console.wait_for("GUEST-READY", BOOT);
    let tx = a.console.wait_for("RESULT tx", STEP);
    let ping = a.console.wait_for("RESULT ping", STEP);
    assert!(ping.ends_with(" ok"), "{ping}");
    let rx = b.console.wait_for("RESULT rx", STEP);
    let md5 = tx.split_whitespace().nth(2).unwrap();
    let fields: Vec<&str> = rx.split_whitespace().collect();
    assert_eq!((fields[2], fields[3]), (md5, "1048576"), "{rx}");
    guest_done(&mut a);
    guest_done(&mut b);
    drop(daemon);
    drop(switch);
}
