#!/usr/bin/env bash
# Idempotent setup on a fresh Debian 12 machine, as root: system packages and the project's venv.
# Sourced by scripts/test.sh and scripts/demo.sh; safe to run on its own.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

APT_PACKAGES=(
  python3 python3-venv iproute2 nftables iptables iputils-ping conntrack tcpdump tshark iperf3 ethtool valgrind
  strongswan-charon strongswan-swanctl strongswan-libcharon libstrongswan
  libstrongswan-standard-plugins libstrongswan-extra-plugins libcharon-extra-plugins
  charon-systemd strongswan-pki strongswan-starter
  lighttpd apache2 postgresql mariadb-server chromium fonts-dejavu-core
  # the mediation cluster's engine (redis-server) and the engines it was measured against (bench/cluster_engine.py)
  redis-server nats-server
  # the port-mapping gateway of the NAT lab (NAT-PMP, PCP, UPnP IGD; its nftables backend)
  miniupnpd-nftables
  # what a minimal Debian (debootstrap --variant=minbase) lacks and nothing above is sure to pull in:
  # libatomic1 for Playwright's bundled node (browser tests), procps for sysctl (tests) and /bin/kill
  # (the units' ExecReload), systemd for systemd-analyze and systemd-sysusers (tests/deploy/), git for
  # the commit stamp of bench results and the tests that read the tracked files
  libatomic1 procps systemd git
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing system packages (${missing[*]}); run as root" >&2; exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -q >/dev/null
  apt-get install -y -q "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PY" -m venv "$ROOT/.venv"
fi
stamp="$ROOT/.venv/.installed-$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$ROOT/.venv/bin/pip" install -q --upgrade pip >/dev/null
  "$ROOT/.venv/bin/pip" install -q -e "$ROOT[test]"
  rm -f "$ROOT"/.venv/.installed-*; touch "$stamp"
fi

# The commands on PATH (root only): /usr/local/bin/NAME -> .venv/bin/NAME.  A NAME there that is no
# symlink, or links to the installed product (/opt/ikeme, deploy/install.sh), is left alone.
if [ "$(id -u)" = 0 ]; then
  mkdir -p /usr/local/bin
  for c in iked ikectl ikeme-ipsec mediation-server mediation-client medmgr-server medmgr-client medmgr-sa; do
    l=/usr/local/bin/$c t="$ROOT/.venv/bin/$c"
    [ -x "$t" ] || continue
    if [ -L "$l" ]; then
      case "$(readlink "$l")" in "$t"|/opt/ikeme/*) continue ;; esac
    elif [ -e "$l" ]; then
      continue
    fi
    ln -sfn "$t" "$l"
  done
fi
