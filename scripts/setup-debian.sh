#!/bin/sh
# Installs what building, running and testing SwiftDM needs on Debian 12 (run as root, or
# with sudo available). Safe to re-run; skips apt when everything is already there.
set -eu
packages="seabios gcc make binutils libc6-dev qemu-utils zlib1g-dev python3 python3-pip xorriso grub-pc-bin mtools fdisk"
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
