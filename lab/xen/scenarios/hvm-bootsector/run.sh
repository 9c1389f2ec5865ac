# HVM boot sector on an IDE disk prints over the DM's emulated COM1
# timeout: 360
# Checks: xl create succeeds (the DM starts and reports "running"), SeaBIOS boots the IDE disk,
# the boot sector's line arrives through the DM's 16550 UART in the serial file, and `xl list`
# still shows the domain running.
scenario() {
  cp "$GUEST/hello.img" "$WORK/hello.img"
  guest_create hvm-bootsector
  local t0; t0=$(now)
  if ! wait_for 240 grep -q LAB-HELLO "$OUT/com1.log"; then
    if xl dmesg | grep -q "(d$DOMID) .*LAB-HELLO"; then
      fail "the boot sector ran (its line reached Xen's port 0xe9) but nothing arrived on the emulated COM1 ($OUT/com1.log)"
    fi
    fail "no output from the boot sector after $(scaled 240)s, neither on COM1 nor on port 0xe9: the guest did not boot the IDE disk"
  fi
  metric hello_after_create_s "$(elapsed "$t0")"
  guest_live hvm-bootsector
  step destroy 120 xl -vvv destroy hvm-bootsector || fail "xl destroy failed: $(xl_errors destroy 2)"
  pass "COM1: $(grep -a LAB-HELLO "$OUT/com1.log" | tr -d '\r' | head -1); xl list state $GUEST_STATE"
}
