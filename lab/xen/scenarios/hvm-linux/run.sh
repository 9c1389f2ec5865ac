# HVM Linux by direct kernel boot reaches a busybox shell over the emulated serial port
# timeout: 1000
# Checks: xl create passes -kernel/-initrd/-append to the DM; the kernel boots (fw_cfg loading,
# PCI, Xen platform device 5853:0001 emulated by the DM) to the init's marker on ttyS0 and a shell
# answers through the DM's UART in both directions (unix socket chardev); `poweroff -f` in the
# guest ends the domain with reason power-off (ACPI S5 through the DM's PIIX4 PM).
scenario() {
  guest_create hvm-linux
  local t0; t0=$(now)
  serial_shell hvm-linux
  metric shell_after_create_s "$(elapsed "$t0")"
  grep -a 'LAB-' "$OUT/com1.log" | tr -d '\r' > "$OUT/guest-markers.txt"
  grep -q 'LAB-PCI:.*5853:0x0001' "$OUT/guest-markers.txt" \
    || fail "the guest does not see the Xen platform PCI device 5853:0001: $(grep LAB-PCI "$OUT/guest-markers.txt")"
  # `poweroff -f` in the guest: ACPI S5 through the DM's PIIX4 PM; on_poweroff=destroy ends it.
  local t1; t1=$(now)
  DMPID=  # the device model is meant to end now (libxl ends it with the domain)
  printf 'poweroff -f\r' | timeout 15 socat -t 3 - "UNIX-CONNECT:$RUN/hvm-linux-com1.sock" > /dev/null 2>&1
  wait_until "the domain to end after 'poweroff -f' in the guest" 240 sh -c '! xl domid hvm-linux > /dev/null 2>&1'
  metric poweroff_s "$(elapsed "$t1")"
  grep -q 'shut down, reason code 0' /var/log/xen/xl-hvm-linux.log \
    || fail "the domain ended, but not by power-off: $(grep -a 'shut down' /var/log/xen/xl-hvm-linux.log | tail -1)"
  pass "shell answered on ttyS0 $(sed -n 's/^shell_after_create_s=//p' "$OUT/metrics")s after xl create; poweroff ended the domain in $(sed -n 's/^poweroff_s=//p' "$OUT/metrics")s; $(grep -a -o 'LAB-PCI:.*' "$OUT/guest-markers.txt")"
}
