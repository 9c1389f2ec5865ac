# std VGA: VGA BIOS text mode, Bochs VBE linear framebuffer in relocated VRAM, screendump and VNC
# timeout: 600
# Checks: the payload's text line is on the text screen (screendump through `xl
# qemu-monitor-command`) and a real VNC client (vncsnapshot) sees the same picture on the port
# libxl recorded from query-vnc; the 1024x768x32 colour bars drawn through the linear framebuffer
# appear (3 MiB of stores: quick only when the VRAM frames were relocated to the BAR, which the
# physmap keys in xenstore must record), and so does the box drawn afterwards (the display follows
# changes of guest-mapped VRAM); `xl list` shows the guest running; destroy succeeds.
source "$LAB/dom0/pictures.sh"
PICTURE_DOMAIN=hvm-vga

scenario() {
  cp "$GUEST/vga.img" "$WORK/vga.img"
  guest_create hvm-vga
  vnc_display
  text_screen
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
