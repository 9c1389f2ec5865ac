#!/bin/bash
# CI hook for the Xen lab: .ci/run calls this when LAB=1 (off by default).
#   usage: bash lab/xen/ci.sh            (from anywhere; exit status 0 = every scenario passed)
# Runs `lab test DM=qemu` (image from cache or built, boot, every scenario, shutdown) and prints
# the pass/fail table with timings. DM and CAPTURE can be overridden from the environment.
# Needs root (debootstrap/chroot for the image), network access to the Debian mirror for the first
# image build, and ~3 GB in /var/cache/swiftdm-lab (or $LAB_CACHE).
set -uo pipefail
here=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
exec timeout -k 30 "${LAB_CI_TIMEOUT:-5400}" "$here/lab" test DM="${DM:-qemu}" CAPTURE="${CAPTURE:-1}"
