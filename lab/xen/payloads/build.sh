#!/bin/bash
# Build the guest payloads into OUTDIR (run on the host; needs binutils, cpio, gzip).
#   hello.img, ticker.img, ioreq-bench.img, fpu-spin.img, vga.img  1 MiB raw disks whose first
#   sectors are the program (the MBR, which loads any further sectors itself)
#   vmlinuz, initramfs.cpio.gz              Debian kernel (from the dom0 rootfs) + busybox initramfs
# usage: build.sh OUTDIR ROOTFS
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUTDIR ROOTFS}; rootfs=${2:?usage: build.sh OUTDIR ROOTFS}
mkdir -p "$out"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for s in hello ticker ioreq-bench fpu-spin vga; do
  as --32 -o "$tmp/$s.o" "$here/$s.S"
  ld -m elf_i386 -Ttext=0x7c00 --oformat binary -e _start -o "$tmp/$s.bin" "$tmp/$s.o"
  size=$(stat -c %s "$tmp/$s.bin")
  [ $((size % 512)) = 0 ] && [ "$size" -le 4096 ] || { echo "$s.bin is $size bytes, not whole sectors (at most 8)" >&2; exit 1; }
  cp "$tmp/$s.bin" "$out/$s.img"; truncate -s 1M "$out/$s.img"
done
kver=$(ls "$rootfs/lib/modules" | sort -V | tail -1)
cp "$rootfs/boot/vmlinuz-$kver" "$out/vmlinuz"
r=$tmp/initramfs
mkdir -p "$r/bin" "$r/proc" "$r/sys" "$r/dev" "$r/lib"
cp "$rootfs/usr/bin/busybox" "$r/bin/busybox"
install -m 755 "$here/guest-init" "$r/init"
# PV block frontend (a module in Debian's kernel; hvc_xen, xen-fbfront, xen-kbdfront are built in)
: > "$r/lib/lab-modules"
for mod in xen-blkfront; do
  chroot "$rootfs" modprobe --show-depends -S "$kver" "$mod" | awk '$1=="insmod"{print $2}' | while read -r ko; do
    mkdir -p "$r$(dirname "$ko")"; cp "$rootfs$ko" "$r$ko"; echo "$ko" >> "$r/lib/lab-modules"
  done
done
# emulated NICs for hvm-net: 8139too (SwiftDM's RTL8139, rev 0x10) and 8139cp (QEMU's, rev 0x20)
: > "$r/lib/net-modules"
for mod in 8139too 8139cp; do
  chroot "$rootfs" modprobe --show-depends -S "$kver" "$mod" | awk '$1=="insmod"{print $2}' | while read -r ko; do
    [ -e "$r$ko" ] && continue
    mkdir -p "$r$(dirname "$ko")"; cp "$rootfs$ko" "$r$ko"; echo "$ko" >> "$r/lib/net-modules"
  done
done
(cd "$r" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9) > "$out/initramfs.cpio.gz"
echo "kernel $kver" > "$out/VERSION"
ls -la "$out"
