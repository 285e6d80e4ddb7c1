#!/usr/bin/env bash
# Boot a throw-away Linux guest with pure cgroup v2 and KVM, and run one command in it, as root.
#
#   tests/guest/boot.sh [-m MiB] [-t SECONDS] [-l LOGFILE] -- 'shell command'
#
# Why: learners run the course in the lab VM (Ubuntu 24.04: pure cgroup v2, kvm_intel or kvm_amd),
# while CI machines may have hybrid cgroups and a paravirtual KVM. This guest gives every `make
# test` the learners' kind of kernel: Debian's distribution kernel booted with cgroup_no_v1=all,
# every controller on cgroup2, and a /dev/kvm of its own (kvm_amd, on the AMD-V that QEMU emulates).
#
# How: QEMU without KVM (TCG: it runs anywhere, also where /dev/kvm cannot boot a stock kernel)
# boots the kernel of Debian's (or Ubuntu's) kernel package, fetched once with apt-get download
# and kept in $LABHELPER_GUEST_CACHE. The guest's root is this machine's / shared read-only over 9p,
# with a tmpfs on top (overlayfs): it runs this machine's own Python, venv and checkout, and every
# write it makes stays in its memory. The lab's own folders (/run/labhelper, /var/lib/labhelper)
# are fresh tmpfs mounts named "labhelper": an overlay root could not hold the upper directory of
# a chapter's own overlay mounts, and it would show this machine's ledger. The command runs in the
# current folder; its exit status is this script's. Everything the guest prints goes to LOGFILE.
#
# Facts learned building it (Debian 12 host):
# - TCG boots to userspace in about 4 s; Python runs about 20x slower there than here.
# - The kernel needs virtio, 9p and overlay as modules, loaded in this order: virtio_ring, virtio,
#   virtio_pci_legacy_dev, virtio_pci_modern_dev, virtio_pci, 9pnet, 9pnet_virtio, netfs,
#   fscache, 9p, overlay. The package's /lib/modules is bind-mounted so that modprobe works.
# - `-cpu max` gives the guest AMD-V (QEMU emulates SVM, not VMX): modprobe kvm_amd makes /dev/kvm.
# - One TCG thread for all vCPUs (thread=single): with one thread per vCPU (multi), a guest that
#   runs its own KVM guests stalled within minutes (soft lockups on every CPU, no progress), while
#   single-threaded TCG ran chapter 02's 55 system tests on kvm_amd in 44 s.
set -euo pipefail
MEM=3072; TIMEOUT=1500; LOG=""
while [ $# -gt 0 ]; do
  case $1 in
    -m) MEM=$2; shift 2 ;;
    -t) TIMEOUT=$2; shift 2 ;;
    -l) LOG=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { echo "usage: $0 [-m MiB] [-t SECONDS] [-l LOGFILE] -- 'command'" >&2; exit 2; }
CMD=$1
skip() { echo "SKIP: $*" >&2; exit 77; }   # 77: the harness cannot run here (named reason)
[ "$(id -u)" -eq 0 ] || skip "the guest shares / over 9p and needs root"
[ "$(uname -m)" = x86_64 ] || skip "the guest harness boots x86_64 kernels only (this is $(uname -m))"
for tool in qemu-system-x86_64 busybox cpio dpkg-deb apt-get; do
  command -v "$tool" >/dev/null || skip "$tool is not installed (scripts/provision.sh --with-test-tools installs qemu-system-x86, busybox-static and cpio)"
done

CACHE=${LABHELPER_GUEST_CACHE:-/var/cache/labhelper-guest}
# The distribution's kernel, fetched once (scripts/fetch-kernel.sh: exit 77 with its reason).
VMLINUZ=$(LABHELPER_GUEST_CACHE=$CACHE "$(dirname "$0")/../../scripts/fetch-kernel.sh") || exit $?
KVER=$(cat "$CACHE/kernel/ready")
KROOT=$CACHE/kernel/root

# The first stage (an initrd with busybox): load the modules, mount the 9p root read-only with a
# tmpfs over it, and switch to it.
if [ ! -f "$CACHE/initrd.gz" ] || [ "$0" -nt "$CACHE/initrd.gz" ]; then
  IR=$(mktemp -d)
  mkdir -p "$IR"/{bin,proc,sys,dev,newroot,lower,upper,mods}
  cp "$(command -v busybox)" "$IR/bin/busybox"
  for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci 9pnet 9pnet_virtio \
           netfs fscache 9p overlay; do
    f=$(find "$KROOT/lib/modules/$KVER" -name "$m.ko*" | head -1)
    [ -n "$f" ] || continue
    case $f in
      *.xz) xz -dc "$f" > "$IR/mods/$m.ko" ;;
      *.zst) zstd -qdc "$f" > "$IR/mods/$m.ko" ;;
      *) cp "$f" "$IR/mods/$m.ko" ;;
    esac
  done
  cat > "$IR/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci 9pnet 9pnet_virtio netfs fscache 9p overlay; do
  [ -f /mods/$m.ko ] && insmod /mods/$m.ko
done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /lower || { echo "GUEST: the 9p mount failed"; poweroff -f; }
mount -t tmpfs tmpfs /upper; mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot || { echo "GUEST: the overlay failed"; poweroff -f; }
mount --move /proc /newroot/proc; mount --move /sys /newroot/sys; mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh -c 'exec /bin/bash "$(sed -n "s/.* stage2=\([^ ]*\).*/\1/p" /proc/cmdline)"'
INIT
  chmod +x "$IR/init"
  (cd "$IR" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$CACHE/initrd.gz")
  rm -rf "$IR"
fi

WORK=$(mktemp -d /tmp/labhelper-guest.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
printf '%s\n' "$CMD" > "$WORK/cmd"
# The second stage, in the guest's real root: the kernel's own filesystems, cgroup2 with every
# controller, the modules, KVM, the lab's folders; then the command.
cat > "$WORK/stage2" <<STAGE2
#!/bin/bash
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null || { mount -t tmpfs tmpfs /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup; }
mkdir -p /lib/modules/$KVER && mount --bind $KROOT/lib/modules/$KVER /lib/modules/$KVER
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
ip link set lo up
hostname labhelper-guest
echo "+cpuset +cpu +io +memory +pids" > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
modprobe kvm_amd 2>/dev/null || modprobe kvm_intel 2>/dev/null || true
for d in /run/labhelper /var/lib/labhelper; do mkdir -p \$d && mount -t tmpfs -o mode=0755 labhelper \$d; done
# A newline first: the firmware's last line ("Booting from ROM...") has none, and the filter
# below drops that line whole, with whatever is printed on it.
echo
echo "GUEST: kernel \$(uname -r); cgroup2 with: \$(cat /sys/fs/cgroup/cgroup.controllers); /dev/kvm: \$(ls /dev/kvm 2>/dev/null || echo none)"
cd "$PWD"
export LABHELPER_GUEST=1 HOME=/root
bash $WORK/cmd
echo "GUEST-EXIT=\$?"
echo o > /proc/sysrq-trigger
sleep 30
STAGE2
chmod +x "$WORK/stage2"
OUT=${LOG:-$WORK/out}
set +e
timeout "$TIMEOUT" qemu-system-x86_64 -accel "tcg,thread=${GUEST_TCG_THREAD:-single}" -cpu max -m "$MEM" -smp "$(nproc)" \
  -nographic -no-reboot -kernel "$VMLINUZ" -initrd "$CACHE/initrd.gz" \
  -append "console=ttyS0 ${GUEST_KERNEL_ARGS:-quiet} panic=-1 cgroup_no_v1=all stage2=$WORK/stage2" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  </dev/null 2>&1 | sed -u -e 's/\x1b\[[0-9;?]*[a-zA-Z]//g' -e 's/\x1bc//g' \
  | grep --line-buffered -v -E '(SeaBIOS|iPXE|Press Ctrl-B|Booting from|sysrq: Power Off|reboot: Power down)|^\s*$' \
  > "$OUT"
set -e
[ -n "$LOG" ] || cat "$OUT"
rc=$(sed -n 's/^GUEST-EXIT=\([0-9]*\).*/\1/p' "$OUT" | tail -1)
[ -n "$rc" ] || { echo "boot.sh: the guest did not finish (timeout ${TIMEOUT}s, or it did not boot): see its console above" >&2; exit 124; }
exit "$rc"
