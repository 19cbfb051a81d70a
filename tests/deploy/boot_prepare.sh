#!/usr/bin/env bash
# Run by tests/deploy/boot_units.sh inside the fresh Debian root (chroot, from the repository clone):
# installs the product as docs/deployment.md says, configures all five units on one host (the
# addresses 10.77.0.1 / 10.77.0.2 on lo, a tun name per daemon), enables them and lighttpd with the
# shipped snippet, and a one-shot unit that checks them after boot and powers the container off.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends systemd systemd-sysv dbus lighttpd openssl iproute2 \
  python3 python3-venv procps >/dev/null
bash deploy/install.sh --extras ""

# the admin's steps (docs/deployment.md, "After the installation")
openssl genpkey -algorithm RSA -out /etc/ikeme/server.key 2>/dev/null
openssl pkey -in /etc/ikeme/server.key -pubout -out /etc/ikeme/medsrv-public.pem
chgrp ikeme /etc/ikeme/server.key /etc/ikeme/medsrv-public.pem
chmod 0640 /etc/ikeme/server.key
echo "correct horse battery" | medmgr-client hash-password >/etc/ikeme/client-admin.hash
chgrp ikeme /etc/ikeme/client-admin.hash
chmod 0640 /etc/ikeme/client-admin.hash
kid=$(ikectl --json keyid /etc/ikeme/medsrv-public.pem | python3 -c 'import json,sys; print(json.load(sys.stdin)["keyid"])')
sed -i 's/^listen = .*/listen = ["127.0.0.1"]/; s/^dataplane = .*/dataplane = "userspace"/' /etc/ikeme/iked.toml
sed -i 's/remote_addrs = \["192.0.2.2"\]/remote_addrs = ["127.0.0.9"]/' /etc/ikeme/iked.toml
sed -i "s/^listen = .*/listen = [\"10.77.0.1\"]/; s/keyid:#0\{40\}/$kid/" /etc/ikeme/mediation-server.toml
sed -i 's/^\[daemon\]$/[daemon]\nlisten = ["10.77.0.2"]\ntun = "ipsec1"/' /etc/ikeme/mediation-client.toml
echo 'MS_ADDRESS=mediation.example.net' >>/etc/ikeme/medmgr-server.env
cp /opt/ikeme/share/ikeme/lighttpd-medmgr.conf /etc/lighttpd/conf-available/90-medmgr.conf
ln -sf ../conf-available/90-medmgr.conf /etc/lighttpd/conf-enabled/90-medmgr.conf

cat >/etc/systemd/system/ikeme-testnet.service <<'EOF'
[Unit]
Description=test addresses (10.77.0.1, 10.77.0.2 on lo)
DefaultDependencies=no
Before=iked.service mediation-server.service mediation-client.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip link set lo up
ExecStart=/sbin/ip addr add 10.77.0.1/32 dev lo
ExecStart=/sbin/ip addr add 10.77.0.2/32 dev lo
[Install]
WantedBy=multi-user.target
EOF

cat >/usr/local/sbin/ikeme-selftest <<'EOF'
#!/bin/bash
# PASS/FAIL lines for tests/deploy/boot_units.sh, then power off
check() { if eval "$2" >/dev/null 2>&1; then echo "PASS $1"; else echo "FAIL $1"; fi; }
U="iked mediation-server mediation-client medmgr-server medmgr-client"
for _ in $(seq 30); do  # until every unit has settled (active, or failed for good)
  systemctl is-active $U lighttpd 2>/dev/null | grep -qv -x -e active -e failed || break; sleep 1
done
for u in $U lighttpd; do
  check "$u active" "systemctl is-active -q $u"
  echo "  $(systemctl show -p ActiveState,SubState,Type,User,Group,StatusText $u | tr '\n' ' ')"
done
caps() { grep ^CapEff "/proc/$(systemctl show -p MainPID --value "$1")/status" | awk '{print $2}'; }
check "iked runs as ikeme with NET_ADMIN NET_BIND_SERVICE NET_RAW only" \
  '[ "$(ps -o user= -p "$(systemctl show -p MainPID --value iked)")" = ikeme ] && [ "$(caps iked)" = 0000000000003400 ]'
check "mediation-client capabilities" '[ "$(caps mediation-client)" = 0000000000003400 ]'
check "mediation-server has NET_BIND_SERVICE only" '[ "$(caps mediation-server)" = 0000000000000400 ]'
check "portals have no capabilities" '[ "$(caps medmgr-server)" = 0000000000000000 ] && [ "$(caps medmgr-client)" = 0000000000000000 ]'
check "ikectl reaches iked at /run/ikeme/iked.ctl" "ikectl -s /run/ikeme/iked.ctl conns"
check "ikectl status of the mediation server" "ikectl -s /run/ikeme/mediation-server.ctl status"
check "ikectl status of the mediation client" "ikectl -s /run/ikeme/mediation-client.ctl status"
check "the client manager reaches the mediation client's socket from inside its sandbox" \
  "nsenter -t $(systemctl show -p MainPID --value medmgr-client) -m setpriv --reuid ikeme --regid www-data \
     --groups ikeme -- /opt/ikeme/bin/ikectl -s /run/ikeme/mediation-client.ctl conns"
check "TUN devices ipsec0 and ipsec1" "ip link show ipsec0 && ip link show ipsec1"
check "databases in /var/lib/ikeme, owner-only" \
  '[ "$(stat -c %U:%a /var/lib/ikeme/med_db.sqlite /var/lib/ikeme/client.sqlite | sort -u)" = ikeme:600 ]'
check "systemctl reload iked" "systemctl reload iked && systemctl is-active -q iked"
check "systemctl reload mediation-server" "systemctl reload mediation-server && systemctl is-active -q mediation-server"
for path in /medsrv/user/login /medcli/; do
  check "lighttpd serves $path through the portal's socket" \
    "/opt/ikeme/bin/python -c 'import urllib.request as u; assert u.urlopen(\"http://127.0.0.1$path\", timeout=10).status == 200'"
done
check "stopping medmgr-server keeps the client manager's socket" \
  "systemctl stop medmgr-server && [ -S /run/medmgr/client-manager.sock ] && systemctl start medmgr-server"
check "stopping iked keeps the other control sockets" \
  "systemctl stop iked && [ -S /run/ikeme/mediation-server.ctl ] && [ -S /run/ikeme/mediation-client.ctl ] && systemctl start iked"
for u in $U; do echo "  $(systemd-analyze security "$u" 2>/dev/null | tail -n 1)"; done
journalctl -b --no-pager -p warning -u 'iked' -u 'mediation-*' -u 'medmgr-*' | sed 's/^/  journal: /'
echo SELFTEST-DONE
systemctl poweroff
EOF
chmod 755 /usr/local/sbin/ikeme-selftest
cat >/etc/systemd/system/ikeme-selftest.service <<'EOF'
[Unit]
Description=checks of the installed units
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ikeme-selftest
StandardOutput=file:/root/selftest.log
StandardError=inherit
[Install]
WantedBy=default.target
EOF
systemctl enable -q ikeme-testnet ikeme-selftest lighttpd iked mediation-server mediation-client \
  medmgr-server medmgr-client
echo "prepared"
