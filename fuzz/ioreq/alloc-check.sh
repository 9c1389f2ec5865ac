#!/bin/sh
# Counts heap allocations on the ioreq hot path: builds the malloc-counting interposer and runs
# XenAccelTests' testHotPathAllocatesNothing with it preloaded.
# Usage: fuzz/ioreq/alloc-check.sh <path to the XenAccel test bundle (.xctest)>
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/.build-fuzz-ioreq}
mkdir -p "$OUT"
cc -O2 -shared -fPIC "$ROOT/fuzz/ioreq/alloccount.c" -o "$OUT/alloccount.so"
LD_PRELOAD="$OUT/alloccount.so" "$1" XenAccelTests.IoreqServerTests/testHotPathAllocatesNothing
