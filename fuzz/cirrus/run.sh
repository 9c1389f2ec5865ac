#!/bin/sh
# Builds and runs the Cirrus BitBLT fuzzer: DMCore and the blitter compiled straight from
# Sources/ with coverage and AddressSanitizer, no SwiftPM.
# Usage: fuzz/cirrus/run.sh [seconds] [libFuzzer args...]
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/.build-fuzz-cirrus}
SECS=${1:-120}
[ $# -gt 0 ] && shift
SWIFTC=${SWIFTC:-swiftc}
FLAGS="-sanitize=fuzzer,address -parse-as-library -O -g -swift-version 6"
INC="-I $ROOT/Sources/CLinux/include -I $OUT"
mkdir -p "$OUT" "$OUT/corpus" "$OUT/artifacts"
. "$ROOT/fuzz/dmcore.sh"
$SWIFTC $FLAGS $INC -module-name CirrusFuzz "$ROOT/Sources/Devices/Display/CirrusBlitter.swift" \
    "$ROOT/fuzz/cirrus/FuzzCirrusBlitter.swift" "$OUT/DMCore.o" "$OUT/clinux.o" -o "$OUT/cirrus-fuzz"
python3 "$ROOT/fuzz/cirrus/seeds.py" "$OUT/corpus"
cd "$OUT/artifacts"
exec "$OUT/cirrus-fuzz" -max_total_time="$SECS" -max_len=4096 -print_final_stats=1 "$@" "$OUT/corpus"
