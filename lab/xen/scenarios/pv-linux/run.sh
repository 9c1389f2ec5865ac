# PV Linux with qdisk disk + vfb + vkb (xenpv device model) reaches its shell on the PV console
# timeout: 480
# Checks: xl create starts the DM (-machine xenpv); the guest's init runs and reads the disk
# signature through blkfront <-> the DM's qdisk backend; the qdisk, vfb and vkbd backends reach
# XenbusStateConnected (4); a shell answers on the PV console (xl console); destroy is clean.
console_log=/var/log/xen/console/guest-pv-linux.log
scenario() {
  local sig="LABDISK=$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"
  truncate -s 64M "$WORK/pv-disk.img"
  printf '%s' "$sig" | dd of="$WORK/pv-disk.img" conv=notrunc status=none
  guest_create pv-linux
  wait_until "the guest init (LAB-GUEST-READY on the PV console)" 300 grep -q LAB-GUEST-READY "$console_log"
  grep -a 'LAB-' "$console_log" | tr -d '\r' > "$OUT/guest-markers.txt"
  grep -q "LAB-DISK: $sig" "$OUT/guest-markers.txt" \
    || fail "guest could not read its qdisk disk (expected '$sig', got '$(grep -a LAB-DISK "$OUT/guest-markers.txt")')"
  local b s bad=
  for b in qdisk/$DOMID/51712 vfb/$DOMID/0 vkbd/$DOMID/0; do
    s=$(xenstore-read /local/domain/0/backend/$b/state 2>/dev/null)
    echo "backend/$b/state=$s" >> "$OUT/backend-states.txt"
    [ "$s" = 4 ] || bad="$bad backend/$b/state=${s:-missing}"
  done
  [ -z "$bad" ] || fail "PV backends served by the DM not connected:$bad"
  step console 120 python3 "$LAB/dom0/lab-expect.py" --cmd "xl console pv-linux" --log "$OUT/console-session.log" \
      --timeout $(scaled 90) --probe 'echo LAB-SUM=$((6*7))' --want LAB-SUM=42 \
    || fail "no shell answered on the PV console: $(tail -1 "$OUT/step-console.log")"
  local d=$DOMID dm=$DMPID
  step destroy 120 xl -vvv destroy pv-linux || fail "xl destroy failed: $(xl_errors destroy 2)"
  DMPID=; wait_for 15 sh -c "! kill -0 $dm"; sleep 1
  local left; left=$(leftovers "$d" "$dm"); echo "$left" > "$OUT/leftovers.txt"
  [ -z "$left" ] || fail "destroy left things behind: $(echo "$left" | head -5 | tr '\n' ';')"
  pass "qdisk read ok, qdisk/vfb/vkbd connected, shell on hvc0 answered"
}
