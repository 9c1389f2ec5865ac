#!/bin/sh
# Builds and runs the Cirrus BitBLT fuzzer: DMCore and the blitter compiled straight from
# Sources/ with coverage and AddressSanitizer, no SwiftPM.
# Usage: fuzz/cirrus/run.sh [seconds] [libFuzzer args...]
FUZZ=cirrus; DEFAULT_SECONDS=120; . "$(dirname "$0")/../dmcore.sh"
$SWIFTC $FLAGS $INC -module-name CirrusFuzz "$ROOT/Sources/Devices/Display/CirrusBlitter.swift" \
    "$ROOT/fuzz/cirrus/FuzzCirrusBlitter.swift" "$ROOT/fuzz/LibFuzzerEntry.swift" "$OUT/DMCore.o" "$OUT/clinux.o" -o "$OUT/cirrus-fuzz"
python3 "$ROOT/fuzz/cirrus/seeds.py" "$OUT/corpus"
cd "$OUT/artifacts"
exec "$OUT/cirrus-fuzz" -max_total_time="$SECS" -max_len=4096 -print_final_stats=1 "$@" "$OUT/corpus"
