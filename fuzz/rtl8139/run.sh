#!/bin/sh
# Builds and runs the RTL8139 fuzzer: DMCore, the PCI function code, the NetBackend protocol and
# the NIC compiled straight from Sources/ with coverage and AddressSanitizer, no SwiftPM.
# Usage: fuzz/rtl8139/run.sh [seconds] [libFuzzer args...]
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/.build-fuzz-rtl8139}
SECS=${1:-120}
[ $# -gt 0 ] && shift
SWIFTC=${SWIFTC:-swiftc}
FLAGS="-sanitize=fuzzer,address -parse-as-library -O -g -swift-version 6"
INC="-I $ROOT/Sources/CLinux/include -I $OUT"
mkdir -p "$OUT" "$OUT/corpus" "$OUT/artifacts"
. "$ROOT/fuzz/dmcore.sh"
# The two Backends files the NIC needs, as their own module so `import Backends` resolves.
$SWIFTC $FLAGS $INC -module-name Backends -emit-module -emit-module-path "$OUT/Backends.swiftmodule" \
    -wmo -c "$ROOT/Sources/Backends/Net/NetBackend.swift" "$ROOT/Sources/Backends/Net/MACAddress.swift" \
    -o "$OUT/Backends.o"
$SWIFTC $FLAGS $INC -module-name RTL8139Fuzz "$ROOT/Sources/Devices/PCI/PCIConfigSpace.swift" \
    "$ROOT/Sources/Devices/PCI/PCIFunction.swift" "$ROOT/Sources/Devices/Net/RTL8139.swift" \
    "$ROOT/Sources/Devices/Net/EEPROM93C46.swift" "$ROOT/fuzz/rtl8139/FuzzRTL8139.swift" \
    "$OUT/Backends.o" "$OUT/DMCore.o" "$OUT/clinux.o" -o "$OUT/rtl8139-fuzz"
cd "$OUT/artifacts"
exec "$OUT/rtl8139-fuzz" -max_total_time="$SECS" -max_len=4096 -print_final_stats=1 "$@" "$OUT/corpus"
