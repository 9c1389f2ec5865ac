#!/bin/sh
# Checks that the VGA's per-access and per-frame paths allocate nothing: builds DMCore, the
# PCI function files and the Display devices with -O, and runs fuzz/vga/AllocCheck.swift with
# the malloc-counting interposer (fuzz/ioreq/alloccount.c) preloaded. Exit status 0: none.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/.build-vga-alloc}
SWIFTC=${SWIFTC:-swiftc}
INC="-I $ROOT/Sources/CLinux/include -I $OUT"
mkdir -p "$OUT"
clang -c -O1 -I "$ROOT/Sources/CLinux/include" "$ROOT/Sources/CLinux/clinux.c" -o "$OUT/clinux.o"
$SWIFTC -O -parse-as-library -swift-version 6 $INC -module-name DMCore -emit-module \
    -emit-module-path "$OUT/DMCore.swiftmodule" -wmo -c "$ROOT"/Sources/DMCore/*.swift -o "$OUT/DMCore.o"
$SWIFTC -O -parse-as-library -swift-version 6 $INC -module-name VGAAllocCheck "$ROOT"/Sources/Devices/Display/*.swift \
    "$ROOT/Sources/Devices/PCI/PCIFunction.swift" "$ROOT/Sources/Devices/PCI/PCIConfigSpace.swift" \
    "$ROOT/Sources/Devices/PCI/PCIBus.swift" "$ROOT/fuzz/vga/AllocCheck.swift" \
    "$OUT/DMCore.o" "$OUT/clinux.o" -o "$OUT/vga-alloc-check"
cc -O2 -shared -fPIC "$ROOT/fuzz/ioreq/alloccount.c" -o "$OUT/alloccount.so"
LD_PRELOAD="$OUT/alloccount.so" "$OUT/vga-alloc-check"
