#!/usr/bin/env bash
# Prepares what ci/guest/run.sh boots: installs the host packages the harness needs and builds,
# once per kernel version and version of this script, a Debian kernel plus a tiny busybox
# initramfs that mounts the host's / over virtio-9p (read-only) under a tmpfs overlay.
#
# Idempotent and cheap when everything is in place (run.sh calls it on every run). Logs go to
# stderr; the last lines on stdout are shell assignments for run.sh:
#   GUEST_KVER=...  GUEST_KERNEL=...  GUEST_INITRD=...
#
# Environment:
#   GUEST_DIR            cache directory (default /var/tmp/unblend-guest). It must be on the host's
#                        root view because the guest reads its module tree through the 9p share.
#   GUEST_EXTRA_MODULES  extra kernel modules (space separated) to load at guest boot; the full
#                        module tree is also reachable from the guest with modprobe.
#
# Kernel: the package linux-image-amd64 depends on (Debian's current one) is downloaded with
# `apt-get download` and unpacked into GUEST_DIR instead of being installed: installing it would
# pull in initramfs-tools, udev and a systemd upgrade, and run update-initramfs in a container,
# none of which the harness needs.
set -euo pipefail

GUEST_DIR=${GUEST_DIR:-/var/tmp/unblend-guest}
GUEST_EXTRA_MODULES=${GUEST_EXTRA_MODULES:-}
SELF=$(readlink -f "${BASH_SOURCE[0]}")

log() { echo "guest/setup: $*" >&2; }
die() { echo "guest/setup: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (installs packages, builds device nodes)"
mkdir -p "$GUEST_DIR"
GUEST_DIR=$(cd "$GUEST_DIR" && pwd -P)

# Serialise concurrent setups (parallel CI tests each call run.sh -> setup.sh).
exec 9>"$GUEST_DIR/.setup.lock"
flock 9
# Leftovers of a setup that was interrupted or failed (safe: we hold the lock).
rm -rf "$GUEST_DIR"/.kernel-stage.* "$GUEST_DIR"/.initrd-stage.*

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
apt_update() {
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    apt-get update -qq >&2
    APT_UPDATED=1
  fi
}
installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }

# --- 1. Host packages -------------------------------------------------------------------------
# busybox-static: the initramfs userland; cpio: packs it; kmod: depmod/modprobe to resolve module
# dependencies; binutils: readelf checks the kernel's PVH note; fio and e2fsprogs: used by the
# self-test and storage tests inside the guest.
missing=()
for p in busybox-static cpio kmod binutils fio e2fsprogs; do
  installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt_update
  log "installing ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# QEMU: its Debian packages must all be of one version. This machine kind ships qemu-utils from
# bookworm-backports (10.x) while its apt sources list only bookworm (7.2), so a plain install of
# qemu-system-x86 would *remove* qemu-utils. In that case install the matching backports build,
# adding the backports suite for this one apt call only (no file under /etc/apt is changed).
if ! installed qemu-system-x86; then
  apt_update
  qemu_utils_ver=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
  if [[ "$qemu_utils_ver" == *bpo12* ]] \
     && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    parts=$(mktemp -d)
    trap 'rm -rf "$parts"' EXIT
    for f in /etc/apt/sources.list.d/*; do [ -e "$f" ] && ln -s "$f" "$parts/"; done
    cat >"$parts/zz-bookworm-backports.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # APT::Get::List-Cleanup=0 keeps apt from dropping lists of sources it is not told about.
    bpo=(-o "Dir::Etc::SourceParts=$parts" -o APT::Get::List-Cleanup=0)
    log "installing qemu-system-x86 $qemu_utils_ver from bookworm-backports (matches qemu-utils)"
    apt-get "${bpo[@]}" update -qq >&2
    apt-get "${bpo[@]}" install -y -qq --no-install-recommends \
      "qemu-system-x86=$qemu_utils_ver" "qemu-system-common=$qemu_utils_ver" \
      "qemu-system-data=$qemu_utils_ver" -t bookworm-backports >&2
    rm -rf "$parts"
    trap - EXIT
  else
    log "installing qemu-system-x86"
    apt-get install -y -qq --no-install-recommends qemu-system-x86 >&2
  fi
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing after install"

# --- 2. Kernel -------------------------------------------------------------------------------
# The versioned package behind linux-image-amd64, e.g. linux-image-6.1.0-56-amd64.
kernel_pkg() {
  apt-cache depends linux-image-amd64 2>/dev/null \
    | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ && !found { print $2; found = 1 }'
}
# apt-cache takes ~1 s here, so the answer is kept in $GUEST_DIR/kernel.pkg until the apt lists
# change (apt-get update).
KPKG=
if [ -s "$GUEST_DIR/kernel.pkg" ] && [ -z "$(find /var/lib/apt/lists -maxdepth 1 \
     -name '*_Packages*' -newer "$GUEST_DIR/kernel.pkg" -print -quit)" ]; then
  KPKG=$(cat "$GUEST_DIR/kernel.pkg")
fi
if [ -z "$KPKG" ]; then
  KPKG=$(kernel_pkg)
  if [ -z "$KPKG" ]; then
    apt_update
    KPKG=$(kernel_pkg)
  fi
  [ -n "$KPKG" ] || die "cannot resolve the package behind linux-image-amd64"
  echo "$KPKG" >"$GUEST_DIR/kernel.pkg"
fi
KVER=${KPKG#linux-image-}
KDIR=$GUEST_DIR/kernel-$KVER            # unpacked package: boot/, lib/modules/$KVER/
MODDIR=$KDIR/lib/modules/$KVER

if [ ! -e "$KDIR/.complete" ]; then
  log "fetching kernel $KPKG"
  stage=$(mktemp -d "$GUEST_DIR/.kernel-stage.XXXXXX")
  ( cd "$stage" && apt-get download -qq -o APT::Sandbox::User=root "$KPKG" >&2 ) || {
    apt_update
    ( cd "$stage" && apt-get download -qq -o APT::Sandbox::User=root "$KPKG" >&2 )
  }
  mkdir "$stage/root"
  dpkg-deb -x "$stage"/*.deb "$stage/root"
  # The package ships no modules.dep (its postinst runs depmod); make it for modprobe.
  depmod -b "$stage/root" "$KVER"
  [ -f "$stage/root/boot/vmlinuz-$KVER" ] || die "no vmlinuz-$KVER in $KPKG"
  rm -rf "$KDIR"
  mv "$stage/root" "$KDIR"
  rm -rf "$stage"
  touch "$KDIR/.complete"
fi
KERNEL=$KDIR/boot/vmlinuz-$KVER
# .complete's mtime is the kernel's last use: drop other kernels (~400 MB each) unused for a week.
touch "$KDIR/.complete"
find "$GUEST_DIR" -mindepth 2 -maxdepth 2 -path "$GUEST_DIR/kernel-*/.complete" \
  ! -path "$KDIR/.complete" -mtime +7 -printf '%h\n' | xargs -r rm -rf

# Under TCG the bzImage's own decompressor (xz for Debian) takes ~5 s of every boot. Unpack the
# ELF vmlinux once instead: QEMU boots it directly through its PVH entry point (CONFIG_PVH=y).
# Payload location per the x86 boot protocol: setup_sects at 0x1f1, payload_offset at 0x248,
# payload_length at 0x24c; the payload's last 4 bytes are the uncompressed size, not data.
if [ ! -e "$KDIR/vmlinux" ] && [ ! -e "$KDIR/.no-pvh" ]; then
  u8() { od -An -tu1 -j "$1" -N1 "$KERNEL" | tr -d ' '; }
  u32() { od -An -tu4 -j "$1" -N4 "$KERNEL" | tr -d ' '; }
  setup_sects=$(u8 $((0x1f1))); [ "$setup_sects" != 0 ] || setup_sects=4
  start=$(( (setup_sects + 1) * 512 + $(u32 $((0x248))) ))
  len=$(( $(u32 $((0x24c))) - 4 ))
  payload() {
    dd if="$KERNEL" bs=64K skip="$start" count="$len" iflag=skip_bytes,count_bytes status=none
  }
  magic=$(od -An -tx1 -j "$start" -N4 "$KERNEL" | tr -d ' ')
  case $magic in
    fd377a58) unpack=(xz -dc) ;;
    1f8b*) unpack=(gzip -dc) ;;
    28b52ffd) unpack=(zstd -qdc) ;;
    *) unpack=() ;;
  esac
  # Keep it only if it is an ELF with the PVH entry note (Xen note type 0x12).
  if [ ${#unpack[@]} -gt 0 ] && payload | "${unpack[@]}" >"$KDIR/vmlinux.tmp" 2>/dev/null \
     && command -v readelf >/dev/null \
     && readelf -n "$KDIR/vmlinux.tmp" 2>/dev/null \
        | grep -E 'Xen.*(\(0x00000012\)|PHYS32_ENTRY)' >/dev/null; then
    mv "$KDIR/vmlinux.tmp" "$KDIR/vmlinux"
  else
    log "no PVH-bootable vmlinux in $KPKG (payload magic $magic); booting the bzImage"
    rm -f "$KDIR/vmlinux.tmp"
    touch "$KDIR/.no-pvh"
  fi
fi
[ -e "$KDIR/vmlinux" ] && KERNEL=$KDIR/vmlinux

# --- 3. Initramfs ----------------------------------------------------------------------------
# Modules the guest loads at boot, in this order of need. Those built into the kernel
# (=y in config-$KVER, listed in modules.builtin) are skipped by modprobe --show-depends.
REQUIRED_MODULES="virtio virtio_ring virtio_pci virtio_blk 9pnet 9pnet_virtio 9p overlay qemu_fw_cfg"
# Present only in some kernel versions.
OPTIONAL_MODULES="virtio_pci_modern_dev virtio_pci_legacy_dev netfs"

# Rebuild whenever the kernel, this script (init code) or the module list changes.
HASH=$( { echo "$KVER $GUEST_EXTRA_MODULES $GUEST_DIR"; cat "$SELF"; } | sha256sum | cut -c1-12)
INITRD=$GUEST_DIR/initramfs-$KVER-$HASH.cpio.gz

if [ ! -f "$INITRD" ]; then
  log "building $INITRD"
  stage=$(mktemp -d "$GUEST_DIR/.initrd-stage.XXXXXX")
  r=$stage/root
  mkdir -p "$r"/{bin,dev,proc,sys,etc,lib/modules,mnt/lower,mnt/rw,mnt/root}

  # busybox with a symlink per applet; /dev/console so PID 1 has a console before devtmpfs.
  cp /bin/busybox "$r/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$r/bin/$applet"
  done
  mknod -m 600 "$r/dev/console" c 5 1

  # Resolve each module to the .ko files to insmod, dependencies first, without duplicates.
  : >"$r/etc/modules.load"
  add_module() { # $1 = name, $2 = required|optional
    local out line ko base
    if ! out=$(modprobe -d "$KDIR" -S "$KVER" --show-depends "$1" 2>&1); then
      [ "$2" = optional ] && { log "module $1 not in $KVER, skipped"; return 0; }
      die "module $1: $out"
    fi
    while read -r line; do
      case $line in
        builtin*) continue ;;
        insmod*) ko=$(echo "$line" | awk '{print $2}') ;;
        *) die "module $1: unexpected modprobe output: $line" ;;
      esac
      base=$(basename "$ko"); base=${base%.ko*}
      grep -qx "$base.ko" "$r/etc/modules.load" && continue
      # busybox insmod wants plain ELF: decompress .ko.xz/.ko.zst/.ko.gz here.
      case $ko in
        *.ko) cp "$ko" "$r/lib/modules/$base.ko" ;;
        *.ko.xz) xz -dc "$ko" >"$r/lib/modules/$base.ko" ;;
        *.ko.zst) zstd -qdc "$ko" >"$r/lib/modules/$base.ko" ;;
        *.ko.gz) gzip -dc "$ko" >"$r/lib/modules/$base.ko" ;;
        *) die "module $1: unknown file $ko" ;;
      esac
      echo "$base.ko" >>"$r/etc/modules.load"
    done <<<"$out"
  }
  for m in $REQUIRED_MODULES; do add_module "$m" required; done
  for m in $OPTIONAL_MODULES; do add_module "$m" optional; done
  for m in $GUEST_EXTRA_MODULES; do add_module "$m" required; done
  log "modules: $(tr '\n' ' ' <"$r/etc/modules.load")"

  # Where the guest finds the full module tree (through the 9p view of the host's /).
  echo "MODDIR=$MODDIR" >"$r/etc/unblend.conf"

  # --- /init: PID 1 in the initramfs (busybox sh) ---
  cat >"$r/init" <<'EOF'
#!/bin/busybox sh
# Stage 1: load modules, mount the host's / (9p, read-only) under a tmpfs overlay, fetch the
# command from fw_cfg, then switch_root into the overlay and run stage 2 there.
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
. /etc/unblend.conf

# No RC marker on failure: run.sh reports the missing marker and this message.
fail() {
  echo "UNBLEND-GUEST-ERROR: $*"
  sleep 1 # let the console drain
  echo o >/proc/sysrq-trigger
  poweroff -f
}

while read -r ko; do
  insmod "/lib/modules/$ko" || fail "insmod $ko failed"
done </etc/modules.load

# Host root, read-only. msize 512000 is the most the 6.1 virtio transport takes; cache=loose
# caches metadata and data in the guest (the host tree does not change under a test).
i=0
until mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose \
        hostroot /mnt/lower; do
  i=$((i + 1)); [ $i -lt 20 ] || fail "cannot mount the 9p host root"
  sleep 0.1
done

# Writable root: overlay of the host root with a tmpfs upper layer (lost at power-off).
mount -t tmpfs -o mode=755 tmpfs /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay overlay \
  -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /mnt/root \
  || fail "cannot mount the overlay root"

# The command and the host's working directory, passed by run.sh with -fw_cfg.
fwcfg=/sys/firmware/qemu_fw_cfg/by_name/opt/unblend
[ -r $fwcfg/cmd/raw ] || fail "no opt/unblend/cmd in fw_cfg"
mkdir -p /mnt/root/.unblend
cat $fwcfg/cmd/raw >/mnt/root/.unblend/cmd || fail "cannot read the command"
cat $fwcfg/cwd/raw >/mnt/root/.unblend/cwd 2>/dev/null || echo / >/mnt/root/.unblend/cwd
cp /bin/busybox /etc/unblend.conf /stage2 /mnt/root/.unblend/

# Hand the kernel filesystems over and make the overlay the real root.
for d in dev proc sys; do
  mount -o move /$d /mnt/root/$d || fail "cannot move /$d"
done
exec switch_root /mnt/root /.unblend/busybox sh /.unblend/stage2
EOF
  chmod 755 "$r/init"

  # --- /stage2: PID 1 in the overlay root (busybox sh, copied to /.unblend) ---
  cat >"$r/stage2" <<'EOF'
# Stage 2: finish the root, run the command, print its exit status, power off.
bb=/.unblend/busybox
. /.unblend/unblend.conf
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb LANG=C.UTF-8 UNBLEND_GUEST=1

$bb mkdir -p /dev/pts /dev/shm
$bb mount -t devpts devpts /dev/pts
$bb mount -t tmpfs tmpfs /dev/shm
$bb mount -t tmpfs -o mode=755 tmpfs /run
$bb mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
$bb ip link set lo up
$bb hostname unblend-guest
# The guest kernel's modules, so `modprobe nbd` and the like work inside.
kver=$($bb uname -r)
$bb mkdir -p /lib/modules
[ -e /lib/modules/$kver ] || $bb ln -s "$MODDIR" /lib/modules/$kver

cmd=/.unblend/cmd
$bb chmod 755 $cmd
cd "$($bb cat /.unblend/cwd)" 2>/dev/null || cd /
echo "UNBLEND-GUEST-START uptime=$($bb cut -d' ' -f1 /proc/uptime)"
# A script with a #! line runs with its interpreter, any other with /bin/sh.
if [ "$($bb head -c2 $cmd)" = '#!' ]; then
  $cmd </dev/null
else
  /bin/sh $cmd </dev/null
fi
rc=$?
$bb sync
printf '\nUNBLEND-GUEST-RC=%d\n' "$rc"
# Power-off would cut console output still queued in the tty: wait for it to drain. GNU stty
# applies settings with TCSADRAIN, so re-applying the current ones waits for pending output.
/bin/stty -F /dev/console "$(/bin/stty -F /dev/console -g)" 2>/dev/null || $bb sleep 1
echo o >/proc/sysrq-trigger
$bb poweroff -f
EOF

  # Pack (sorted for a reproducible archive) and publish atomically.
  ( cd "$r" && find . -print0 | LC_ALL=C sort -z \
      | cpio --null -o -H newc -R 0:0 --quiet ) | gzip -6 >"$stage/initramfs.cpio.gz"
  mv "$stage/initramfs.cpio.gz" "$INITRD"
  rm -rf "$stage"
  # Drop images of other versions of this script once a day old (a concurrent run with other
  # GUEST_EXTRA_MODULES may be about to boot a recent one).
  find "$GUEST_DIR" -maxdepth 1 -name 'initramfs-*.cpio.gz' ! -path "$INITRD" -mmin +1440 -delete
fi

printf 'GUEST_KVER=%q\nGUEST_KERNEL=%q\nGUEST_INITRD=%q\n' "$KVER" "$KERNEL" "$INITRD" \
  | tee "$GUEST_DIR/guest.env"
