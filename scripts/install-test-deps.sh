#!/usr/bin/env bash
# Installs the system packages the test suite needs, only when missing.
# Idempotent; safe to run on a fresh Debian bookworm machine as root.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

backports=/etc/apt/sources.list.d/bookworm-backports.sources
if [ ! -f "$backports" ]; then
  $SUDO tee "$backports" >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  updated=0
fi

qemu_ok() {
  have qemu-system-x86_64 && qemu-system-x86_64 --version | grep -qE 'version (9|1[0-9])\.'
}

# The af-xdp feature builds libxdp and libbpf (clang, libclang for bindgen, libelf, zlib, m4);
# ethtool switches off a veth's tx checksum offload, which AF_XDP cannot carry; DPDK's own
# AF_XDP PMD is the reference backend in the bench.
for p in busybox-static linux-image-amd64 iproute2 iputils-ping dpdk-dev librte-net-virtio23 \
         librte-net-vhost23 passt clang libclang-dev libelf-dev zlib1g-dev m4 pkg-config ethtool \
         librte-net-af-xdp23 systemd man-db groff-base libvirt-clients libxml2-utils tshark vde2; do
  pkg_installed "$p" || need+=("$p")
done

if [ ${#need[@]} -gt 0 ] || ! qemu_ok; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  if [ ${#need[@]} -gt 0 ]; then
    $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
  fi
  if ! qemu_ok; then
    $SUDO apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86
  fi
fi

# QEMU 7.2 (plain bookworm) beside 10.0, for the compatibility test: both cannot be installed,
# so its packages are unpacked into the work tree (tests/.work is git-ignored).
q72=tests/.work/qemu-7.2
if [ ! -x "$q72/usr/bin/qemu-system-x86_64" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -q qemu-system-x86/bookworm qemu-system-common/bookworm)
  mkdir -p "$q72"
  for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$q72"; done
  rm -rf "$tmp"
fi

# Python's qemu.qmp, the client QMP tooling is written against.
if ! python3 -c "import qemu.qmp" >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore qemu.qmp
fi
