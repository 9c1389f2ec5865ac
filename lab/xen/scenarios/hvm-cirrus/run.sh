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
  vnc_display
  text_screen
  wait_until "the payload's PCI scan (LAB-VGA-NODEV on COM1)" 60 grep -q LAB-VGA-NODEV "$OUT/com1.log"
  picture text text
  guest_live hvm-cirrus
  step destroy 120 xl -vvv destroy hvm-cirrus || fail "xl destroy failed: $(xl_errors destroy 2)"
  pass "cirrus-vga text on screendump and VNC :$DISPLAY_NO ($(sed -n 's/^text_after_create_s=//p' "$OUT/metrics") s after create)"
}
