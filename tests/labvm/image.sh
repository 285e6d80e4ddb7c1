#!/usr/bin/env bash
# Build, once, the disk of a bare lab VM: what `vagrant up` starts from before provisioning.
#
#   tests/labvm/image.sh      print the folder that holds disk.img, vmlinuz, initrd.img and the
#                             ssh key (built the first time: about 2 minutes; then cached)
#
# Why not a Vagrant box: nothing may be downloaded but packages, and a box is an image from
# elsewhere. A box is only an installed system with a user Vagrant can ssh into, so this makes
# one from this machine's own distribution and package mirror with debootstrap: systemd as PID 1,
# udev, the distribution's kernel, openssh-server, sudo, and a `vagrant` user who may sudo
# without a password and logs in with a key, as Vagrant's boxes do. Nothing the course needs is
# installed here: provisioning (scripts/provision.sh --lab-vm, as the Vagrantfile runs it) does
# that in the booted VM, which is what the lab VM stage tests.
#
# The image is written with `mkfs.ext4 -d` (no loop device, no mount) and booted by QEMU with its
# kernel and initrd given directly (no boot loader to install): tests/labvm/vm.py.
#
# Two things differ from a box, both for this machine's network, and both said here:
# - apt's sources are this machine's own (its mirror, the same release);
# - the guest trusts the certificate authorities this machine trusts (its
#   /usr/local/share/ca-certificates), and pip is told to use the system's bundle: where a proxy
#   intercepts TLS (as on the machines this course is tested on), pip in the guest reaches the
#   package index only so. On a machine without such a proxy that changes nothing.
#
# Exit 77 with the reason where it cannot be built here (not root, no debootstrap, no mirror).
set -euo pipefail
CACHE=${LABHELPER_LABVM_CACHE:-/var/cache/labhelper-labvm}
skip() { echo "SKIP: $*" >&2; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "debootstrap and mkfs.ext4 -d need root"
[ "$(uname -m)" = x86_64 ] || skip "the lab VM image is built for x86_64 (this is $(uname -m))"
for tool in debootstrap mkfs.ext4 ssh-keygen qemu-system-x86_64; do
  command -v "$tool" >/dev/null \
    || skip "$tool is not installed (scripts/provision.sh --with-test-tools installs debootstrap, e2fsprogs, openssh-client, qemu-system-x86)"
done

# This machine's distribution and the mirror it installs from.
# shellcheck disable=SC1091
. /etc/os-release
CODENAME=${VERSION_CODENAME:-}
case "${ID:-}" in
  debian) KERNEL=linux-image-amd64; SOURCES=/etc/apt/sources.list.d/debian.sources ;;
  ubuntu) KERNEL=linux-image-virtual; SOURCES=/etc/apt/sources.list.d/ubuntu.sources ;;
  *) skip "the lab VM image is built from Debian or Ubuntu packages (this is ${PRETTY_NAME:-unknown})" ;;
esac
[ -n "$CODENAME" ] || skip "no VERSION_CODENAME in /etc/os-release"
MIRROR=""
if [ -f "$SOURCES" ]; then
  MIRROR=$(awk '/^URIs:/ {print $2; exit}' "$SOURCES")
fi
if [ -z "$MIRROR" ] && [ -f /etc/apt/sources.list ]; then
  MIRROR=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)
fi
[ -n "$MIRROR" ] || skip "no package mirror found in $SOURCES or /etc/apt/sources.list"

# The cache key: this script, the distribution, and what is copied into the image from this
# machine (its apt sources, its certificate authorities). A change of any builds a new image.
KEY=$({ cat "$0" /etc/os-release "$SOURCES" /etc/apt/sources.list /usr/local/share/ca-certificates/*.crt \
         2>/dev/null || true; } | sha256sum | cut -c1-12)
OUT=$CACHE/base-$KEY
if [ -f "$OUT/ready" ]; then
  echo "$OUT"
  exit 0
fi

mkdir -p "$CACHE"
# A build that was killed (its trap did not run) left its folder.
rm -rf "$CACHE"/build.*
BUILD=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$BUILD"' EXIT
ROOT=$BUILD/root
echo "image.sh: debootstrap $ID $CODENAME from $MIRROR (about 2 minutes)" >&2
if ! debootstrap --variant=minbase \
     --include=systemd,systemd-sysv,udev,dbus,kmod,$KERNEL,initramfs-tools,openssh-server,sudo,ca-certificates,iproute2,procps,python3 \
     "$CODENAME" "$ROOT" "$MIRROR" > "$BUILD/debootstrap.log" 2>&1; then
  tail -20 "$BUILD/debootstrap.log" >&2
  if grep -q -E "Failed getting release file|Couldn't download|Temporary failure resolving" "$BUILD/debootstrap.log"; then
    skip "the package mirror $MIRROR cannot be reached"
  fi
  echo "image.sh: debootstrap failed (above)" >&2
  exit 1
fi

# What a box has: a name, its disk in fstab, the network by DHCP (QEMU's user network), a
# resolver, the distribution's sources, a login for Vagrant.
echo docker-vs-vm-lab > "$ROOT/etc/hostname"
printf '127.0.1.1\tdocker-vs-vm-lab\n' >> "$ROOT/etc/hosts"
cat > "$ROOT/etc/fstab" <<'FSTAB'
/dev/vda  /         ext4  errors=remount-ro       0 1
# The repository, as Vagrant's synced folder (QEMU shares it over 9p, read-only).
vagrant   /vagrant  9p    trans=virtio,version=9p2000.L,msize=262144,ro,nofail  0 0
FSTAB
mkdir -p "$ROOT/vagrant"
cat > "$ROOT/etc/systemd/network/10-lab.network" <<'NET'
[Match]
Name=en* eth*
[Network]
DHCP=ipv4
NET
chroot "$ROOT" systemctl enable --quiet systemd-networkd.service
echo "nameserver 10.0.2.3" > "$ROOT/etc/resolv.conf"          # QEMU's user network's resolver
# This machine's own apt sources for its distribution (one of the two forms), instead of the
# single line debootstrap wrote: the same release, its updates and security archives.
if [ -f "$SOURCES" ]; then
  cp "$SOURCES" "$ROOT/etc/apt/sources.list.d/"
  rm -f "$ROOT/etc/apt/sources.list"
elif [ -s /etc/apt/sources.list ]; then
  cp /etc/apt/sources.list "$ROOT/etc/apt/sources.list"
fi
# Provisioning installs packages that make initramfs-tools rebuild the initrd, which takes
# minutes under TCG with every module in it (MODULES=most): build it for this VM's own devices
# (MODULES=dep). The VM boots the initrd made here, beside the disk, in any case.
sed -i 's/^MODULES=.*/MODULES=dep/' "$ROOT/etc/initramfs-tools/initramfs.conf"
if compgen -G "/usr/local/share/ca-certificates/*.crt" > /dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  chroot "$ROOT" update-ca-certificates > /dev/null 2>&1
fi
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$ROOT/etc/pip.conf"

chroot "$ROOT" useradd --create-home --shell /bin/bash vagrant
echo "vagrant ALL=(ALL) NOPASSWD: ALL" > "$ROOT/etc/sudoers.d/vagrant"
chmod 0440 "$ROOT/etc/sudoers.d/vagrant"
ssh-keygen -q -t ed25519 -N "" -C labvm -f "$BUILD/id_ed25519"
install -d -m 0700 -o 1000 -g 1000 "$ROOT/home/vagrant/.ssh"
install -m 0600 -o 1000 -g 1000 "$BUILD/id_ed25519.pub" "$ROOT/home/vagrant/.ssh/authorized_keys"
# The host keys were made by the package in the chroot: fine, the image is this test's only.

# The kernel and initrd, beside the disk: QEMU boots them directly.
kernels=("$ROOT"/boot/vmlinuz-*) initrds=("$ROOT"/boot/initrd.img-*)
cp "${kernels[-1]}" "$BUILD/vmlinuz"
cp "${initrds[-1]}" "$BUILD/initrd.img"

truncate -s 16G "$BUILD/disk.img"
mkfs.ext4 -q -F -L labvm -d "$ROOT" "$BUILD/disk.img"
rm -rf "$ROOT"
echo "$ID $CODENAME from $MIRROR, built $(date -u +%FT%TZ)" > "$BUILD/ready"
trap - EXIT
rm -rf "$OUT"
mv -T "$BUILD" "$OUT"
# Images of an older image.sh or another release are not used again.
for old in "$CACHE"/base-*; do
  [ "$old" = "$OUT" ] || rm -rf "$old"
done
echo "$OUT"
