# Sourced by the fuzz targets built on DMCore, from their run.sh, with that script's arguments
# still in "$@":
#   FUZZ=vga; DEFAULT_SECONDS=120; . "$(dirname "$0")/../dmcore.sh"
# Sets ROOT, OUT (.build-fuzz-$FUZZ unless OUT is set), SECS (the first argument, shifted off),
# SWIFTC, FLAGS (swiftc flags) and INC (include flags: CLinux's headers, $OUT, and those of the C
# modules named in C_HEADERS); makes $OUT/corpus and
# $OUT/artifacts; compiles CLinux's C and the DMCore module from Sources/ with coverage and
# AddressSanitizer into $OUT/clinux.o and $OUT/DMCore.o.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/.build-fuzz-$FUZZ}
SECS=${1:-$DEFAULT_SECONDS}
[ $# -gt 0 ] && shift
SWIFTC=${SWIFTC:-swiftc}
FLAGS="-sanitize=fuzzer,address -parse-as-library -O -g -swift-version 6"
INC="-I $ROOT/Sources/CLinux/include -I $OUT"
for module in ${C_HEADERS:-}; do INC="$INC -I $ROOT/Sources/$module/include"; done
mkdir -p "$OUT" "$OUT/corpus" "$OUT/artifacts"
clang -c -O1 -g -fsanitize=fuzzer-no-link,address -I "$ROOT/Sources/CLinux/include" \
    "$ROOT/Sources/CLinux/clinux.c" -o "$OUT/clinux.o"
$SWIFTC $FLAGS $INC -module-name DMCore -emit-module -emit-module-path "$OUT/DMCore.swiftmodule" \
    -wmo -c "$ROOT"/Sources/DMCore/*.swift -o "$OUT/DMCore.o"
