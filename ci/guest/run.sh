#!/usr/bin/env bash
# Runs a script inside a throwaway Linux guest (QEMU, TCG) and exits with the script's status.
#
#   ci/guest/run.sh SCRIPT [extra qemu args...]
#
# The guest's root is the host's / (read-only over virtio-9p) under a tmpfs overlay, so every
# host binary is there and writes are discarded at power-off. SCRIPT (a #! script, or plain sh)
# runs as root in the guest, in the caller's working directory, stdin from /dev/null. Its output
# streams to stdout with the guest console, and to a log file.
#
# Extra args are appended to the qemu command line, e.g. a disk:
#   -drive file=disk.img,if=none,id=d0,format=raw,cache=none -device virtio-blk-pci,drive=d0
# or a vhost-user-blk backend (the shared memory size must equal GUEST_MEM):
#   -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem
#   -chardev socket,id=c0,path=SOCK,reconnect=1 -device vhost-user-blk-pci,chardev=c0,num-queues=2
#
# Environment: GUEST_TIMEOUT (seconds, default 300), GUEST_MEM (default 1G), GUEST_SMP (default
# 2), GUEST_LOG (console log path; default under $GUEST_DIR/logs), GUEST_DIR and
# GUEST_EXTRA_MODULES (see setup.sh), GUEST_APPEND (extra kernel command line).
#
# Exit status: the script's, or 99 when the guest never reported one (timeout, boot failure,
# qemu error); the reason is printed on stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "usage: $0 SCRIPT [extra qemu args...]" >&2
  exit 2
fi
SCRIPT=$1
shift

GUEST_DIR=${GUEST_DIR:-/var/tmp/unblend-guest}
GUEST_TIMEOUT=${GUEST_TIMEOUT:-300}
GUEST_MEM=${GUEST_MEM:-1G}
GUEST_SMP=${GUEST_SMP:-2}
export GUEST_DIR

say() { echo "guest/run: $*" | tee -a "$GUEST_LOG" >&2; }

# Kernel and initramfs (built once, then reused); sets GUEST_KERNEL and GUEST_INITRD.
if ! guest_env=$("$HERE/setup.sh"); then
  echo "guest/run: error: ci/guest/setup.sh failed; the guest was not started" >&2
  exit 99
fi
eval "$guest_env"

mkdir -p "$GUEST_DIR/logs"
# Keep the 50 newest logs.
find "$GUEST_DIR/logs" -maxdepth 1 -name 'console-*.log' -printf '%T@ %p\n' \
  | sort -rn | tail -n +51 | cut -d' ' -f2- | xargs -r rm -f
GUEST_LOG=${GUEST_LOG:-$GUEST_DIR/logs/console-$(date +%Y%m%d-%H%M%S)-$$.log}
: >"$GUEST_LOG"

RUN=$(mktemp -d "${TMPDIR:-/tmp}/unblend-guest.XXXXXX")
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  # Stop qemu if we are interrupted while it runs.
  if [ -s "$RUN/qemu.pid" ]; then kill "$(cat "$RUN/qemu.pid")" 2>/dev/null || true; fi
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

# What fw_cfg hands the guest's init: the script and the directory to run it in. Copies with
# fixed names, so no path needs escaping for qemu's option syntax.
cp "$SCRIPT" "$RUN/cmd"
pwd >"$RUN/cwd"

# quiet: the serial console is slow under TCG; panic=-1 + -no-reboot: a guest panic ends qemu
# at once instead of waiting for the timeout.
APPEND="console=ttyS0 quiet panic=-1 mitigations=off ${GUEST_APPEND:-}"

# shellcheck disable=SC2054  # commas are qemu's, not array separators
qemu=(
  qemu-system-x86_64
  -accel tcg,thread=multi -cpu max -machine q35 -m "$GUEST_MEM" -smp "$GUEST_SMP"
  # No default NIC (its iPXE option ROM costs firmware time under TCG), VGA, CD-ROM, monitor.
  # The serial port is the console, on stdio. (-display none rather than -nographic: the latter
  # also turns on SeaBIOS's serial console, which starts with a terminal reset, ESC c.)
  -display none -nodefaults -no-user-config -serial stdio -no-reboot
  -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" -append "$APPEND"
  # The host's / read-only. multidevs=remap keeps inode numbers unique across host mounts.
  -fsdev local,id=root,path=/,security_model=none,readonly=on,multidevs=remap
  -device virtio-9p-pci,fsdev=root,mount_tag=hostroot
  -fw_cfg name=opt/unblend/cmd,file="$RUN/cmd"
  -fw_cfg name=opt/unblend/cwd,file="$RUN/cwd"
  -pidfile "$RUN/qemu.pid"
  "$@"
)
printf '%q ' "${qemu[@]}" >>"$GUEST_LOG"
echo >>"$GUEST_LOG"

# Records when the guest is about to start the command (boot time).
watch_start() {
  if grep -a -m1 -q UNBLEND-GUEST-START; then date +%s.%N >"$RUN/started"; fi
  cat >/dev/null
}

T0=$(date +%s.%N)
# Background + wait so that the INT/TERM trap runs (and stops qemu) while the guest is up.
# timeout kills qemu after GUEST_TIMEOUT s (SIGKILL 10 s later if it ignores SIGTERM).
{
  timeout -k 10 "$GUEST_TIMEOUT" "${qemu[@]}" </dev/null 2>&1 && rc=0 || rc=$?
  echo "$rc" 2>/dev/null >"$RUN/qemu.rc" || true  # RUN is gone if we were interrupted
} | tee -a "$GUEST_LOG" >(watch_start) &
wait $! || true
T1=$(date +%s.%N)
rm -f "$RUN/qemu.pid"

# Last "UNBLEND-GUEST-RC=n" the guest printed (console lines end in \r\n).
rc=$(tr -d '\r' <"$GUEST_LOG" | grep -a -o '^UNBLEND-GUEST-RC=[0-9]*$' | tail -n1 | cut -d= -f2 || true)
qemu_rc=$(cat "$RUN/qemu.rc" 2>/dev/null || echo "?")

times=$(awk -v t0="$T0" -v t1="$T1" -v ts="$(cat "$RUN/started" 2>/dev/null || echo)" 'BEGIN {
  if (ts != "") printf "boot %.1f s, command %.1f s, total %.1f s", ts - t0, t1 - ts, t1 - t0
  else printf "total %.1f s (the command never started)", t1 - t0 }')
say "$times; console log $GUEST_LOG"

if [ -n "$rc" ]; then
  [ "$rc" = 0 ] || say "script exited with status $rc"
  exit "$rc"
fi
if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
  say "error: timed out after ${GUEST_TIMEOUT} s (GUEST_TIMEOUT) without an exit status from the guest"
elif err=$(tr -d '\r' <"$GUEST_LOG" | grep -a 'UNBLEND-GUEST-ERROR' | head -n1) && [ -n "$err" ]; then
  say "error: guest init failed: ${err#*UNBLEND-GUEST-ERROR: }"
else
  say "error: qemu exited with status $qemu_rc and the guest printed no UNBLEND-GUEST-RC marker"
fi
exit 99
