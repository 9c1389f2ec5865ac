#!/bin/sh
# Counts heap allocations on a hot path: builds the malloc-counting interposer and runs a
# testHotPathAllocatesNothing with it preloaded (by default XenAccelTests' for the ioreq path;
# DevicesTests.VirtioBlkTests/testHotPathAllocatesNothing for virtio-blk's request path).
# Usage: fuzz/ioreq/alloc-check.sh <path to the test bundle (.xctest)> [test]
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/.build-fuzz-ioreq}
mkdir -p "$OUT"
cc -O2 -shared -fPIC "$ROOT/fuzz/ioreq/alloccount.c" -o "$OUT/alloccount.so"
LD_PRELOAD="$OUT/alloccount.so" "$1" "${2:-XenAccelTests.IoreqServerTests/testHotPathAllocatesNothing}"
