#!/bin/bash
# Builds passt with vhost-user support for the user_stack bench: Debian bookworm's passt package
# has none, trixie's source builds on bookworm with `make` alone. The source comes from Debian's
# archive (checked against the checksum trixie's Sources index gives) and is built under
# tests/.work/passt; nothing of it is committed. The bench finds it there (or through PASST).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.0~git20250503.587980c
SHA256=69d5eb843f7d648c2cc60bfbca6ea7b5014c6b6f07cdee362c2a8cf490515a49
DIR=tests/.work/passt
if [ -x "$DIR/passt" ] && "$DIR/passt" --help 2>&1 | grep -q -- --vhost-user; then
  echo "$DIR/passt"
  exit 0
fi
command -v make >/dev/null && command -v cc >/dev/null || apt-get install -y -q make gcc >/dev/null
mkdir -p "$DIR"
tarball="$DIR/passt_${VERSION}.orig.tar.xz"
curl -sSf -o "$tarball" "http://deb.debian.org/debian/pool/main/p/passt/passt_${VERSION}.orig.tar.xz"
echo "$SHA256  $tarball" | sha256sum -c --quiet
rm -rf "$DIR/src" && mkdir "$DIR/src"
tar -xf "$tarball" -C "$DIR/src" --strip-components=1
make -s -C "$DIR/src" passt >/dev/null
cp "$DIR/src/passt" "$DIR/passt"
echo "$DIR/passt"
