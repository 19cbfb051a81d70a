#!/usr/bin/env bash
# The five units for real: a fresh minimal Debian 12 root (tests/deploy/fresh_debian.sh) gets the
# product installed with deploy/install.sh and configured as docs/deployment.md says
# (tests/deploy/boot_prepare.sh), then boots under systemd-nspawn (systemd as PID 1, a private
# network) and checks every unit there: active, user, capabilities, control sockets, TUN devices,
# reload, the portals behind lighttpd, shared runtime directories.  As root; minutes; needs the
# Debian mirror and PyPI.  Not collected by pytest.
#
#   bash tests/deploy/boot_units.sh          prints PASS/FAIL lines; exit 0 when all pass
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN="${FRESH_ROOT:-/var/tmp/deb12}-run"
command -v systemd-nspawn >/dev/null || apt-get install -y -q systemd-container >/dev/null

KEEP=1 bash "$HERE/fresh_debian.sh" "bash tests/deploy/boot_prepare.sh"
rm -f "$RUN/root/selftest.log"
t0=$(date +%s)
# nspawn wants /run to be a tmpfs of its own: give it one in a private mount namespace
unshare --mount --propagation private sh -c \
  "mount -t tmpfs -o mode=755 tmpfs /run && exec timeout --kill-after=10 300 systemd-nspawn -q -b \
     -D '$RUN' --private-network --register=no --keep-unit -M ikeme-boot-check" \
  >"$RUN/root/boot.log" 2>&1 || echo "boot_units: systemd-nspawn exited with $? (log: $RUN/root/boot.log)"
echo "boot_units: booted, checked and powered off in $(( $(date +%s) - t0 )) s"
status=0
if [ -f "$RUN/root/selftest.log" ] && grep -q SELFTEST-DONE "$RUN/root/selftest.log"; then
  cat "$RUN/root/selftest.log"
  grep -q "^FAIL" "$RUN/root/selftest.log" && status=1
else
  echo "boot_units: the self-test did not finish; $RUN/root/boot.log:" >&2
  tail -n 30 "$RUN/root/boot.log" >&2
  status=1
fi
if findmnt -rn -o TARGET | grep -q "^$RUN/"; then
  echo "boot_units: mounts left under $RUN; not removing it" >&2; exit 1
fi
[ "${KEEP:-0}" = 1 ] || rm -rf --one-file-system "$RUN"
exit "$status"
