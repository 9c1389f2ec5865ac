# Pictures of a guest's display for the display scenarios (sourced by their run.sh; set
# PICTURE_DOMAIN first and call vnc_display once the guest exists): the DM's screendump and a real VNC client's snapshot,
# checked by ppm-check.py and compared with each other.
shot() {  # shot NAME: the DM's screendump as $OUT/NAME.ppm
  timeout 60 xl qemu-monitor-command "$PICTURE_DOMAIN" "screendump $OUT/$1.ppm" > "$OUT/screendump-$1.log" 2>&1 && [ -s "$OUT/$1.ppm" ]
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
vnc_display() {  # DISPLAY_NO from the VNC port libxl recorded from the DM's query-vnc
  local port; port=$(xenstore-read /local/domain/$DOMID/console/vnc-port 2>/dev/null) \
    || fail "no /local/domain/$DOMID/console/vnc-port: libxl did not get a VNC port from query-vnc"
  DISPLAY_NO=$((port - 5900))
}
text_screen() {  # text_screen: the payload's text line on COM1, then its picture
  local t0; t0=$(now)
  wait_until "the payload's text line (LAB-VGA-TEXT on COM1)" 240 grep -q LAB-VGA-TEXT "$OUT/com1.log"
  metric text_after_create_s "$(elapsed "$t0")"
}
