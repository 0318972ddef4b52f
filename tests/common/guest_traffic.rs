//! The traffic checks every guest test runs: the guest's script pings the host and moves 10 MB
//! each way over TCP; the host side (inside the test's namespace) serves the transfers and
//! compares checksums.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::Duration;

use super::netns::Netns;
use super::qemu::Guest;
use super::TempDir;

pub const HOST_IP: &str = "10.0.0.1";
pub const GUEST_IP: &str = "10.0.0.2";
pub const TRANSFER: usize = 10 << 20;
pub const BOOT: Duration = Duration::from_secs(180);
pub const STEP: Duration = Duration::from_secs(120);

/// The guest's part: address, queue count, ping the host, 10 MB out (port 5000) and in (5001).
pub const SETUP: &str = r#"
ip link set eth0 up
ip addr add 10.0.0.2/24 dev eth0
echo "GUEST-READY queues=$(ls -d /sys/class/net/eth0/queues/rx-* | wc -l)"
if ping -c 3 -W 5 10.0.0.1 | grep -q " 0% packet loss"; then echo "RESULT ping-host ok"; else echo "RESULT ping-host fail"; fi
dd if=/dev/urandom of=/tmp/out bs=1M count=10 2>/dev/null
echo "RESULT tx-md5 $(md5sum /tmp/out | cut -c1-32)"
nc 10.0.0.1 5000 < /tmp/out
nc 10.0.0.1 5001 < /dev/null > /tmp/in
echo "RESULT rx-md5 $(md5sum /tmp/in | cut -c1-32) bytes=$(wc -c < /tmp/in)"
"#;

/// Deterministic pseudo-random bytes (xorshift64).
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn md5(data: &[u8], dir: &TempDir, name: &str) -> String {
    let path = dir.path(name);
    std::fs::write(&path, data).unwrap();
    let out = Command::new("md5sum").arg(&path).output().expect("md5sum");
    String::from_utf8_lossy(&out.stdout)[..32].to_string()
}

pub fn field(line: &str, index: usize) -> String {
    line.split_whitespace()
        .nth(index)
        .unwrap_or_default()
        .to_string()
}

/// The host's side of the TCP checks, running inside the namespace.
pub struct HostPeer {
    received: JoinHandle<Vec<u8>>,
    sent: JoinHandle<Vec<u8>>,
    flows: Option<JoinHandle<usize>>,
}

impl HostPeer {
    pub fn start(ns: &Netns, flows: usize) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ready = ready_tx.clone();
        let received = ns.spawn(move || {
            let l = TcpListener::bind((HOST_IP, 5000)).expect("bind 5000");
            ready.send(()).unwrap();
            let (mut s, _) = l.accept().expect("accept 5000");
            let mut data = Vec::new();
            s.read_to_end(&mut data).expect("read guest data");
            data
        });
        let ready = ready_tx.clone();
        let sent = ns.spawn(move || {
            let l = TcpListener::bind((HOST_IP, 5001)).expect("bind 5001");
            ready.send(()).unwrap();
            let (mut s, _) = l.accept().expect("accept 5001");
            let data = pattern(TRANSFER);
            s.write_all(&data).expect("send to guest");
            data
        });
        let flow_handle = (flows > 0).then(|| {
            let ready = ready_tx.clone();
            ns.spawn(move || {
                let l = TcpListener::bind((HOST_IP, 5003)).expect("bind 5003");
                ready.send(()).unwrap();
                let chunk = pattern(256 << 10);
                let mut served = 0;
                for _ in 0..flows {
                    let (mut s, _) = l.accept().expect("accept 5003");
                    let chunk = chunk.clone();
                    std::thread::spawn(move || {
                        let _ = s.write_all(&chunk);
                    });
                    served += 1;
                }
                served
            })
        });
        let expected = 2 + usize::from(flows > 0);
        for _ in 0..expected {
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("listener ready");
        }
        HostPeer {
            received,
            sent,
            flows: flow_handle,
        }
    }
}

pub fn host_pings_guest(ns: &Netns) {
    let out = ns
        .command("ping")
        .args(["-c", "3", "-W", "5", GUEST_IP])
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 0% packet loss"),
        "host → guest ping failed:\n{text}"
    );
}

/// Checks ping both ways and the two 10 MB transfers.
pub fn check_ping_and_transfers(
    guest: &Guest,
    ns: &Netns,
    peer: HostPeer,
    dir: &TempDir,
    queues: u16,
) -> Option<JoinHandle<usize>> {
    let ready = guest.console.wait_for("GUEST-READY", BOOT);
    assert!(
        ready.ends_with(&format!("queues={queues}")),
        "guest sees {ready}"
    );
    host_pings_guest(ns);
    let line = guest.console.wait_for("RESULT ping-host", STEP);
    assert!(line.ends_with(" ok"), "guest → host ping: {line}");

    let line = guest.console.wait_for("RESULT tx-md5", STEP);
    let received = peer.received.join().expect("receiver thread");
    assert_eq!(received.len(), TRANSFER, "guest → host byte count");
    assert_eq!(
        field(&line, 2),
        md5(&received, dir, "rx.bin"),
        "guest → host checksum"
    );

    let line = guest.console.wait_for("RESULT rx-md5", STEP);
    let sent = peer.sent.join().expect("sender thread");
    assert_eq!(
        field(&line, 3),
        format!("bytes={TRANSFER}"),
        "host → guest byte count"
    );
    assert_eq!(
        field(&line, 2),
        md5(&sent, dir, "tx.bin"),
        "host → guest checksum"
    );
    peer.flows
}

pub trait IntoAddr {
    fn into_addr(self) -> std::net::SocketAddr;
}

impl IntoAddr for &(&str, u16) {
    fn into_addr(self) -> std::net::SocketAddr {
        format!("{}:{}", self.0, self.1).parse().expect("address")
    }
}

/// The guest's part for a multiqueue check: 16 parallel downloads from the host (port 5003).
pub const FLOWS: &str = r#"
i=0
while [ $i -lt 16 ]; do nc 10.0.0.1 5003 < /dev/null > /dev/null & i=$((i+1)); done
wait
echo "RESULT flows-done"
"#;

/// The guest's part of a phase the host acts in: it prints `PHASE name`, waits for the host's
/// word on TCP `port` (`RESULT go WORD`), then pings the host (`RESULT ping-after-name ok`).
pub fn phase(name: &str, port: u16) -> String {
    format!(
        r#"
echo "PHASE {name}"
nc -l -p {port} < /dev/null > /tmp/go
echo "RESULT go $(cat /tmp/go)"
if ping -c 3 -W 5 10.0.0.1 | grep -q " 0% packet loss"; then echo "RESULT ping-after-{name} ok"; else echo "RESULT ping-after-{name} fail"; fi
"#
    )
}

/// The host's word to a guest waiting in [`phase`]: connects to its listener on `port` from
/// inside `ns`, retried for up to a minute (the path may be coming back), and sends `word`.
pub fn tell_guest(ns: &Netns, port: u16, word: &'static str) -> Result<(), String> {
    tell_guest_at(ns, GUEST_IP, port, word)
}

/// As [`tell_guest`], to the guest at `ip`.
pub fn tell_guest_at(
    ns: &Netns,
    ip: &'static str,
    port: u16,
    word: &'static str,
) -> Result<(), String> {
    ns.spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match std::net::TcpStream::connect_timeout(
                &(ip, port).into_addr(),
                Duration::from_secs(2),
            ) {
                Ok(mut s) => {
                    return s
                        .write_all(format!("{word}\n").as_bytes())
                        .map_err(|e| e.to_string())
                }
                Err(e) if std::time::Instant::now() >= deadline => return Err(e.to_string()),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    })
    .join()
    .expect("tell_guest thread")
}

/// What a guest test starts from: the guest kernel, a scratch directory with an initramfs that
/// runs `script`, and a namespace.
pub struct Prepared {
    pub kernel: std::path::PathBuf,
    pub dir: TempDir,
    pub initrd: std::path::PathBuf,
    pub ns: Netns,
}

/// Builds the initramfs for `script` and creates the namespace, both named after `tag`.
pub fn prepare(tag: &str, script: &str) -> Prepared {
    let (kernel, modules) = super::guest_kernel().expect("kernel");
    let dir = TempDir::new(tag);
    let initrd = dir.path("initrd.cpio");
    super::initramfs::build(&initrd, &modules, script);
    Prepared {
        kernel,
        dir,
        initrd,
        ns: Netns::new(tag),
    }
}

/// Waits until the guest's script has ended and the guest has powered off (the daemon then logs
/// the disconnected port's counters).
pub fn guest_done(guest: &mut Guest) {
    guest.console.wait_for("GUEST-DONE", STEP);
    assert!(
        guest.wait_exit(Duration::from_secs(30)),
        "guest did not power off"
    );
}
