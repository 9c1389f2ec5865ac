#!/bin/bash
# Build the dom0 root filesystem (Debian 12 bookworm, debootstrap) into directory $1.
# Everything the lab needs comes from Debian packages installed *inside* this rootfs:
# Xen hypervisor, xl/libxl, oxenstored, qemu-system-xen, SeaBIOS, the Linux kernel + modules
# (used both for dom0 and for the Linux guests) and busybox-static (guest initramfs).
# Nothing is installed on the host except debootstrap & co (see `lab image`).
# usage: rootfs.sh DESTDIR        (run as root; takes a few minutes)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:?usage: rootfs.sh DESTDIR}
suite=bookworm
# Use the Debian mirror this machine already uses (deb822 or classic format), else deb.debian.org.
mirror=${LAB_MIRROR:-$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
mirror=${mirror:-$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
mirror=${mirror:-http://deb.debian.org/debian}
secmirror=${LAB_SECURITY_MIRROR:-$(awk '/^URIs:/ && $2 ~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
secmirror=${secmirror:-http://deb.debian.org/debian-security}

log() { echo "[rootfs $(date +%T)] $*"; }
mounted=()
cleanup() { for ((i=${#mounted[@]}-1; i>=0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done; }
trap cleanup EXIT

log "debootstrap $suite from $mirror into $dest"
for attempt in 1 2 3; do   # the mirror sometimes fails a download; start over (debootstrap cannot resume)
  debootstrap --variant=minbase "$suite" "$dest" "$mirror" && break
  [ $attempt = 3 ] && { log "debootstrap failed 3 times"; exit 1; }
  log "debootstrap failed (attempt $attempt); retrying in 15 s"
  awk -v d="$(readlink -f "$dest")/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
  rm -rf --one-file-system "$dest"; sleep 15
done
cat > "$dest/etc/apt/sources.list" <<EOS
deb $mirror $suite main
deb $mirror $suite-updates main
deb $secmirror $suite-security main
EOS
for m in proc sys dev dev/pts; do mount --bind "/$m" "$dest/$m"; mounted+=("$dest/$m"); done
# never start services inside the chroot
printf '#!/bin/sh\nexit 101\n' > "$dest/usr/sbin/policy-rc.d"; chmod +x "$dest/usr/sbin/policy-rc.d"
inchroot() { chroot "$dest" env DEBIAN_FRONTEND=noninteractive LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
inchroot apt-get update -q || { sleep 15; inchroot apt-get update -q; }
# initramfs-tools first, configured for a small dom0 initrd: only what mounts root=/dev/vda (virtio, ext4)
inchroot apt-get install -y -q --no-install-recommends initramfs-tools zstd
mkdir -p "$dest/etc/initramfs-tools/conf.d"
echo "MODULES=list" > "$dest/etc/initramfs-tools/conf.d/lab.conf"
echo "COMPRESS=zstd" >> "$dest/etc/initramfs-tools/conf.d/lab.conf"
printf '%s\n' virtio_pci virtio_blk ext4 >> "$dest/etc/initramfs-tools/modules"
mapfile -t pkgs < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$here/packages.txt")
log "apt-get install ${pkgs[*]}"
inchroot apt-get install -y -q --no-install-recommends "${pkgs[@]}"
inchroot apt-get clean
rm -f "$dest/usr/sbin/policy-rc.d"

# oxenstored: full access log (reads, watches, transactions) so scenarios can capture what the DM does
conf="$dest/etc/xen/oxenstored.conf"
sed -i '/^access-log/d' "$conf"
cat >> "$conf" <<EOC
access-log-file = /var/log/xen/xenstored-access.log
access-log-read-ops = true
access-log-special-ops = true
access-log-transactions-ops = true
access-log-nb-lines = 10000000
access-log-nb-chars = 4096
EOC
# xenconsoled: log every guest console (PV console of PV guests, hvc0 of HVM guests)
echo 'XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"' >> "$dest/etc/default/xen"
echo swiftdm-lab-dom0 > "$dest/etc/hostname"
inchroot passwd -d root >/dev/null
ls "$dest"/boot
log "done: $(du -shx "$dest" | cut -f1)"
