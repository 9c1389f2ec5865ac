#!/bin/sh
# Build every guest and run each under a VMM; print one line per guest.
#   guests/run-all.sh                 # QEMU (qemu-system-x86_64 -enable-kvm)
#   VMM=/path/to/swiftdm guests/run-all.sh   # same arguments minus -enable-kvm
# Exit status 0 when every guest printed "PASS NAME" and exited with status 1.
here=$(cd "$(dirname "$0")" && pwd)
make -s -C "$here" || exit 2
fail=0
for g in ports mmio pci irq-pic irq-ioapic fwcfg hostile; do
    extra=""
    [ "$g" = mmio ] && extra="-device pci-testdev"
    if [ -n "${VMM:-}" ]; then
        set -- "$VMM"
    else
        set -- "${QEMU:-qemu-system-x86_64}" -enable-kvm
    fi
    out=$(timeout "${GUEST_TIMEOUT:-60}" "$@" -M pc -m 64 -nodefaults -nographic -serial stdio \
          -bios "$here/build/$g.bin" -device isa-debug-exit,iobase=0xf4,iosize=0x04 $extra \
          </dev/null 2>&1)
    rc=$?
    last=$(printf '%s\n' "$out" | tr -d '\r' | grep -a -E "^(PASS|FAIL) $g" | tail -n 1)
    # ports also emits a line with `rep outsb`; the guest cannot see its own output
    if [ "$g" = ports ] && ! printf '%s\n' "$out" | grep -a -q "ports: rep outsb to 0x3f8 ok"; then
        last="$last (rep outsb line missing)"; rc=99
    fi
    if [ "$rc" -eq 1 ] && [ "$last" = "PASS $g" ]; then
        echo "ok   $g"
    else
        echo "FAIL $g (exit $rc) ${last:-no verdict line}"
        printf '%s\n' "$out" | tail -n 5 | sed 's/^/     | /'
        fail=1
    fi
done
exit $fail
