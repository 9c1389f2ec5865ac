#!/bin/sh
# Builds the qcow2 libFuzzer target and runs it for N seconds (default 60) on a seed corpus
# made with the real qemu-img. Usage: fuzz/qcow2/run.sh [seconds] [extra libFuzzer flags...]
# Needs: swiftc with -sanitize=fuzzer (Swift for Linux ships libFuzzer), qemu-img, qemu-io.
set -eu
seconds=${1:-60}
[ $# -gt 0 ] && shift
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="$repo/.build-fuzz-qcow2"
swiftc=${SWIFTC:-$(command -v swiftc || echo /opt/swift/usr/bin/swiftc)}
mkdir -p "$out/corpus" "$out/artifacts"

# The block layer's synchronous core has no DMCore dependency, so it compiles on its own; the
# EventLoop/GuestMemory glue (Async/) is left out.
echo "building $out/fuzz-qcow2"
"$swiftc" -sanitize=fuzzer,address -parse-as-library -O -g -module-name Qcow2Fuzz \
    "$repo"/Sources/Backends/Block/*.swift "$here/FuzzQcow2.swift" -o "$out/fuzz-qcow2"

if [ -z "$(ls -A "$out/corpus")" ]; then
    command -v qemu-img >/dev/null || { echo "qemu-img missing (apt-get install -y qemu-utils)"; exit 1; }
    echo "making seed corpus with $(qemu-img --version | head -1)"
    seeds=$(mktemp -d)
    i=0
    for opts in compat=1.1,cluster_size=512 compat=0.10,cluster_size=512 compat=1.1,cluster_size=1024 \
                compat=1.1,cluster_size=4096,refcount_bits=1 compat=1.1,cluster_size=512,lazy_refcounts=on \
                compat=1.1,cluster_size=2048,refcount_bits=64 compat=0.10,cluster_size=4096; do
        i=$((i + 1))
        f="$seeds/s$i.qcow2"
        qemu-img create -q -f qcow2 -o "$opts" "$f" 256k
        qemu-io -f qcow2 -c "write -P 0x11 0 3k" -c "write -z 8k 4k" -c "write -P 0x22 100k 1k" \
            -c "discard 0 1k" "$f" >/dev/null
        cp "$f" "$out/corpus/"
    done
    head -c 65536 /dev/urandom > "$seeds/noise.raw"
    qemu-img convert -c -f raw -O qcow2 -o cluster_size=4096 "$seeds/noise.raw" "$out/corpus/compressed.qcow2"
    yes swiftdm | head -c 65536 > "$seeds/text.raw"
    qemu-img convert -c -f raw -O qcow2 -o cluster_size=2048 "$seeds/text.raw" "$out/corpus/compressed-text.qcow2"
    qemu-img create -q -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 -u "$out/corpus/backing.qcow2" 64k
    qemu-img create -q -f qcow2 -o cluster_size=512 "$out/corpus/snap.qcow2" 64k
    qemu-io -f qcow2 -c "write -P 3 0 2k" "$out/corpus/snap.qcow2" >/dev/null
    qemu-img snapshot -c first "$out/corpus/snap.qcow2"
    rm -rf "$seeds"
fi
ls "$out/corpus" | wc -l | sed 's/^/seeds: /'

cd "$out/artifacts"
exec "$out/fuzz-qcow2" "$out/corpus" -max_total_time="$seconds" -max_len=16384 -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 "$@"
