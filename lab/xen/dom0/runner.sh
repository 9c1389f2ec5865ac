#!/bin/bash
# Runs one scenario inside dom0 (started by the host's `lab run` through the job queue).
# usage: runner.sh SCENARIO OUTDIR DM CAPTURE [TIME_SCALE]
#   DM       path of the device model inside dom0 (a /share/dm/... file is copied to local disk first)
#   CAPTURE  1: device_model_override -> dm-capture (argv/env/fds logger + QMP proxy) -> DM
#            0: device_model_override -> DM directly
#   TIME_SCALE every time limit in the scenario (wait_for, step, scaled) is multiplied by it
# Writes OUTDIR/verdict ("PASS ..." or "FAIL ..."), OUTDIR/steps.tsv (timed steps), OUTDIR/metrics
# (key=value), OUTDIR/report.txt (on failure: the reason plus the device model's log) and copies
# every log of the run into OUTDIR. Each scenario is scenarios/NAME/run.sh defining `scenario`.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
SCENARIO=$1 OUT=$2 DM_SPEC=$3 CAPTURE=${4:-1} SCALE=${5:-1}
LAB=/opt/lab                     # lab tools + scenarios (copied from /share/lab by the job)
GUEST=/var/lib/lab/guest         # guest payloads (copied from /share/payloads)
WORK=/var/lib/lab/work           # per-scenario scratch (disks, ISOs, save files)
RUN=/run/lab
SDIR=$LAB/scenarios/$SCENARIO
DMPID= DOMID=
# Clocks from bash itself (EPOCHREALTIME, printf %()T): every process dom0 starts is a chance to
# meet its userspace crashes under TCG (a `date` here once spun for an hour; lab/xen/RESULTS.md),
# and the runner used to start one per log line and per poll.
now() { local t=${EPOCHREALTIME/[.,]/}; echo $(( t / 1000 )); }   # milliseconds, integer (dom0's awk is mawk)
T0=$(now)
log() { local t=${EPOCHREALTIME#*[.,]}; printf '[%(%T)T.%s] %s\n' -1 "${t:0:3}" "$*"; }
elapsed() { local d=$(( $(now) - $1 )); printf '%d.%d' $((d / 1000)) $((d % 1000 / 100)); }

verdict() {  # verdict PASS|FAIL MESSAGE...   (first verdict wins)
  [ -s "$OUT/verdict" ] && return 0
  local v=$1; shift
  echo "$v $*" > "$OUT/verdict"
  log "$v: $*"
}
pass() { verdict PASS "$@"; exit 0; }
fail() { verdict FAIL "$@"; exit 1; }
metric() { echo "$1=$2" >> "$OUT/metrics"; log "metric $1=$2"; }

scaled() { echo $(( $1 * SCALE )); }

dm_alive() { [ -z "$DMPID" ] || kill -0 "$DMPID" 2>/dev/null; }

# wait_for SECONDS CMD...: poll CMD every 0.5 s; 0 when it succeeds, 1 on timeout.
# Fails the scenario at once if the device model of the current guest dies meanwhile.
wait_for() {
  local t; t=$(scaled "$1"); shift
  local end=$(( EPOCHSECONDS + t ))
  while :; do
    "$@" 2>/dev/null && return 0
    if ! dm_alive; then
      "$@" 2>/dev/null && return 0
      fail "device model (pid $DMPID) of domain $DOMID died while waiting for: $*"
    fi
    [ "$EPOCHSECONDS" -ge "$end" ] && return 1
    sleep 0.5
  done
}
wait_until() {  # wait_until DESCRIPTION SECONDS CMD...
  local what=$1 t=$2; shift 2
  wait_for "$t" "$@" || fail "timeout ($(scaled "$t")s) waiting for $what"
}

# step NAME SECONDS CMD...: run CMD with a time limit, output to OUT/step-NAME.log, timing to steps.tsv
step() {
  local name=$1 t; t=$(scaled "$2"); shift 2
  local s=$(now) rc
  log "step $name: $*"
  timeout -k 5 "$t" "$@" > "$OUT/step-$name.log" 2>&1
  rc=$?
  [ $rc = 124 ] && echo "lab: step timed out after ${t}s" >> "$OUT/step-$name.log"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(elapsed "$s")" >> "$OUT/steps.tsv"
  log "step $name: rc=$rc in $(elapsed "$s")s"
  return $rc
}

# first libxl/xl error lines of a step log (for one-line failure reasons)
xl_errors() { grep -E 'libxl: error|^xl: |error:|failed' "$OUT/step-$1.log" 2>/dev/null | grep -v -E 'libxl: debug|detail:' | head -${2:-4} | cut -c1-300; }

# guest_cpus: the physical CPUs guests may use. When Xen pins dom0's vCPUs (dom0_vcpus_pin: vCPU i
# on pCPU i, the lab's LAB_DOM0_CPUS), guests get the others, so that no pCPU switches between a
# guest and dom0 (under TCG that switch corrupted dom0's FPU state; lab/xen/README.md). Empty: any.
guest_cpus() {
  local info n d
  info=$(timeout 20 xl info 2>/dev/null)
  case " $(sed -n 's/^xen_commandline *: //p' <<< "$info") " in *" dom0_vcpus_pin "*) ;; *) return 0 ;; esac
  n=$(sed -n 's/^nr_cpus *: //p' <<< "$info")
  d=$(nproc)
  [ -n "$n" ] && [ "$d" -lt "$n" ] && echo "$d-$((n - 1))"
  return 0
}
render() {  # render TEMPLATE > OUTPUT: fill in @DM@ @OUT@ @GUEST@ @WORK@ @RUN@, pin to guest_cpus
  sed -e "s#@DM@#$RUN/dm#g" -e "s#@OUT@#$OUT#g" -e "s#@GUEST@#$GUEST#g" -e "s#@WORK@#$WORK#g" -e "s#@RUN@#$RUN#g" "$1"
  local cpus; cpus=$(guest_cpus)
  [ -z "$cpus" ] || echo "cpus = \"$cpus\""
}

# guest_create NAME [CFG]: xl create with the scenario's config; sets DOMID and DMPID.
guest_create() {
  local name=$1 cfg=${2:-guest.cfg}
  render "$SDIR/$cfg" > "$OUT/$name.cfg"
  local rc=0
  step create 300 xl -vvv create "$OUT/$name.cfg" || rc=$?
  if [ $rc != 0 ]; then
    local why; why=$(grep -E -m1 'device model: spawn failed|device model did not start|Device Model died' "$OUT/step-create.log" | cut -c1-200)
    [ -n "$why" ] && fail "device model did not start (xl create rc=$rc): $why"
    fail "xl create failed (rc=$rc): $(xl_errors create 3 | tr '\n' ' ')"
  fi
  guest_attach "$name"
  dm_metrics
}
# dm_metrics: the device model's resident memory once the guest runs, and the time from libxl
# recording its pid (right after the fork) to its `state = running` (both stamped by oxenstored).
dm_metrics() {
  local rss ms
  rss=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$DMPID/status" 2>/dev/null)
  [ -n "$rss" ] && metric dm_rss_kb "$rss"
  # where that memory is: resident kB per mapping (binary, each library, heap, stacks, anonymous)
  timeout 20 awk '/^[0-9a-f]+-[0-9a-f]+ / { m = ($6 == "") ? "[anonymous]" : $6 }
                  $1 == "Rss:" { r[m] += $2 } END { for (m in r) if (r[m]) print r[m], m }' \
    "/proc/$DMPID/smaps" 2>/dev/null | sort -rn > "$OUT/logs/dm-rss-by-mapping.txt"
  # bounded: dom0 programs have been seen spinning under TCG (lab/xen/RESULTS.md)
  ms=$(timeout 20 tail -n +"$((ACCESS_MARK + 1))" /var/log/xen/xenstored-access.log 2>/dev/null | timeout 20 awk -v d="$DOMID" '
    function t(s,  a) { split(substr(s, 11, 12), a, ":"); return (a[1] * 3600 + a[2] * 60 + a[3]) * 1000 }
    $3 == "write" && $4 == "/local/domain/" d "/image/device-model-pid" { s = t($1) }
    $3 == "write" && $4 == "device-model/" d "/state" && $5 == "running" && s { print int(t($1) - s); exit }')
  [ -n "$ms" ] && metric dm_spawn_to_running_ms "$ms"
  return 0
}
guest_attach() {  # guest_attach NAME: (re)read DOMID/DMPID of a running guest
  DOMID=$(xl domid "$1" 2>/dev/null) || fail "domain $1 does not exist after xl create/restore"
  DMPID=$(xenstore-read /local/domain/$DOMID/image/device-model-pid 2>/dev/null)
  log "domain $1: domid $DOMID, device model pid ${DMPID:-none} ($(tr '\0' ' ' < /proc/${DMPID:-0}/cmdline 2>/dev/null | cut -c1-80))"
  echo "$1 domid=$DOMID dm_pid=$DMPID" >> "$OUT/domains"
  dm_alive || fail "device model (pid $DMPID) of $1 is not running right after xl create"
}

# guest_live NAME: fails unless `xl list` shows domain NAME, neither crashed, shut down nor dying;
# sets GUEST_STATE (xl's state column) and GUEST_CPU_S (its CPU seconds)
serial_shell() {  # serial_shell NAME: wait for the lab init's shell on NAME's COM1 socket to answer
  step serial 900 python3 "$LAB/dom0/lab-expect.py" --unix "$RUN/$1-com1.sock" --log "$OUT/com1.log" \
      --timeout $(scaled 840) --ready LAB-GUEST-READY --probe 'echo LAB-SUM=$((6*7))' --want LAB-SUM=42 \
    || fail "HVM Linux did not reach a shell on the emulated serial port: $(tail -1 "$OUT/step-serial.log")"
}

guest_live() {
  local line; line=$(xl list "$1" 2>/dev/null | awk 'NR==2 {print $5, $6}')
  [ -n "$line" ] || fail "domain $1 is not in xl list any more (see logs/xl-dmesg.log)"
  GUEST_STATE=${line% *} GUEST_CPU_S=${line#* }
  case $GUEST_STATE in *[csd]*) fail "domain $1 is not running (xl list state $GUEST_STATE; see logs/xl-dmesg.log)" ;; esac
  return 0
}

# leftovers DOMID [DMPID]: print what a destroyed domain left behind (processes, sockets, xenstore)
leftovers() {
  local d=$1 p=${2:-}
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null && echo "process: device model pid $p still running: $(tr '\0' ' ' < /proc/$p/cmdline | cut -c1-120)"
  ps -eo pid=,args= | grep -E -- "-xen-domid $d( |$)" | grep -v grep | sed 's/^/process: /'
  ls -d /run/xen/*-"$d" /run/xen/*-"$d".* 2>/dev/null | sed 's/^/socket or file: /'
  local k
  for k in /local/domain/$d /local/domain/0/device-model/$d /libxl/$d \
           /local/domain/0/backend/vbd/$d /local/domain/0/backend/qdisk/$d /local/domain/0/backend/console/$d \
           /local/domain/0/backend/vfb/$d /local/domain/0/backend/vkbd/$d /local/domain/0/backend/vif/$d; do
    xenstore-exists "$k" 2>/dev/null && echo "xenstore: $k"
  done
  return 0
}

destroy_all() {  # destroy every guest domain (everything but dom0)
  local d
  for d in $(xl list 2>/dev/null | awk 'NR>1 && $2!=0 {print $1}'); do
    log "destroying leftover domain $d"
    timeout -k 5 60 xl destroy "$d" > /dev/null 2>&1 || log "xl destroy $d failed"
  done
}

finish() {
  local rc=$?
  set +e
  [ -s "$OUT/verdict" ] || verdict FAIL "scenario script ended without a verdict (exit status $rc)"
  # collect logs
  mkdir -p "$OUT/logs"
  cp -a /var/log/xen/qemu-dm-*.log* /var/log/xen/xl-*.log* "$OUT/logs/" 2>/dev/null
  cp -a /var/log/xen/console "$OUT/logs/" 2>/dev/null
  [ -n "${ACCESS_MARK:-}" ] && tail -n +"$((ACCESS_MARK + 1))" /var/log/xen/xenstored-access.log > "$OUT/logs/xenstored-access.log" 2>/dev/null
  xl dmesg > "$OUT/logs/xl-dmesg.log" 2>&1
  xl list > "$OUT/logs/xl-list-at-end.txt" 2>&1
  ps -eo pid,ppid,etime,rss,args > "$OUT/logs/ps-at-end.txt" 2>&1
  destroy_all
  # a scenario's own host-side set-up (a bridge, a DHCP server) goes after its guests
  declare -F scenario_cleanup > /dev/null && scenario_cleanup
  if grep -q '^FAIL' "$OUT/verdict"; then
    {
      echo "scenario $SCENARIO: $(cat "$OUT/verdict")"
      echo "device model: $DM_REAL (capture=$CAPTURE)"
      [ -s "$OUT/steps.tsv" ] && { echo "--- steps (name rc seconds)"; cat "$OUT/steps.tsv"; }
      for f in "$OUT"/step-*.log; do
        [ -e "$f" ] || continue
        grep -qE 'libxl: error|error|fail' "$f" && { echo "--- errors in $(basename "$f")"; grep -E 'libxl: error|error|fail' "$f" | grep -v 'libxl: debug' | head -15 | cut -c1-300; }
      done
      local any=0 f
      for f in "$OUT"/logs/qemu-dm-*.log*; do
        [ -e "$f" ] || continue
        any=1; echo "--- device-model log $(basename "$f") ($(wc -l < "$f") lines, last 60)"; tail -60 "$f"
      done
      [ $any = 0 ] && echo "--- no device-model log (/var/log/xen/qemu-dm-*.log) was written"
      for f in "$OUT"/dm-*.argv; do
        [ -e "$f" ] && { echo "--- device-model argv ($(basename "$f"))"; tr '\n' ' ' < "$f"; echo; }
      done
    } > "$OUT/report.txt"
  fi
  printf '%s\t%s\t%s\n' total "$rc" "$(elapsed "$T0")" >> "$OUT/steps.tsv"
  log "verdict: $(cat "$OUT/verdict")"
}

# ---------------------------------------------------------------------------------------------
[ -d "$SDIR" ] || { echo "no such scenario: $SCENARIO"; exit 2; }
mkdir -p "$OUT" "$RUN" "$WORK" "$GUEST"
: > "$OUT/steps.tsv"; rm -f "$OUT/verdict" "$OUT/metrics"
trap finish EXIT
trap 'fail "runner killed by SIGTERM (time limit?)"' TERM

log "scenario $SCENARIO, DM $DM_SPEC, capture $CAPTURE, out $OUT"
destroy_all
# a device model an earlier run left behind (one that ignored SIGHUP) must not outlive its run
if pgrep -f '^/opt/lab-dm/' > /dev/null; then
  log "killing device models left by an earlier run: $(pgrep -f '^/opt/lab-dm/' | tr '\n' ' ')"
  pkill -KILL -f '^/opt/lab-dm/'
fi
rm -f /var/log/xen/qemu-dm-*.log* /var/log/xen/xl-*.log* /var/log/xen/console/*.log /run/lab/*.sock
rm -rf "${WORK:?}"/*
# payloads and the device model binary come over the 9p share; run them from local disk
cp -a /share/payloads/. "$GUEST/" || fail "cannot copy guest payloads from /share/payloads"
DM_REAL=$DM_SPEC
case "$DM_SPEC" in
  /share/*) mkdir -p /opt/lab-dm; DM_REAL=/opt/lab-dm/$(basename "$DM_SPEC")
            # rename into place: a device model left running by an earlier run keeps the old file
            cp "$DM_SPEC" "$DM_REAL.new" && chmod +x "$DM_REAL.new" && mv -f "$DM_REAL.new" "$DM_REAL" \
              || fail "cannot install device model $DM_SPEC" ;;
esac
if [ "$CAPTURE" = 1 ]; then
  printf '#!/bin/sh\nexec %s --real %s --out %s -- "$@"\n' "$LAB/dom0/dm-capture" "$DM_REAL" "$OUT" > $RUN/dm
else
  printf '#!/bin/sh\nexec %s "$@"\n' "$DM_REAL" > $RUN/dm
fi
chmod +x $RUN/dm
echo "$DM_REAL" > "$OUT/dm-path"
timeout -k 1 5 "$DM_REAL" --version > "$OUT/dm-version.txt" 2>&1 < /dev/null
ACCESS_MARK=$(wc -l < /var/log/xen/xenstored-access.log 2>/dev/null || echo 0)
xl dmesg -c > /dev/null 2>&1     # the scenario's `xl dmesg` starts empty (Xen's console ring is small)
mkdir -p "$OUT/logs"
xenstore-ls -f > "$OUT/logs/xenstore-before.txt" 2>&1

cd "$SDIR"
source "$SDIR/run.sh"
scenario
# Every scenario ends in its own pass or fail. Getting here means bash left `scenario` early (an
# expansion error aborts the function: it once turned a failed read of the tick counter into a
# PASS that skipped the destroy checks), so it is a failure, never a pass.
fail "the scenario stopped before its verdict (a shell error in run.sh; see runner.log)"
