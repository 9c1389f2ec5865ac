# std VGA: VGA BIOS text mode, Bochs VBE linear framebuffer in relocated VRAM, screendump and VNC
# timeout: 600
# Checks: the payload's text line is on the text screen (screendump through `xl
# qemu-monitor-command`) and a real VNC client (vncsnapshot) sees the same picture on the port
# libxl recorded from query-vnc; the 1024x768x32 colour bars drawn through the linear framebuffer
# appear (3 MiB of stores: quick only when the VRAM frames were relocated to the BAR, which the
# physmap keys in xenstore must record), and so does the box drawn afterwards (the display follows
# changes of guest-mapped VRAM); `xl list` shows the guest running; destroy succeeds.
shot() {  # shot NAME: the DM's screendump as $OUT/NAME.ppm
  timeout 60 xl qemu-monitor-command hvm-vga "screendump $OUT/$1.ppm" > "$OUT/screendump-$1.log" 2>&1 && [ -s "$OUT/$1.ppm" ]
}
vnc_shot() {  # vnc_shot DISPLAY NAME: a real VNC client's picture as $OUT/NAME.ppm
  timeout 60 vncsnapshot -quiet -quality 100 -allowblank "127.0.0.1:$1" "$OUT/$2.jpg" > "$OUT/vnc-$2.log" 2>&1 \
    && djpeg -pnm "$OUT/$2.jpg" > "$OUT/$2.ppm"
}
check() {  # check WHAT ARGS...: ppm-check.py, its verdict kept in $OUT/check-WHAT.txt
  local what=$1; shift
  python3 "$LAB/dom0/ppm-check.py" "$@" > "$OUT/check-$what.txt" 2>&1 || fail "$what: $(head -c 300 "$OUT/check-$what.txt")"
}
picture() {  # picture NAME CHECK...: screendump and VNC snapshot, both checked, and compared
  shot "$1" || fail "screendump ($1) failed: $(head -c 200 "$OUT/screendump-$1.log")"
  check "$1" "$2" "$OUT/$1.ppm" "${@:3}"
  vnc_shot "$DISPLAY_NO" "vnc-$1" || fail "vncsnapshot ($1) of display :$DISPLAY_NO failed: $(tail -c 300 "$OUT/vnc-vnc-$1.log")"
  check "vnc-$1" same "$OUT/$1.ppm" "$OUT/vnc-$1.ppm"
}

scenario() {
  cp "$GUEST/vga.img" "$WORK/vga.img"
  guest_create hvm-vga
  local t0; t0=$(now)
  local port; port=$(xenstore-read /local/domain/$DOMID/console/vnc-port 2>/dev/null) \
    || fail "no /local/domain/$DOMID/console/vnc-port: libxl did not get a VNC port from query-vnc"
  DISPLAY_NO=$((port - 5900))
  wait_until "the payload's text line (LAB-VGA-TEXT on COM1)" 240 grep -q LAB-VGA-TEXT "$OUT/com1.log"
  metric text_after_create_s "$(elapsed "$t0")"
  picture text text
  local t1; t1=$(now)
  wait_until "the linear framebuffer filled (LAB-VGA-LFB on COM1)" 240 grep -q LAB-VGA-LFB "$OUT/com1.log"
  metric lfb_after_text_s "$(elapsed "$t1")"
  local bar; bar=$(grep -a -o 'LAB-VGA-LFB [0-9a-f]*' "$OUT/com1.log" | head -1 | awk '{print $2}')
  # physmap records (QEMU's XEN_COMPAT_PHYSMAP; qemu-xen built for Xen >= 4.10 writes none)
  local physmap=/local/domain/0/device-model/$DOMID/physmap entry found= start note
  xenstore-ls -f "$physmap" > "$OUT/physmap.txt" 2>&1
  for entry in $(xenstore-list "$physmap" 2>/dev/null); do
    start=$(xenstore-read "$physmap/$entry/start_addr" 2>/dev/null)
    [ -n "$start" ] && [ $((16#$start)) = $((16#$bar)) ] && found=$entry
  done
  if [ -n "$found" ]; then
    note="physmap: VRAM ($(xenstore-read "$physmap/$found/name" 2>/dev/null)) at 0x$bar"
  elif [ "$(basename "$DM_REAL")" = swiftdm ]; then
    fail "no physmap record puts the VRAM at the BAR (0x$bar): $(tr '\n' ' ' < "$OUT/physmap.txt")"
  else
    note="no physmap records (this DM keeps none)"
  fi
  picture lfb bars
  wait_until "the box drawn (LAB-VGA-BOX on COM1)" 120 grep -q LAB-VGA-BOX "$OUT/com1.log"
  picture box bars box
  guest_live hvm-vga
  step destroy 120 xl -vvv destroy hvm-vga || fail "xl destroy failed: $(xl_errors destroy 2)"
  pass "text, 1024x768 bars and box on screendump and VNC :$DISPLAY_NO; BAR0 0x$bar, $note; lfb $(sed -n 's/^lfb_after_text_s=//p' "$OUT/metrics") s"
}
