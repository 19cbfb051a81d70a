"""iked with the gateway's sources: start-up errors are one line and exit status 2; the database's
connections join the TOML file's; a fresh snapshot adds a connection without a restart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from core_ike.daemon.config import load
from gateway.daemon import GatewayDaemon
from gateway.launch import build
from gateway.sqlconf.source import SqlConfigSource
from tests.unit.gateway.sqldata import load_sql

IPS = {"PH_IP_MOON": "127.0.0.1", "PH_IP_SUN": "127.0.0.2"}


def toml(tmp_path: Path, extra: str) -> Path:
    p = tmp_path / "iked.toml"
    p.write_text(f'[daemon]\nlisten = ["127.0.0.1"]\ncontrol = "{tmp_path}/ctl"\ndataplane = "none"\n{extra}')
    return p


@pytest.mark.parametrize("extra,msg", [
    ('config_db = "sqlite:///DIR/empty.db"\n', "config_db: cannot read the configuration: "),
    ('config_db = "sqlite:///DIR/x.db"\nworkers = 2\n', "config_db needs workers = 1"),
    ('config_db = "no-url"\n', "is not a database URL"),
    ('ipsec_conf = "DIR/nonexistent.conf"\n', "cannot read"),
    ('ipsec_conf = "DIR/ipsec.conf"\n[connections.a]\nremote_addrs = ["127.0.0.9"]\n', "conn 'a' is also"),
])
def test_startup_errors(tmp_path: Path, extra: str, msg: str) -> None:
    (tmp_path / "ipsec.conf").write_text("conn a\n    right=127.0.0.9\n    authby=psk\n    auto=add\n")
    p = subprocess.run([sys.executable, "-m", "core_ike.daemon.main", "-c",
                        str(toml(tmp_path, extra.replace("DIR", str(tmp_path))))],
                       capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[3])
    err = p.stderr.strip()
    assert p.returncode == 2 and msg in err and len(err.splitlines()) == 1, err


def test_database_connections_join_the_files_and_arrive_live(tmp_path: Path) -> None:
    db = create_engine(f"sqlite:///{tmp_path}/cfg.db")
    load_sql(db, "net2net-psk.sql", IPS)
    (tmp_path / "ipsec.conf").write_text("conn classic\n    right=127.0.0.9\n    authby=psk\n    auto=add\n")
    path = toml(tmp_path, f'config_db = "sqlite:///{tmp_path}/cfg.db"\nipsec_conf = "{tmp_path}/ipsec.conf"\n'
                '[connections.own]\nremote_addrs = ["127.0.0.8"]\n')
    d = build(load(path))
    assert isinstance(d, GatewayDaemon) and isinstance(d.source, SqlConfigSource)
    assert [c.name for c in d.engine.configs] == ["own", "classic", "net-net"]
    load_sql(db, "INSERT INTO peer_configs (name, ike_cfg, local_id, remote_id, auth_method) "
                 "VALUES ('late', 1, 1, 3, 2);", create=False)
    before = d.engine.configs[2]
    d.apply_snapshot(d.source.read())
    assert [c.name for c in d.engine.configs] == ["own", "classic", "net-net", "late"]
    assert d.engine.configs[2] is before  # unchanged rows keep their object (live SAs point at it)
    assert d.engine.config_miss == d.source.miss
