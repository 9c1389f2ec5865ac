#!/bin/sh
# Builds and runs the virtqueue + virtio-blk parser fuzzer: DMCore and the two Devices files
# compiled straight from Sources/ with coverage and AddressSanitizer, no SwiftPM.
# Usage: fuzz/virtio/run.sh [seconds] [libFuzzer args...]
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/.build-fuzz-virtio}
SECS=${1:-120}
[ $# -gt 0 ] && shift
SWIFTC=${SWIFTC:-swiftc}
FLAGS="-sanitize=fuzzer,address -parse-as-library -O -g -swift-version 6"
INC="-I $ROOT/Sources/CLinux/include -I $OUT"
mkdir -p "$OUT" "$OUT/corpus" "$OUT/artifacts"
. "$ROOT/fuzz/dmcore.sh"
$SWIFTC $FLAGS $INC -module-name VirtioFuzz "$ROOT/Sources/Devices/Virtio/Virtqueue.swift" \
    "$ROOT/Sources/Devices/Virtio/VirtioBlkRequest.swift" "$ROOT/fuzz/virtio/FuzzVirtio.swift" \
    "$OUT/DMCore.o" "$OUT/clinux.o" -o "$OUT/virtio-fuzz"
python3 "$ROOT/fuzz/virtio/seeds.py" "$OUT/corpus"
cd "$OUT/artifacts"
exec "$OUT/virtio-fuzz" -max_total_time="$SECS" -max_len=8192 -print_final_stats=1 "$@" "$OUT/corpus"
