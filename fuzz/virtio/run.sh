#!/bin/sh
# Builds and runs the virtqueue + virtio-blk parser fuzzer: DMCore and the two Devices files
# compiled straight from Sources/ with coverage and AddressSanitizer, no SwiftPM.
# Usage: fuzz/virtio/run.sh [seconds] [libFuzzer args...]
FUZZ=virtio; DEFAULT_SECONDS=120; . "$(dirname "$0")/../dmcore.sh"
$SWIFTC $FLAGS $INC -module-name VirtioFuzz "$ROOT/Sources/Devices/Virtio/Virtqueue.swift" \
    "$ROOT/Sources/Devices/Virtio/VirtioBlkRequest.swift" "$ROOT/fuzz/virtio/FuzzVirtio.swift" \
    "$OUT/DMCore.o" "$OUT/clinux.o" -o "$OUT/virtio-fuzz"
python3 "$ROOT/fuzz/virtio/seeds.py" "$OUT/corpus"
cd "$OUT/artifacts"
exec "$OUT/virtio-fuzz" -max_total_time="$SECS" -max_len=8192 -print_final_stats=1 "$@" "$OUT/corpus"
