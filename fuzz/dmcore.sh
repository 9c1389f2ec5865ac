# Sourced by the fuzz targets built on DMCore (ioreq, virtio): compiles CLinux's C and the
# DMCore module from Sources/ with coverage and AddressSanitizer into $OUT.
# Expects ROOT, OUT, SWIFTC, FLAGS (swiftc flags) and INC (include flags) to be set.
clang -c -O1 -g -fsanitize=fuzzer-no-link,address -I "$ROOT/Sources/CLinux/include" \
    "$ROOT/Sources/CLinux/clinux.c" -o "$OUT/clinux.o"
$SWIFTC $FLAGS $INC -module-name DMCore -emit-module -emit-module-path "$OUT/DMCore.swiftmodule" \
    -wmo -c "$ROOT"/Sources/DMCore/*.swift -o "$OUT/DMCore.o"
