#!/usr/bin/env bash
# Builds (once) the Debian 12 root file system that tests/nspawn boots with
# systemd-nspawn, and prints its path. Idempotent and cached: the tree is
# built in a temporary directory and renamed into place only when complete,
# under a name derived from everything that decides its contents, so a
# finished tree is never rebuilt and a half-built one is never used.
#
# Usage: build_rootfs.sh [CACHE_DIR]   (default /var/cache/ipamd-test; needs root)
#
# The tree holds what a fresh Debian 12 host has before ipamd is installed:
# systemd as init, D-Bus (busctl, which the test uses to watch a unit's
# StatusText), and python3 with python3-venv (install.sh would apt-get it,
# but the container has no network). ipamd itself is not in it: the test
# installs it with systemd/install.sh, as the README says.
set -euo pipefail

cache=${1:-/var/cache/ipamd-test}
suite=bookworm
mirror=http://deb.debian.org/debian
packages=systemd,systemd-sysv,dbus,python3,python3-venv
key=$(printf '%s\n' "$suite" "$mirror" "$packages" minbase | sha256sum | cut -c1-12)
rootfs=$cache/rootfs-$suite-$key

if [ -x "$rootfs/usr/bin/python3" ] && [ -e "$rootfs/.complete" ]; then
    echo "$rootfs"
    exit 0
fi

command -v debootstrap >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends debootstrap >/dev/null
}

mkdir -p "$cache"
# One build at a time (CI runs and engineers may share the cache); whoever
# waited finds the tree done.
exec 9>"$cache/.lock"
flock 9
if [ -x "$rootfs/usr/bin/python3" ] && [ -e "$rootfs/.complete" ]; then
    echo "$rootfs"
    exit 0
fi
work=$(mktemp -d "$cache/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
debootstrap --variant=minbase --include="$packages" "$suite" "$work/rootfs" "$mirror" >&2
# An empty machine-id: systemd makes one at each boot (a container's first
# boot then counts as a first boot, as on a fresh host).
: >"$work/rootfs/etc/machine-id"
# No getty on the container's console: nothing reads it, and it would only
# respawn.
ln -sf /dev/null "$work/rootfs/etc/systemd/system/console-getty.service"
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb
touch "$work/rootfs/.complete"
rm -rf "$rootfs"
mv "$work/rootfs" "$rootfs"
echo "$rootfs"
