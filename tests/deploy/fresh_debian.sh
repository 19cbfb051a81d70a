#!/usr/bin/env bash
# Run the README's commands on a fresh minimal Debian 12 (debootstrap --variant=minbase), as root.
#
#   bash tests/deploy/fresh_debian.sh [COMMAND ...]      default: "bash scripts/demo.sh" "bash scripts/test.sh"
#
# Not collected by pytest (minutes, needs the Debian mirror and PyPI).  What it does:
#   1. $FRESH_ROOT (default /var/tmp/deb12): a minbase bookworm root, made once with debootstrap and
#      never changed afterwards;
#   2. $FRESH_ROOT-run: a copy of it with a `git clone` of this repository's HEAD in /root/ikeme
#      (commit first: the work tree's changes are not copied);
#   3. each COMMAND runs there under chroot, from /root/ikeme, with an empty environment, inside new
#      mount and PID namespaces (unshare): the root itself (bound onto itself: `ip netns exec` needs "/"
#      to be a mount point), /proc, /sys, /dev and a tmpfs /run are mounted in the new mount namespace
#      only, so they vanish with it, and every process a command leaves behind is
#      killed when it ends.  The host's network is shared (apt and pip need it; the labs make their own
#      namespaces).  Each command's output goes to $FRESH_ROOT-run/root/NAME.log; its duration and
#      exit status are printed.
# Chroot-only adjustments, as container images make them: /usr/sbin/policy-rc.d refuses to start
# services from package scripts (no init system runs there; the tests start their own servers), and a
# CA bundle named by PIP_CERT / SSL_CERT_FILE on the host (a TLS-inspecting proxy) is passed to pip.
# KEEP=1 keeps $FRESH_ROOT-run afterwards for inspection (re-running replaces it).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PRISTINE=${FRESH_ROOT:-/var/tmp/deb12}
RUN="$PRISTINE-run"
MIRROR=${MIRROR:-http://deb.debian.org/debian}
[ "$(id -u)" = 0 ] || { echo "fresh_debian: needs root" >&2; exit 1; }
[ $# -gt 0 ] || set -- "bash scripts/demo.sh" "bash scripts/test.sh"

if [ ! -f "$PRISTINE/etc/debian_version" ]; then
  command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >/dev/null
  t0=$(date +%s)
  debootstrap --variant=minbase bookworm "$PRISTINE" "$MIRROR" >"$PRISTINE.debootstrap.log" 2>&1 \
    || { tail -n 20 "$PRISTINE.debootstrap.log" >&2; exit 1; }
  echo "fresh_debian: debootstrap --variant=minbase bookworm: $(( $(date +%s) - t0 )) s"
fi

if findmnt -rn -o TARGET | grep -q "^$RUN/"; then
  echo "fresh_debian: something is still mounted under $RUN; refusing to replace it" >&2; exit 1
fi
rm -rf --one-file-system "$RUN"
cp -a "$PRISTINE" "$RUN"
git clone -q "$REPO" "$RUN/root/ikeme"
printf '#!/bin/sh\nexit 101\n' >"$RUN/usr/sbin/policy-rc.d"
chmod 755 "$RUN/usr/sbin/policy-rc.d"
cp -L /etc/resolv.conf "$RUN/etc/resolv.conf" 2>/dev/null || true

ENVV=(HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
ca=${PIP_CERT:-${SSL_CERT_FILE:-}}
if [ -n "$ca" ] && [ -f "$ca" ]; then
  cp -L "$ca" "$RUN/root/.host-ca.pem"
  ENVV+=(PIP_CERT=/root/.host-ca.pem)
fi

run_in_root() {  # $1: log name, $2: command line (run by bash in /root/ikeme)
  unshare --mount --pid --fork --kill-child --propagation private \
    env RUN="$RUN" bash -c '
      set -e
      mount --bind "$RUN" "$RUN"  # "/" a mount point there: ip netns exec runs mount --make-rslave /
      mount -t proc proc "$RUN/proc"
      mount --rbind /sys "$RUN/sys"
      mount --rbind /dev "$RUN/dev"
      mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$RUN/run"
      mkdir -p "$RUN/run/lock"
      exec chroot "$RUN" env -i "${@:3}" bash -c "cd /root/ikeme && $2" >"$RUN/root/$1.log" 2>&1
    ' fresh "$1" "$2" "${ENVV[@]}"
}

status=0
n=0
for cmd in "$@"; do
  n=$((n + 1))
  name="cmd$n-$(echo "$cmd" | tr -c 'A-Za-z0-9.-' '_' | cut -c1-40)"
  t0=$(date +%s)
  if run_in_root "$name" "$cmd"; then rc=0; else rc=$?; fi
  echo "fresh_debian: '$cmd': exit $rc after $(( $(date +%s) - t0 )) s (log: $RUN/root/$name.log)"
  tail -n 5 "$RUN/root/$name.log" | sed 's/^/    /'
  [ "$rc" = 0 ] || status=1
done

if findmnt -rn -o TARGET | grep -q "^$RUN/"; then
  echo "fresh_debian: mounts left under $RUN; not removing it" >&2; exit 1
fi
[ "${KEEP:-0}" = 1 ] || rm -rf --one-file-system "$RUN"
exit "$status"
