#!/bin/sh
# Builds and runs the whole-device cirrus-vga fuzzer: DMCore, the PCI function code and the
# display devices compiled straight from Sources/ with coverage and AddressSanitizer.
# Usage: fuzz/cirrus-vga/run.sh [seconds] [libFuzzer args...]
FUZZ=cirrus-vga; DEFAULT_SECONDS=120; . "$(dirname "$0")/../dmcore.sh"
$SWIFTC $FLAGS $INC -module-name CirrusVGAFuzz "$ROOT"/Sources/Devices/PCI/*.swift "$ROOT"/Sources/Devices/Display/*.swift \
    "$ROOT/fuzz/cirrus-vga/FuzzCirrusVGA.swift" "$ROOT/fuzz/LibFuzzerEntry.swift" "$OUT/DMCore.o" "$OUT/clinux.o" -o "$OUT/cirrus-vga-fuzz"
cd "$OUT/artifacts"
exec "$OUT/cirrus-vga-fuzz" -max_total_time="$SECS" -max_len=2048 -print_final_stats=1 "$@" "$OUT/corpus"
