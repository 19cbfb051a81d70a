"""A client with several mediation servers moves within 30 s of its server's death with the defaults
(mediation_client/failover.py `failover_liveness`): its mediation connection's liveness check and
retransmissions are shortened unless its TOML sets them; a single-server client keeps the usual ones."""

from __future__ import annotations

from pathlib import Path

from core_ike.daemon.config import MEDIATION_DPD_DELAY, DaemonConfig, load
from core_ike.ike.config import RetransmitConfig
from mediation_client.failover import FAILOVER_DPD_DELAY, FAILOVER_RETRANSMIT, failover_liveness

BASE = """
[daemon]
listen = ["127.0.0.1"]

[[secrets.ike]]
id = ["alice@med", "med@example"]
secret = "0123456789abcdef0123456789abcdef"

[connections.medsrv]
remote_addrs = [{addrs}]
mediation = true
local = {{ id = "alice@med", auth = "psk" }}
remote = {{ id = "med@example", auth = "psk" }}
{extra}
"""


def _cfg(tmp_path: Path, addrs: str, extra: str = "") -> DaemonConfig:
    p = tmp_path / "c.toml"
    p.write_text(BASE.format(addrs=addrs, extra=extra))
    return load(p)


def test_several_servers_fail_over_within_30_s_by_default(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, '"192.0.2.1"')
    failover_liveness(cfg, {"servers": ["192.0.2.1", "192.0.2.2"]})
    c = cfg.connections[0]
    assert c.dpd_delay == FAILOVER_DPD_DELAY and c.retransmit == FAILOVER_RETRANSMIT
    # idle until the check, then its retransmissions run out (RFC 7296 §2.4), then the next server:
    # an IKE_SA_INIT and IKE_AUTH on the early schedule leave seconds of the 30
    assert c.dpd_delay + c.retransmit.give_up_after() < 25.0
    # several remote_addrs without [client] servers: the same
    cfg2 = _cfg(tmp_path, '"192.0.2.1", "192.0.2.2"')
    failover_liveness(cfg2, {})
    assert cfg2.connections[0].dpd_delay == FAILOVER_DPD_DELAY


def test_explicit_settings_and_single_servers_are_kept(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, '"192.0.2.1"', 'dpd_delay = "3s"\n[connections.medsrv.retransmit]\ntries = 2\n')
    failover_liveness(cfg, {"servers": ["a.example", "b.example"]})
    c = cfg.connections[0]
    assert c.dpd_delay == 3.0 and c.retransmit == RetransmitConfig(tries=2)
    one = _cfg(tmp_path, '"192.0.2.1"')
    failover_liveness(one, {})
    c = one.connections[0]
    assert c.dpd_delay == MEDIATION_DPD_DELAY and c.retransmit == RetransmitConfig()
