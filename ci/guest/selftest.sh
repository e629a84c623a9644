#!/usr/bin/env bash
# Self-test of the guest harness (ci/guest/run.sh):
#   1. a virtio-blk disk backed by a 64 MiB raw file: fio 4k random write + crc32c verify with
#      O_DIRECT, then mkfs.ext4, mount, write and read back a file, umount, fsck -n, all in the
#      guest; then fsck on the host to see the writes reached the image file;
#   2. a failing script: run.sh must exit with the script's status;
#   3. a guest that does not finish in time: run.sh must exit 99.
# Ends with "N passed, N failed"; exits non-zero if any check failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN=$HERE/run.sh
# On disk, not tmpfs: cache=none opens the image with O_DIRECT.
WORK=$(mktemp -d /var/tmp/unblend-guest-selftest.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
T0=$(date +%s)
passed=0
failed=0
check() { # $1 = name, $2 = expected status, $3 = actual status
  if [ "$2" = "$3" ]; then
    echo "selftest: PASS $1"; passed=$((passed + 1))
  else
    echo "selftest: FAIL $1 (exit status $3, expected $2)"; failed=$((failed + 1))
  fi
}

# Make sure packages, kernel and initramfs are in place before timing anything.
"$HERE/setup.sh" >/dev/null

# --- 1. block I/O and a filesystem on a virtio-blk disk ---------------------------------------
truncate -s 64M "$WORK/disk.img"
cat >"$WORK/disk.sh" <<'EOF'
#!/bin/bash
set -euxo pipefail
dev=/dev/vda
[ -b $dev ]
[ "$(blockdev --getsize64 $dev)" = $((64 << 20)) ]
# Random 4k writes, then read back and check every block's crc32c; any mismatch fails fio.
fio --name=verify --filename=$dev --rw=randwrite --bs=4k --size=32M --direct=1 \
    --ioengine=libaio --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 \
    --group_reporting --eta=never
mkfs.ext4 -q -F $dev
mkdir -p /mnt/test
mount $dev /mnt/test
head -c 8M /dev/urandom >/mnt/test/data
sum=$(sha256sum </mnt/test/data)
umount /mnt/test
fsck.ext4 -n $dev
# The data survives an unmount (read back from the disk, not the page cache).
mount -o ro $dev /mnt/test
[ "$(sha256sum </mnt/test/data)" = "$sum" ]
umount /mnt/test
echo "disk test OK"
EOF
rc=0
"$RUN" "$WORK/disk.sh" \
  -drive file="$WORK/disk.img",if=none,id=d0,format=raw,cache=none \
  -device virtio-blk-pci,drive=d0 || rc=$?
check "fio verify + ext4 on virtio-blk" 0 "$rc"
# The guest's writes reached the image file on the host.
rc=0
e2fsck -fn "$WORK/disk.img" >/dev/null 2>&1 || rc=$?
check "host fsck of the image" 0 "$rc"

# --- 2. a failing script's status comes back ------------------------------------------------
printf 'echo "about to fail"\nexit 7\n' >"$WORK/fail.sh"
rc=0
"$RUN" "$WORK/fail.sh" || rc=$?
check "failing script's exit status" 7 "$rc"

# --- 3. a hung guest is stopped and reported ------------------------------------------------
printf 'sleep 600\n' >"$WORK/hang.sh"
rc=0
GUEST_TIMEOUT=20 "$RUN" "$WORK/hang.sh" || rc=$?
check "timeout gives 99" 99 "$rc"

echo "selftest: total $(( $(date +%s) - T0 )) s"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
