# HVM Linux on the DM's emulated NIC: a DHCP lease and pings through a dom0 bridge
# timeout: 1000
# Checks: libxl's `-netdev type=tap,ifname=vifD.0-emu,br=labbr0,script=no` + `-device rtl8139`
# reach the DM, which opens the tap; libxl's hotplug script bridges it; the guest's driver binds
# the NIC (8139too for SwiftDM's RTL8139C, 8139cp for QEMU's C+), reads the MAC libxl chose, gets
# a lease from busybox udhcpd on the bridge and pings dom0; destroy leaves no tap behind.
scenario_cleanup() {
  [ -n "${UDHCPD_PID:-}" ] && kill "$UDHCPD_PID" 2> /dev/null
  ip link del labbr0 2> /dev/null
  return 0
}

scenario() {
  ip link add labbr0 type bridge 2> /dev/null
  ip addr add 10.77.0.1/24 dev labbr0 2> /dev/null
  ip link set labbr0 up || fail "cannot create the bridge labbr0"
  printf 'start 10.77.0.100\nend 10.77.0.150\ninterface labbr0\nlease_file %s\noption subnet 255.255.255.0\n' \
    "$WORK/udhcpd.leases" > "$WORK/udhcpd.conf"
  : > "$WORK/udhcpd.leases"
  busybox udhcpd -f "$WORK/udhcpd.conf" > "$OUT/udhcpd.log" 2>&1 &
  UDHCPD_PID=$!
  guest_create hvm-net
  local t0; t0=$(now)
  ip link show "vif$DOMID.0-emu" > "$OUT/tap.txt" 2>&1 || fail "no tap vif$DOMID.0-emu in dom0 after xl create"
  grep -q "master labbr0" "$OUT/tap.txt" || fail "the tap is not on the bridge: $(head -1 "$OUT/tap.txt")"
  serial_shell hvm-net
  metric shell_after_create_s "$(elapsed "$t0")"
  grep -a 'LAB-' "$OUT/com1.log" | tr -d '\r' > "$OUT/guest-markers.txt"
  grep -q 'LAB-PCI:.*0x10ec:0x8139' "$OUT/guest-markers.txt" \
    || fail "the guest sees no RTL8139: $(grep LAB-PCI "$OUT/guest-markers.txt")"
  grep -q 'LAB-NET-DRIVER: 8139.* mac=00:16:3e:5a:00:01' "$OUT/guest-markers.txt" \
    || fail "no driver bound the NIC with libxl's MAC: $(grep LAB-NET-DRIVER "$OUT/guest-markers.txt")"
  grep -q 'LAB-NET-LEASE: 10\.77\.0\.' "$OUT/guest-markers.txt" \
    || fail "no DHCP lease: $(grep LAB-NET-LEASE "$OUT/guest-markers.txt")"
  grep -q 'LAB-NET-PING: ok' "$OUT/guest-markers.txt" \
    || fail "the guest could not ping dom0: $(grep LAB-NET-PING "$OUT/guest-markers.txt")"
  guest_live hvm-net
  step destroy 120 xl -vvv destroy hvm-net || fail "xl destroy failed: $(xl_errors destroy 2)"
  ip link show "vif$DOMID.0-emu" > /dev/null 2>&1 && fail "the tap vif$DOMID.0-emu outlived the domain"
  pass "$(grep -a -o 'LAB-NET-DRIVER: [^ ]*' "$OUT/guest-markers.txt"), $(grep -a -o 'LAB-NET-LEASE: [0-9.]*' "$OUT/guest-markers.txt"), ping ok; shell $(sed -n 's/^shell_after_create_s=//p' "$OUT/metrics") s after create"
}
