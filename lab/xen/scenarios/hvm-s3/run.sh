# HVM Linux suspends to RAM (ACPI S3 through the DM) and the toolstack wakes it
# timeout: 1500
# Checks: `echo mem > /sys/power/state` in the guest reaches the DM's PIIX4 PM (SLP_TYP 1, hvmloader's
# _S3); the DM records the shutdown status for SeaBIOS and sets HVM_PARAM_ACPI_S_STATE, Xen pauses
# the domain, and the DM reports the VM suspended; `xl trigger hvm-s3 s3resume` wakes it, SeaBIOS
# jumps to the kernel's waking vector and the shell answers on ttyS0 again.
scenario() {
  guest_create hvm-s3
  local sock=$RUN/hvm-s3-com1.sock
  serial_shell hvm-s3
  local t0; t0=$(now)
  printf 'echo mem > /sys/power/state\r' | timeout 15 socat -t 3 - "UNIX-CONNECT:$sock" > /dev/null 2>&1
  wait_until "the device model to report the guest suspended" 300 \
    sh -c "xl qemu-monitor-command hvm-s3 'info status' | grep -q suspended"
  metric suspend_s "$(elapsed "$t0")"
  xl list hvm-s3 > "$OUT/xl-list-suspended.txt" 2>&1
  local t1; t1=$(now)
  step trigger 60 xl trigger hvm-s3 s3resume || fail "xl trigger s3resume failed: $(tail -1 "$OUT/step-trigger.log")"
  step serial-resume 600 python3 "$LAB/dom0/lab-expect.py" --unix "$sock" --log "$OUT/com1-resume.log" \
      --timeout $(scaled 300) --probe 'echo LAB-AWAKE=$((6*7))' --want LAB-AWAKE=42 \
    || fail "the guest did not answer on ttyS0 after s3resume: $(tail -1 "$OUT/step-serial-resume.log")"
  metric resume_s "$(elapsed "$t1")"
  step destroy 120 xl destroy hvm-s3 || fail "xl destroy failed"
  pass "slept (DM reported suspended after $(sed -n 's/^suspend_s=//p' "$OUT/metrics")s) and answered on ttyS0 $(sed -n 's/^resume_s=//p' "$OUT/metrics")s after xl trigger s3resume"
}
