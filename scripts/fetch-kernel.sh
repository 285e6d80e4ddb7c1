#!/usr/bin/env bash
# Fetch the distribution's kernel package once, unpack it, and print the path of its vmlinuz.
#
#   scripts/fetch-kernel.sh        ->  /var/cache/labhelper-guest/kernel/root/boot/vmlinuz-VERSION
#
# Who needs it: chapter 08 boots a real kernel under QEMU, and tests/guest boots one with pure
# cgroup v2. The lab VM has its own kernel in /boot; a machine without one (a CI runner, a
# container) gets Debian's linux-image-amd64 (or Ubuntu's linux-image-generic, with its modules)
# with `apt-get download`: nothing is installed, the package is only unpacked into the cache
# ($LABHELPER_GUEST_CACHE, /var/cache/labhelper-guest by default). Exit 77 with a reason on stderr
# when it cannot (no apt, no package registry reachable).
set -euo pipefail
CACHE=${LABHELPER_GUEST_CACHE:-/var/cache/labhelper-guest}
skip() { echo "SKIP: $*" >&2; exit 77; }
for tool in apt-get apt-cache dpkg-deb depmod; do
  command -v "$tool" >/dev/null || skip "$tool is not installed: this fetches a Debian or Ubuntu kernel package"
done
mkdir -p "$CACHE"
if [ ! -f "$CACHE/kernel/ready" ]; then
  # Package lists present? (a fresh image has only the partial/ folder there)
  if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
    apt-get update -qq || skip "apt-get update failed (no package registry reachable?)"
  fi
  meta=$(apt-cache show linux-image-amd64 >/dev/null 2>&1 && echo linux-image-amd64 || echo linux-image-generic)
  image=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$image" ] || skip "no distribution kernel package ($meta) is known to apt here"
  version=${image#linux-image-}
  pkgs=("$image")
  for extra in "linux-modules-$version" "linux-modules-extra-$version"; do
    if apt-cache show "$extra" >/dev/null 2>&1; then pkgs+=("$extra"); fi
  done
  rm -rf "$CACHE/kernel" && mkdir -p "$CACHE/kernel/root"
  (cd "$CACHE/kernel" && apt-get download -q "${pkgs[@]}" >/dev/null 2>&1) \
    || skip "apt-get download ${pkgs[*]} failed (no package registry reachable?)"
  for deb in "$CACHE"/kernel/*.deb; do dpkg-deb -x "$deb" "$CACHE/kernel/root"; done
  rm -f "$CACHE"/kernel/*.deb
  KVER=$(find "$CACHE/kernel/root/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | head -1)
  depmod -b "$CACHE/kernel/root" "$KVER"
  echo "$KVER" > "$CACHE/kernel/ready"
fi
find "$CACHE/kernel/root/boot" -maxdepth 1 -name 'vmlinuz-*' | head -1
