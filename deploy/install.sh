#!/usr/bin/env bash
# Install (or upgrade) the IKEv2 Mediation Service from this checkout, as root.  Idempotent.
#
#   bash deploy/install.sh [--root DIR] [--extras LIST] [--python PYTHON]
#   bash deploy/install.sh --uninstall [--root DIR]
#
# What goes where (docs/deployment.md):
#   /opt/ikeme                      its own virtualenv with the product installed (not editable);
#                                   the commands in /opt/ikeme/bin, linked from /usr/local/bin
#   /opt/ikeme/share/ikeme          example configs, web server snippets, docs (replaced on upgrade)
#   /usr/lib/sysusers.d/ikeme.conf  the service account ikeme (created with systemd-sysusers)
#   /etc/ikeme                      configuration, root:ikeme 0750; the examples are copied there only
#                                   when a file is absent: an admin's file is never overwritten
#   /var/lib/ikeme, /var/log/ikeme  state (SQLite databases) and optional log files, ikeme 0750
#   /etc/systemd/system             the six units (replaced on upgrade; customize with drop-ins)
# Options:
#   --root DIR     install into DIR instead of / (staging, tests): users are created in DIR/etc with
#                  systemd-sysusers --root, systemctl is not called; the virtualenv is made at
#                  DIR/opt/ikeme and runs from there
#   --extras LIST  optional dependencies to install, comma-separated (default: postgresql,mysql; "" = none)
#   --python PY    the Python (3.11 or newer) for the virtualenv (default: python3)
#   --uninstall    stop and disable the units, remove them, the commands, /opt/ikeme and the sysusers
#                  entry; keep /etc/ikeme, /var/lib/ikeme, /var/log/ikeme and the ikeme account
set -euo pipefail
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=/
EXTRAS=postgresql,mysql
PY=python3
UNINSTALL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=$(realpath -m "$2"); shift 2 ;;
    --extras) EXTRAS=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --uninstall) UNINSTALL=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
D=${ROOT%/}  # prefix for every target path ("" for /)

PREFIX=/opt/ikeme
SHARE=$PREFIX/share/ikeme
CONF=/etc/ikeme
UNITDIR=/etc/systemd/system
SYSUSERS=/usr/lib/sysusers.d/ikeme.conf
USER_NAME=ikeme
COMMANDS=(iked ikectl ikeme-ipsec mediation-server mediation-client medmgr-server medmgr-client medmgr-sa)
UNITS=(iked.service mediation-server.service mediation-client.service medmgr-server.service
       medmgr-client.service medmgr-sa.service)
live() { [ -z "$D" ] && [ -d /run/systemd/system ]; }  # systemd runs this very system
say() { echo "install.sh: $*"; }

if [ "$UNINSTALL" = 1 ]; then
  if live; then
    systemctl disable --now "${UNITS[@]}" 2>/dev/null || true
  fi
  for u in "${UNITS[@]}"; do rm -f "$D$UNITDIR/$u"; done
  for c in "${COMMANDS[@]}"; do
    l="$D/usr/local/bin/$c"
    if [ -L "$l" ] && [ "$(readlink "$l")" = "$PREFIX/bin/$c" ]; then rm -f "$l"; fi
  done
  rm -rf --one-file-system "${D:?}$PREFIX" "$D$SYSUSERS"
  if live; then systemctl daemon-reload; fi
  say "removed the units, the commands and $PREFIX"
  say "kept $CONF, /var/lib/ikeme, /var/log/ikeme and the account $USER_NAME; to remove those too:"
  say "  rm -rf $CONF /var/lib/ikeme /var/log/ikeme /run/ikeme /run/medmgr; userdel $USER_NAME"
  exit 0
fi

# -- system packages (only on the live system; Debian)
if [ -z "$D" ] && command -v dpkg-query >/dev/null; then
  need=()
  # python3-venv: the virtualenv; procps: /bin/kill for the units' ExecReload
  for p in python3 python3-venv procps; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
  fi
fi
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "install.sh: $PY is older than Python 3.11" >&2; exit 1; }

# -- the virtualenv and the product (built from a clean copy: no build/ or egg-info in the checkout)
if [ ! -x "$D$PREFIX/bin/python" ]; then
  say "creating the virtualenv $D$PREFIX"
  "$PY" -m venv "$D$PREFIX"
fi
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=./test-output --exclude=./out -cf - . | tar -C "$build" -xf -
spec="$build"
[ -z "$EXTRAS" ] || spec="$build[$EXTRAS]"
say "installing $(sed -n 's/^version = "\(.*\)"/ikeme \1/p' "$SRC/pyproject.toml") into $D$PREFIX"
"$D$PREFIX/bin/python" -m pip install -q --disable-pip-version-check --no-warn-script-location "$spec"
for c in "${COMMANDS[@]}"; do
  [ -x "$D$PREFIX/bin/$c" ] || { echo "install.sh: $D$PREFIX/bin/$c is missing" >&2; exit 1; }
done
# schema.sql lives beside the packages in the source tree, not in any package: put it where
# med_db.schema looks for it (the portals and daemons create their tables from it)
schema_path=$("$D$PREFIX/bin/python" -I -c 'from med_db.schema import SCHEMA_PATH; print(SCHEMA_PATH)')
install -m 0644 "$SRC/schema.sql" "$schema_path"

# -- shared files: examples, web server snippets, docs
install -d -m 0755 "$D$SHARE/examples" "$D$SHARE/doc"
install -m 0644 "$SRC"/deploy/examples/* "$D$SHARE/examples/"
install -m 0644 "$SRC"/deploy/lighttpd-medmgr.conf "$SRC"/deploy/apache-medmgr.conf \
  "$SRC"/deploy/README-medmgr.md "$SRC"/schema.sql "$D$SHARE/"
install -m 0644 "$SRC"/docs/deployment.md "$SRC"/docs/configuration.md "$D$SHARE/doc/"

# -- the service account
install -d -m 0755 "$D/usr/lib/sysusers.d"
install -m 0644 "$SRC/deploy/ikeme.sysusers" "$D$SYSUSERS"
if command -v systemd-sysusers >/dev/null; then
  install -d -m 0755 "$D/etc"
  systemd-sysusers --root="${D:-/}" ikeme.conf  # found in $D/usr/lib/sysusers.d
elif [ -z "$D" ]; then
  getent passwd "$USER_NAME" >/dev/null || useradd --system --user-group --home-dir /var/lib/ikeme \
    --no-create-home --shell /usr/sbin/nologin --comment "IKEv2 Mediation Service" "$USER_NAME"
else
  echo "install.sh: --root needs systemd-sysusers (package systemd)" >&2; exit 1
fi
uid=$(awk -F: -v n="$USER_NAME" '$1 == n { print $3 }' "$D/etc/passwd")
gid=$(awk -F: -v n="$USER_NAME" '$1 == n { print $3 }' "$D/etc/group")
[ -n "$uid" ] && [ -n "$gid" ] || { echo "install.sh: no account $USER_NAME in $D/etc" >&2; exit 1; }

# -- configuration (never overwritten) and state directories
install -d -m 0750 -o 0 -g "$gid" "$D$CONF"
for f in iked.toml mediation-server.toml mediation-client.toml medmgr-server.env medmgr-client.env \
         medmgr-sa.env; do
  if [ -e "$D$CONF/$f" ]; then
    cmp -s "$SRC/deploy/examples/$f" "$D$CONF/$f" || say "kept $CONF/$f (yours; the current example is $SHARE/examples/$f)"
  else
    install -m 0640 -o 0 -g "$gid" "$SRC/deploy/examples/$f" "$D$CONF/$f"
    say "created $CONF/$f from the example"
  fi
done
install -d -m 0750 -o "$uid" -g "$gid" "$D/var/lib/ikeme" "$D/var/log/ikeme"

# -- systemd units: ours, replaced on upgrade.  One an admin changed in place (it differs from the copy
#    the previous install recorded in $SHARE/units) is kept as NAME.old first.
install -d -m 0755 "$D$UNITDIR" "$D$SHARE/units"
for u in "${UNITS[@]}"; do
  t="$D$UNITDIR/$u" rec="$D$SHARE/units/$u"
  if [ -e "$t" ] && ! cmp -s "$t" "$SRC/deploy/$u" && ! { [ -e "$rec" ] && cmp -s "$t" "$rec"; }; then
    cp -p "$t" "$t.old"
    say "replaced $UNITDIR/$u, kept yours as $UNITDIR/$u.old (customize with: systemctl edit ${u%.service})"
  fi
  install -m 0644 "$SRC/deploy/$u" "$t"
  install -m 0644 "$SRC/deploy/$u" "$rec"
done
if live; then systemctl daemon-reload; fi

# -- the commands on PATH
install -d -m 0755 "$D/usr/local/bin"
for c in "${COMMANDS[@]}"; do
  l="$D/usr/local/bin/$c"
  if [ -e "$l" ] && [ ! -L "$l" ]; then
    say "left /usr/local/bin/$c alone (not a symlink); the command is $PREFIX/bin/$c"
  else
    ln -sfn "$PREFIX/bin/$c" "$l"
  fi
done

cat <<EOF

Installed into ${D:-/}.  Next steps (docs/deployment.md, also in $SHARE/doc/):
  1. Edit the configuration in $CONF: iked.toml, mediation-server.toml or mediation-client.toml
     (docs/configuration.md); keys and certificates there too, readable by group $USER_NAME
     (chgrp $USER_NAME FILE; chmod 0640 FILE).
  2. Mediation server host: the server's key and the public key the portal shows:
       openssl genpkey -algorithm RSA -out $CONF/server.key
       openssl pkey -in $CONF/server.key -pubout -out $CONF/medsrv-public.pem
       chgrp $USER_NAME $CONF/server.key $CONF/medsrv-public.pem; chmod 0640 $CONF/server.key
     set MS_ADDRESS in $CONF/medmgr-server.env, then:
       systemctl enable --now mediation-server medmgr-server
  3. Mediation client host: the client manager's admin password, then the services:
       medmgr-client hash-password > $CONF/client-admin.hash   (type the password, then Enter)
       systemctl enable --now medmgr-client mediation-client
  4. Site-to-site gateway: systemctl enable --now iked
     Remote-access gateway's SA manager: medmgr-sa --add-operator LOGIN --db sqlite:////var/lib/ikeme/sa-manager.sqlite
       (then chown $USER_NAME: that file), systemctl enable --now medmgr-sa
  5. Web server: $SHARE/lighttpd-medmgr.conf or apache-medmgr.conf (README-medmgr.md).
  Firewall: UDP 500 and 4500; on the mediation server also the relay ports ([mediation] relay_ports,
  default UDP 50000-50999); the portal's HTTPS port.
  Control: ikectl list / ikectl status (with several daemons: ikectl -s /run/ikeme/NAME.ctl ...).
EOF
