#!/bin/sh
# Installs what building, running and testing SwiftDM needs on Debian 12 (run as root, or
# with sudo available). Safe to re-run; skips apt when everything is already there.
set -eu
packages="seabios qemu-system-data gcc make binutils libc6-dev libstdc++-12-dev qemu-utils zlib1g-dev python3 python3-pip xorriso grub-pc-bin mtools fdisk python3-venv dnsmasq-base iproute2 ipxe-qemu vncsnapshot"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
fi
command -v swift >/dev/null || { echo "setup: the Swift 6 toolchain is not on PATH (see swift.org/install)" >&2; exit 1; }

# The QMP tests drive swiftdm with QEMU's own Python client (qemu.qmp) and the VNC tests use
# vncdotool (and its PIL), kept in a venv inside the repository (.build-venv, git-ignored) so
# the system Python is left alone.
root=$(cd "$(dirname "$0")/.." && pwd)
if ! "$root/.build-venv/bin/python3" -c "import qemu.qmp, vncdotool" 2>/dev/null; then
    /usr/bin/python3 -m venv "$root/.build-venv"
    "$root/.build-venv/bin/pip" install -q qemu.qmp vncdotool
fi
