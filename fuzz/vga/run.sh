#!/bin/sh
# Builds and runs the standard VGA fuzzer: DMCore, the PCI function files and the Display
# devices compiled straight from Sources/ with coverage and AddressSanitizer, no SwiftPM.
# Usage: fuzz/vga/run.sh [seconds] [libFuzzer args...]
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/.build-fuzz-vga}
SECS=${1:-120}
[ $# -gt 0 ] && shift
SWIFTC=${SWIFTC:-swiftc}
FLAGS="-sanitize=fuzzer,address -parse-as-library -O -g -swift-version 6"
INC="-I $ROOT/Sources/CLinux/include -I $OUT"
mkdir -p "$OUT" "$OUT/corpus" "$OUT/artifacts"
. "$ROOT/fuzz/dmcore.sh"
$SWIFTC $FLAGS $INC -module-name VGAFuzz "$ROOT"/Sources/Devices/Display/*.swift \
    "$ROOT/Sources/Devices/PCI/PCIFunction.swift" "$ROOT/Sources/Devices/PCI/PCIConfigSpace.swift" \
    "$ROOT/Sources/Devices/PCI/PCIBus.swift" "$ROOT/fuzz/vga/FuzzVGA.swift" \
    "$OUT/DMCore.o" "$OUT/clinux.o" -o "$OUT/vga-fuzz"
# Seeds: mode 3 text with a character, a DISPI 32 bpp mode set, a planar write-mode walk.
printf '\000\022\147\000\000\024\004\002\000\025\002\000\004\000\200\101\004\001\200\007\010\000\000\000' > "$OUT/corpus/text"
printf '\002\001\000\000\003\100\001\000\002\003\000\000\003\040\000\000\002\004\000\000\003\101\000\000\007\001\000\377\010\000\000\000' > "$OUT/corpus/dispi"
printf '\000\024\004\000\000\025\006\000\000\036\005\000\000\037\003\000\004\020\000\377\005\020\000\000\010\000\000\000' > "$OUT/corpus/planar"
cd "$OUT/artifacts"
exec "$OUT/vga-fuzz" -max_total_time="$SECS" -max_len=4096 -print_final_stats=1 "$@" "$OUT/corpus"
