#!/bin/bash
# Turn a dom0 rootfs directory (from rootfs.sh) into the bootable lab image directory:
#   DEST/xen          Xen 4.17 hypervisor, uncompressed (QEMU's multiboot -kernel wants the ELF)
#   DEST/vmlinuz      dom0 kernel (Debian's), DEST/initrd.img its initramfs (initramfs-tools, small)
#   DEST/dom0.img     ext4 root filesystem (sparse, no loop device needed: mkfs.ext4 -d),
#                     with the lab's PID 1 (/sbin/lab-init) added
# usage: mkimage.sh ROOTFS DEST SIZE
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
rootfs=${1:?}; dest=${2:?}; size=${3:-4G}
kver=$(ls "$rootfs/lib/modules" | sort -V | tail -1)
mkdir -p "$dest"
zcat "$rootfs"/boot/xen-4.17-amd64.gz > "$dest/xen"
cp "$rootfs/boot/vmlinuz-$kver" "$dest/vmlinuz"
cp "$rootfs/boot/initrd.img-$kver" "$dest/initrd.img"
# stage = hard-linked copy of the rootfs (cheap) + the overlay; files of the overlay are replaced,
# never modified in place, so the cached rootfs stays pristine
stage=$dest/.stage
rm -rf --one-file-system "$stage"
cp -al "$rootfs" "$stage"
rm -f "$stage/sbin/lab-init"
install -m 755 "$here/dom0/lab-init" "$stage/sbin/lab-init"
mkfs.ext4 -q -F -L swiftdm-lab-dom0 -d "$stage" "$dest/dom0.img" "$size"
rm -rf --one-file-system "$stage"
echo "kernel $kver" > "$dest/VERSION"
ls -la "$dest"
