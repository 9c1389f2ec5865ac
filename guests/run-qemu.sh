#!/bin/sh
# Run one test guest under QEMU/KVM, exactly as swiftdm will be run (swiftdm
# takes the same arguments minus -enable-kvm). Exit status: 1 = PASS,
# >= 3 = FAIL (isa-debug-exit: (code << 1) | 1), 124 = timed out.
#   usage: guests/run-qemu.sh NAME [extra qemu args...]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
name=${1:?usage: run-qemu.sh NAME [extra qemu args]}
shift
make -s -C "$here" "build/$name.bin" >&2
extra=""
[ "$name" = mmio ] && extra="-device pci-testdev"
exec timeout "${GUEST_TIMEOUT:-60}" "${QEMU:-qemu-system-x86_64}" -enable-kvm \
    -M pc -m 64 -nodefaults -nographic -serial stdio \
    -bios "$here/build/$name.bin" \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 $extra "$@"
