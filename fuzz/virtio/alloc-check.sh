#!/bin/sh
# Counts heap allocations on virtio-blk's request path (doorbell to used ring, worker included):
# builds the malloc-counting interposer of fuzz/ioreq and runs DevicesTests'
# VirtioBlkTests/testHotPathAllocatesNothing with it preloaded.
# Usage: fuzz/virtio/alloc-check.sh <path to the test bundle (.build/debug/SwiftDMPackageTests.xctest)>
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/.build-fuzz-virtio}
mkdir -p "$OUT"
cc -O2 -shared -fPIC "$ROOT/fuzz/ioreq/alloccount.c" -o "$OUT/alloccount.so"
LD_PRELOAD="$OUT/alloccount.so" "$1" DevicesTests.VirtioBlkTests/testHotPathAllocatesNothing
