# libxl's default VGA (cirrus-vga, vgabios-cirrus): the VGA BIOS text screen over screendump and VNC
# timeout: 600
# The hvm-vga payload without its std VGA: it prints its line through the VGA BIOS (LAB-VGA-TEXT),
# finds no 1234:1111 (LAB-VGA-NODEV) and halts. Checks: the text is on the screendump and a real
# VNC client (vncsnapshot) sees the same picture; the guest runs; destroy succeeds.
source "$LAB/dom0/pictures.sh"
PICTURE_DOMAIN=hvm-cirrus

scenario() {
  cp "$GUEST/vga.img" "$WORK/vga.img"
  guest_create hvm-cirrus
  local t0; t0=$(now)
  local port; port=$(xenstore-read /local/domain/$DOMID/console/vnc-port 2>/dev/null) \
    || fail "no /local/domain/$DOMID/console/vnc-port: libxl did not get a VNC port from query-vnc"
  DISPLAY_NO=$((port - 5900))
  wait_until "the payload's text line (LAB-VGA-TEXT on COM1)" 240 grep -q LAB-VGA-TEXT "$OUT/com1.log"
  metric text_after_create_s "$(elapsed "$t0")"
  wait_until "the payload's PCI scan (LAB-VGA-NODEV on COM1)" 60 grep -q LAB-VGA-NODEV "$OUT/com1.log"
  picture text text
  guest_live hvm-cirrus
  step destroy 120 xl -vvv destroy hvm-cirrus || fail "xl destroy failed: $(xl_errors destroy 2)"
  pass "cirrus-vga text on screendump and VNC :$DISPLAY_NO ($(sed -n 's/^text_after_create_s=//p' "$OUT/metrics") s after create)"
}
