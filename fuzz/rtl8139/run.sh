#!/bin/sh
# Builds and runs the RTL8139 fuzzer: DMCore, the PCI function code, the NetBackend protocol and
# the NIC compiled straight from Sources/ with coverage and AddressSanitizer, no SwiftPM.
# Usage: fuzz/rtl8139/run.sh [seconds] [libFuzzer args...]
FUZZ=rtl8139; DEFAULT_SECONDS=120; . "$(dirname "$0")/../dmcore.sh"
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
