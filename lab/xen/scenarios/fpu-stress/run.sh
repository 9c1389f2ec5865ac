# dom0 programs compute right while an HVM guest keeps the FPU busy (the lab's FPU switching)
# timeout: 600
# Checks: with an HVM guest looping on SSE and x87 instructions, two dom0 loops hash the same files
# (coreutils sha256sum, python3 hashlib + zlib) for 240 s; every result must equal the one
# computed before the guest started, no program may die of a signal, and neither loop may hang.
# Under TCG with Xen's lazy FPU switching this failed within minutes (lab/xen/README.md).
STRESS_FILES="/usr/lib/x86_64-linux-gnu/libc.so.6 /usr/bin/bash /usr/lib/xen-4.17/bin/xl"
STRESS_PY='import hashlib, zlib; d = bytes(range(256)) * 4096; print(hashlib.sha1(zlib.compress(d)).hexdigest(), sorted({str(i * 7 % 1000) for i in range(20000)})[:3])'
stress_round() {  # one round's results on one line; status: the worst of its programs'
  local a b c worst=0 rc
  # shellcheck disable=SC2086
  a=$(set -o pipefail; cat $STRESS_FILES | sha256sum); rc=$?; [ $rc -gt $worst ] && worst=$rc
  b=$(python3 -c "$STRESS_PY"); rc=$?; [ $rc -gt $worst ] && worst=$rc
  c=$(set -o pipefail; ls /usr/bin | sort | grep -c .); rc=$?; [ $rc -gt $worst ] && worst=$rc
  echo "$a $b $c"
  return $worst
}
stress_loop() {  # stress_loop SECONDS: rounds until time is up, against $STRESS_REF; prints "rounds wrong died"
  local end=$(( EPOCHSECONDS + $1 )) rounds=0 wrong=0 died=0 got
  while [ "$EPOCHSECONDS" -lt "$end" ]; do
    got=$(stress_round 2>&1); [ $? -gt 128 ] && died=$((died + 1))
    if [ "$got" != "$STRESS_REF" ]; then wrong=$((wrong + 1)); echo "wrong: $got" >&2; fi
    rounds=$((rounds + 1))
  done
  echo "$rounds $wrong $died"
}
scenario() {
  STRESS_REF=$(stress_round) || fail "reference round failed before the guest started: $STRESS_REF"
  echo "$STRESS_REF" > "$OUT/reference.txt"
  cp "$GUEST/fpu-spin.img" "$WORK/fpu-spin.img"
  guest_create fpu-stress
  sleep 10   # past hvmloader and SeaBIOS, into the boot sector's loop
  local faults0; faults0=$(dmesg | grep -c -E 'segfault|traps:|general protection')
  export -f stress_round stress_loop; export STRESS_FILES STRESS_PY STRESS_REF
  local t=240
  timeout -k 5 $((t + 120)) bash -c "stress_loop $t" > "$OUT/loop1.txt" 2> "$OUT/loop1.err" &
  local p1=$!
  timeout -k 5 $((t + 120)) bash -c "stress_loop $t" > "$OUT/loop2.txt" 2> "$OUT/loop2.err" &
  local p2=$!
  wait $p1; local rc1=$?; wait $p2; local rc2=$?
  guest_live fpu-stress
  local guest_s=$GUEST_CPU_S
  step destroy 120 xl -vvv destroy fpu-stress || fail "xl destroy failed: $(xl_errors destroy 2)"
  [ $rc1 = 0 ] && [ $rc2 = 0 ] || fail "a dom0 loop hung (timeout rc $rc1/$rc2): $(head -c 300 "$OUT/loop1.err" "$OUT/loop2.err" | tr '\n' ' ')"
  local r1 w1 d1 r2 w2 d2
  read -r r1 w1 d1 < "$OUT/loop1.txt"; read -r r2 w2 d2 < "$OUT/loop2.txt"
  local faults=$(( $(dmesg | grep -c -E 'segfault|traps:|general protection') - faults0 ))
  metric rounds $((r1 + r2)); metric wrong_results $((w1 + w2)); metric died $((d1 + d2))
  metric kernel_faults "$faults"; metric guest_cpu_s "${guest_s:-?}"
  [ $((w1 + w2 + d1 + d2 + faults)) = 0 ] \
    || fail "dom0 programs went wrong while the guest used the FPU: $((w1 + w2)) wrong results, $((d1 + d2)) killed by signals, $faults kernel-reported faults ($(head -c 200 "$OUT/loop1.err" "$OUT/loop2.err" | tr '\n' ' '))"
  [ $((r1 + r2)) -gt 0 ] || fail "no round completed"
  pass "$((r1 + r2)) rounds, all right, none died; the guest used ${guest_s:-?} s of CPU meanwhile"
}
