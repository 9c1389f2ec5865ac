# Boot sector timing port-I/O round trips (ioreqs) through the device model
# timeout: 420
# The boot sector (payloads/ioreq-bench.S) brackets, in each of 5 rounds, 2000 PIT reads (exits Xen handles itself) and
# 500 x (out+in) on COM1's scratch register 0x3ff (1000 ioreqs to the DM) with marker lines on
# port 0xe9; Xen timestamps them (console_timestamps=boot). Checks: all markers present, every
# scratch-register read returned the value written (BENCH OK), HELLO on COM1.
# Metrics: ioreq_rt_us (median per-round µs per DM round trip), xen_exit_us (same for Xen-only exits).
scenario() {
  cp "$GUEST/ioreq-bench.img" "$WORK/ioreq-bench.img"
  guest_create ioreq-bench
  if ! wait_for 300 sh -c "xl dmesg | grep -q '(d$DOMID) .*BENCH DONE'"; then
    xl dmesg | grep "(d$DOMID)" | tail -5
    fail "benchmark did not finish within $(scaled 300)s (last markers: $(xl dmesg | grep "(d$DOMID)" | grep -o "BENCH.*" | tail -2 | tr "\n" " "))"
  fi
  xl dmesg | grep "(d$DOMID) .*BENCH" > "$OUT/bench-markers.txt"
  xl dmesg | grep -q "(d$DOMID) .*BENCH OK" || fail "COM1 scratch register returned wrong values (BENCH MISMATCH): the DM's UART is broken"
  python3 - "$OUT/bench-markers.txt" > "$OUT/bench.txt" <<'PY' || fail "cannot parse benchmark markers: $(cat "$OUT/bench.txt")"
import re, sys, statistics
conf, t = {}, {}
for line in open(sys.argv[1]):
    m = re.search(r'\[\s*([0-9.]+)\].*BENCH (.*)$', line.strip())
    if not m: continue
    ts, msg = float(m.group(1)), m.group(2)
    if msg.startswith('CONFIG'):
        conf = dict(kv.split('=') for kv in msg.split()[1:])
    r = re.match(r'R(\d) ([ABC])$', msg)
    if r: t[(int(r.group(1)), r.group(2))] = ts
n_xen, n_dm = int(conf['nxen']), int(conf['ndm']) * int(conf['dm_ios_per_iter'])
xen, dm = [], []
for r in range(1, int(conf['rounds']) + 1):
    xen.append((t[(r, 'B')] - t[(r, 'A')]) / n_xen * 1e6)
    dm.append((t[(r, 'C')] - t[(r, 'B')]) / n_dm * 1e6)
print('rounds %s: %d Xen-handled exits and %d DM round trips per round' % (conf['rounds'], n_xen, n_dm))
for i, (a, b) in enumerate(zip(xen, dm), 1):
    print('round %d: xen_exit %.1f us  ioreq_rt %.1f us' % (i, a, b))
print('xen_exit_us=%.1f' % statistics.median(xen))
print('ioreq_rt_us=%.1f' % statistics.median(dm))
PY
  cat "$OUT/bench.txt"
  metric ioreq_rt_us "$(sed -n 's/^ioreq_rt_us=//p' "$OUT/bench.txt")"
  metric xen_exit_us "$(sed -n 's/^xen_exit_us=//p' "$OUT/bench.txt")"
  wait_until "HELLO on COM1" 30 grep -q LAB-HELLO "$OUT/com1.log"
  step destroy 120 xl -vvv destroy ioreq-bench || fail "xl destroy failed: $(xl_errors destroy 2)"
  pass "$(sed -n 's/^ioreq_rt_us=/ioreq round trip /p' "$OUT/bench.txt") us through the DM; $(sed -n 's/^xen_exit_us=/Xen-only exit /p' "$OUT/bench.txt") us"
}
