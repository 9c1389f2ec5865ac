#!/bin/sh
# Builds and runs the ioreq fuzzer: DMCore and XenAccel compiled straight from Sources/ with
# coverage and AddressSanitizer, no SwiftPM. Usage: fuzz/ioreq/run.sh [seconds] [libFuzzer args...]
FUZZ=ioreq; DEFAULT_SECONDS=180; C_HEADERS=CXen; . "$(dirname "$0")/../dmcore.sh"
$SWIFTC $FLAGS $INC -module-name XenAccel -emit-module -emit-module-path "$OUT/XenAccel.swiftmodule" \
    -wmo -c "$ROOT"/Sources/XenAccel/*.swift -o "$OUT/XenAccel.o"
$SWIFTC $FLAGS $INC -module-name IoreqFuzz "$ROOT/fuzz/ioreq/IoreqFuzz.swift" \
    "$OUT/DMCore.o" "$OUT/XenAccel.o" "$OUT/clinux.o" -o "$OUT/ioreq-fuzz"
exec "$OUT/ioreq-fuzz" -max_total_time="$SECS" -max_len=4200 -print_final_stats=1 "$@" "$OUT/corpus"
