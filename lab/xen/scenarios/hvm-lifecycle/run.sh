# HVM lifecycle: monitor command, cd-eject/insert, save + restore, destroy without leftovers
# timeout: 600
# Every operation below makes libxl talk to the device model (QMP, fd passing, -incoming, SIGHUP).
# Checks: each xl command succeeds; the DM's view of the cdrom follows eject/insert; the guest's
# tick counter continues after restore (RAM + vCPU + timers + the new DM's UART); destroy leaves
# no DM process, QMP socket or xenstore node behind (for the original and the restored domain).
last_tick() { grep -a -o 'LAB-TICK [0-9A-F]*' "$OUT/$1" 2>/dev/null | tail -1 | awk '{print $2}'; }
ticks_past() { local v; v=$(last_tick "$1"); [ -n "$v" ] && [ $((16#$v)) -gt "$2" ]; }
info_block() { timeout 60 xl qemu-monitor-command hvm-lifecycle "info block" > "$OUT/info-block-$1.txt" 2>&1; }

scenario() {
  cp "$GUEST/ticker.img" "$WORK/ticker.img"
  for i in 1 2; do { echo "LAB-CD$i"; head -c 1048576 /dev/zero; } | head -c 1048576 > "$WORK/cd$i.iso"; done
  guest_create hvm-lifecycle
  local d1=$DOMID dm1=$DMPID
  wait_until "the guest ticking on COM1" 240 ticks_past com1.log 1

  step monitor 60 xl qemu-monitor-command hvm-lifecycle "info version" || fail "xl qemu-monitor-command failed: $(xl_errors monitor 2)"
  grep -qE '[0-9]+\.[0-9]+' "$OUT/step-monitor.log" || fail "'info version' through xl qemu-monitor-command returned no version: $(head -c 200 "$OUT/step-monitor.log")"
  info_block 0 || fail "xl qemu-monitor-command 'info block' failed"

  step cd-eject 60 xl -vvv cd-eject hvm-lifecycle hdc || fail "xl cd-eject failed: $(xl_errors cd-eject 2)"
  info_block 1 || fail "'info block' after eject failed"
  grep -q 'not inserted' "$OUT/info-block-1.txt" || fail "after cd-eject the DM still reports a medium: $(head -3 "$OUT/info-block-1.txt" | tr '\n' ' ')"

  step cd-insert 60 xl -vvv cd-insert hvm-lifecycle hdc "$WORK/cd2.iso" || fail "xl cd-insert failed: $(xl_errors cd-insert 2)"
  info_block 2 || fail "'info block' after insert failed"
  grep -q 'not inserted' "$OUT/info-block-2.txt" && fail "after cd-insert the DM reports no medium: $(head -3 "$OUT/info-block-2.txt" | tr '\n' ' ')"
  [ "$(xenstore-read /local/domain/0/backend/qdisk/$d1/5632/params 2>/dev/null)" = "$WORK/cd2.iso" ] \
    || log "note: backend/qdisk/$d1/5632/params = '$(xenstore-read /local/domain/0/backend/qdisk/$d1/5632/params 2>&1)'"

  local before; before=$(last_tick com1.log); before=$((16#${before:-0}))
  metric ticks_before_save "$before"
  step save 300 xl -vvv save hvm-lifecycle "$WORK/hvm-lifecycle.save" || fail "xl save failed: $(xl_errors save 3)"
  [ -s "$WORK/hvm-lifecycle.save" ] || fail "xl save wrote no image"
  metric save_image_mb "$(( $(stat -c %s "$WORK/hvm-lifecycle.save") / 1048576 ))"
  DMPID=; wait_for 20 sh -c "! kill -0 $dm1" 2>/dev/null || fail "device model pid $dm1 still running after xl save"
  cp "$OUT/com1.log" "$OUT/com1-before-save.log"

  step restore 300 xl -vvv restore "$WORK/hvm-lifecycle.save" || fail "xl restore failed: $(xl_errors restore 3)"
  guest_attach hvm-lifecycle
  local d2=$DOMID dm2=$DMPID
  wait_until "the tick counter to continue after restore (last before save: $before)" 120 ticks_past com1.log "$before"
  local after; after=$(last_tick com1.log); after=$((16#${after:-0}))
  [ "$after" -gt "$before" ] || fail "could not read the tick counter after restore (read: $after)"
  metric ticks_after_restore "$after"

  step destroy 120 xl -vvv destroy hvm-lifecycle || fail "xl destroy failed: $(xl_errors destroy 2)"
  DMPID=; local left; wait_for 15 sh -c "! kill -0 $dm2"
  sleep 1
  left=$( { leftovers "$d1" "$dm1"; leftovers "$d2" "$dm2"; } )
  echo "$left" > "$OUT/leftovers.txt"
  [ -z "$left" ] || fail "destroy left things behind: $(echo "$left" | head -5 | tr '\n' ';')"
  pass "monitor, cd-eject/insert, save ($(sed -n 's/^save_image_mb=//p' "$OUT/metrics") MB) + restore (ticks $before -> $after), destroy clean"
}
