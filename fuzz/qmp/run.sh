#!/bin/sh
# Builds the QMP JSON libFuzzer target (splitter + parser, compiled straight from
# Sources/Monitor with coverage and AddressSanitizer, no SwiftPM) and runs it for N seconds
# (default 180) on a seed corpus of the commands libxl sends.
# Usage: fuzz/qmp/run.sh [seconds] [libFuzzer args...]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${OUT:-$repo/.build-fuzz-qmp}
seconds=${1:-180}
[ $# -gt 0 ] && shift
swiftc=${SWIFTC:-$(command -v swiftc || echo /opt/swift/usr/bin/swiftc)}
mkdir -p "$out/corpus" "$out/artifacts"
echo "building $out/fuzz-qmp"
"$swiftc" -sanitize=fuzzer,address -parse-as-library -O -g -swift-version 6 -module-name QMPFuzz \
    "$repo/Sources/Monitor/JSONValue.swift" "$repo/Sources/Monitor/JSONParser.swift" \
    "$repo/Sources/Monitor/QMPMessageSplitter.swift" "$here/FuzzQMP.swift" -o "$out/fuzz-qmp"
if [ -z "$(ls -A "$out/corpus")" ]; then
    # Seeds: every message libxl sent in the Xen lab captures, one per file.
    i=0
    for log in "$repo"/tests/qmp/captures/*.log; do
        grep -E '^\{' "$log" | while IFS= read -r line; do
            i=$((i + 1))
            printf '%s\r\n' "$line" > "$out/corpus/$(basename "$log" .log)-$i"
        done
    done
    printf '{"execute":"qmp_capabilities","id":[1,{"a":"\\u00e9\\ud83d\\ude00"}]}\r\n{"execute":"x"}' > "$out/corpus/two"
    printf "{'execute': 'query-status', 'id': -1.5e3}" > "$out/corpus/single-quoted"
fi
cd "$out/artifacts"
exec "$out/fuzz-qmp" -max_total_time="$seconds" -max_len=8192 -print_final_stats=1 "$@" "$out/corpus"
