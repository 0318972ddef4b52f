//! vhost-user-netd: a vhost-user virtio-net backend whose host side is one of QEMU's netdevs.
//!
//! Module map:
//! - [`cli`] → [`config`]: the command line, validated once into an immutable [`config::Config`].
//! - [`daemon`]: a [`config::Config`] started (netdevs, port threads, QMP) and ended in order.
//! - [`port`]: a vhost-user socket and the device each frontend connection gets.
//! - [`vhost_user`]: the vhost-user protocol (framing, memory table, request dispatcher).
//! - [`device`]: the virtio-net device: rings, rx/tx paths, features, config space. The only
//!   code that knows virtio.
//! - The host-side backends live in the `vhost-user-netd-backends` crate (`backends/`), which
//!   knows nothing about virtio.
//! - [`qmp`]: the QMP management socket (QEMU's net QAPI).
//! - [`events`]: asynchronous events and their fan-out to subscribers (QMP sessions).
//! - [`mac`]: MAC address text.
//! - [`registry`]: netdevs (command line and QMP) and ports; live rebinding.
//! - [`announcer`]: `announce-self` timers.
//! - [`capture`]: pcap capture of a port's frames (`filter-dump`, `--pcap`).
//! - [`sandbox`]: confinement after set-up; [`service_manager`]: systemd notifications.
//! - [`signals`]: clean shutdown on SIGTERM.

pub mod announcer;
pub mod capture;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod device;
pub mod events;
pub mod mac;
pub mod port;
pub mod qmp;
pub mod registry;
pub mod sandbox;
pub mod service_manager;
pub mod signals;
pub mod vhost_user;
