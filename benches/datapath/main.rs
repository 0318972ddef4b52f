//! The datapath benchmark: one command, every measurement of the datapath the project has
//! targets for, each the median of `BENCH_RUNS` runs (default 3) of `BENCH_SECONDS` (default 4)
//! with min–max and the backend's CPU.
//!
//! Sections (`BENCH_ONLY=hub,tap,gso,mq,idle` picks some):
//! - `hub`: 64-byte frames looping through two hub ports, against DPDK's vhost backend.
//! - `tap`: the tap backend per direction at 64 and 1500 bytes, against a raw `writev`/`readv`
//!   loop on a tap (`BENCH_DIRS=tx` or `rx` for one direction).
//! - `gso`: 64 KiB GSO frames across the tap both ways, against 1514-byte frames.
//! - `mq`: two queue pairs against one.
//! - `idle`: an idle connected port's CPU and the daemon's resident memory.
//! - `xdp` (built with `--features af-xdp`): the af-xdp backend per direction at 64 and 1500
//!   bytes on a veth, against the tap backend and DPDK's `net_vhost` + `net_af_xdp`.
//!
//! The frontend (testpmd, or the in-repo driver where testpmd cannot make GSO frames) runs on
//! core 1, the daemon on core 0. `BENCH_DAEMON_ARGS="--poll-us 0"` passes options to the daemon. Run as root after `bash scripts/install-test-deps.sh`:
//! `cargo bench --bench datapath --features af-xdp`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_wrap,
    clippy::cast_possible_truncation
)]

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/driver.rs"]
mod driver;
#[path = "../../tests/common/frontend.rs"]
#[allow(dead_code)]
mod frontend;
#[path = "../../tests/common/netns.rs"]
#[allow(dead_code)]
mod netns;
#[path = "../../tests/common/packet.rs"]
#[allow(dead_code)]
mod packet;
#[path = "../../tests/common/tap.rs"]
#[allow(dead_code)]
mod tap;
#[path = "../common/testpmd.rs"]
mod testpmd;

#[cfg(feature = "af-xdp")]
mod af_xdp_rate;
mod frames;
mod generator;
mod gso;
mod hub_loop;
mod raw_tap;
mod report;
mod tap_rate;

use common::{runs_and_window, StealMeter};

const DAEMON: &str = env!("CARGO_BIN_EXE_vhost-user-netd");

/// A section's run, by name.
type Section<'a> = Box<dyn Fn() + 'a>;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |s: &str| only.is_empty() || only.split(',').any(|o| o == s);
    let (runs, window) = runs_and_window(3, 4.0);
    let scratch = std::env::temp_dir().join(format!("vunetd-bench-dp-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    #[allow(unused_mut)]
    let mut sections: Vec<(&str, Section)> = vec![
        (
            "hub",
            Box::new(|| hub_loop::run(runs, window, &scratch.join("hub"))),
        ),
        ("tap", Box::new(|| tap_rate::run(runs, window, &scratch))),
        ("gso", Box::new(|| gso::run(runs, window, &scratch))),
        (
            "mq",
            Box::new(|| tap_rate::run_multiqueue(runs, window, &scratch)),
        ),
        ("idle", Box::new(|| gso::run_idle(window, &scratch))),
    ];
    #[cfg(feature = "af-xdp")]
    sections.push(("xdp", Box::new(|| af_xdp_rate::run(runs, window, &scratch))));
    for (name, section) in sections {
        if wanted(name) {
            let steal = StealMeter::start();
            section();
            steal.report();
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
