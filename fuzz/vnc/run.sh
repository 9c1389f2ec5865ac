#!/bin/sh
# Builds and runs the VNC client-input fuzzer: DMCore, Config and the Display sources compiled
# straight from Sources/ with coverage and AddressSanitizer, no SwiftPM.
# Usage: fuzz/vnc/run.sh [seconds] [libFuzzer args...]
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/.build-fuzz-vnc}
SECS=${1:-120}
[ $# -gt 0 ] && shift
SWIFTC=${SWIFTC:-swiftc}
FLAGS="-sanitize=fuzzer,address -parse-as-library -O -g -swift-version 6"
INC="-I $ROOT/Sources/CLinux/include -I $OUT"
mkdir -p "$OUT" "$OUT/corpus" "$OUT/artifacts"
. "$ROOT/fuzz/dmcore.sh"
$SWIFTC $FLAGS -module-name Config -emit-module -emit-module-path "$OUT/Config.swiftmodule" \
    -wmo -c "$ROOT"/Sources/Config/*.swift -o "$OUT/Config.o"
$SWIFTC $FLAGS $INC -module-name VNCFuzz "$ROOT"/Sources/Display/*.swift "$ROOT/fuzz/vnc/FuzzVNC.swift" \
    "$OUT/DMCore.o" "$OUT/Config.o" "$OUT/clinux.o" -o "$OUT/vnc-fuzz"
# Seeds: a 3.8 login with None and with VNC auth, then a pixel format, encodings (Hextile or ZRLE,
# DesktopSize, QEMU keys), update requests, keys, pointer, cut text and a QEMU key event.
python3 - "$OUT/corpus" <<'PY'
import struct, sys, os
d = sys.argv[1]
msgs = (bytes([0, 0, 0, 0, 16, 16, 1, 1]) + struct.pack(">HHH", 31, 63, 31) + bytes([11, 5, 0, 0, 0, 0])
        + struct.pack(">BBH", 2, 0, 4) + struct.pack(">iiii", 5, 0, -223, -258)
        + struct.pack(">BBHHHH", 3, 0, 0, 0, 40, 30) + struct.pack(">BBHI", 4, 1, 0, 0x61)
        + struct.pack(">BBHH", 5, 9, 10, 10) + struct.pack(">BBBBI", 6, 0, 0, 0, 3) + b"abc"
        + struct.pack(">BBHII", 255, 0, 1, 0x61, 0x1e) + struct.pack(">BBHHHH", 3, 1, 0, 0, 40, 30))
open(os.path.join(d, "none"), "wb").write(bytes([0]) + b"RFB 003.008\n" + bytes([1, 1]) + msgs)
open(os.path.join(d, "auth"), "wb").write(bytes([1]) + b"RFB 003.003\n" + bytes(16) + bytes([1]) + msgs)
open(os.path.join(d, "v37"), "wb").write(bytes([8]) + b"RFB 003.007\n" + bytes([1, 0]) + msgs)
zrle = msgs.replace(struct.pack(">iiii", 5, 0, -223, -258), struct.pack(">iiii", 16, 0, -223, -258))
open(os.path.join(d, "zrle"), "wb").write(bytes([4]) + b"RFB 003.008\n" + bytes([1, 1]) + zrle)
PY
cd "$OUT/artifacts"
exec "$OUT/vnc-fuzz" -max_total_time="$SECS" -max_len=4096 -print_final_stats=1 "$@" "$OUT/corpus"
