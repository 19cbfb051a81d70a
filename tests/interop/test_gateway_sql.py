"""Our iked configured from a database in strongSwan's SQL schema, with a real charon as road warrior.

moon (our iked on alice 192.0.2.1) reads its peer configs, identities and PSKs from an SQLite file
written the way strongSwan's sql scenarios write data.sql; charon on bob (192.0.2.2) initiates as
carol@lab. Then rows for dave@lab are inserted while iked runs, and charon's second connection (dave)
establishes without a restart of iked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from gateway.ipsec_cmd import main as ipsec_cmd
from gateway.sqlconf.pools import PoolAdmin
from scenarios.lab import Lab
from scenarios.lab.charon import Charon, CharonError
from scenarios.lab.iked import Iked
from scenarios.lab.netns import wait_for
from tests.guards import needs
from tests.interop.charon_pair import esp_on_wire
from tests.unit.gateway.sqldata import load_sql

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    needs("root", "strongswan", why="strongSwan charon in network namespaces"),
]

A, B = "192.0.2.1", "192.0.2.2"
A_IN, CAROL_IN, DAVE_IN = "10.10.1.1", "10.10.2.1", "10.10.2.2"
PSK = {"carol": "carol-sql-secret-0123456789", "dave": "dave-sql-secret-9876543210", "erin": "erin-sql-secret-5555555555"}


def _hex(s: str) -> str:
    return s.encode().hex()


def _ip(a: str) -> str:
    return bytes(int(x) for x in a.split(".")).hex()


def _rw_rows(name: str, ts: str | None, pool: str | None = None) -> str:
    """Road warrior `name`@lab at moon (identity 1, ike_cfg 1, selector 1 its subnet, proposal 2 for ESP): its
    identity, its PSK bound to moon and it, peer and child config `name`, and its selector `ts` (None:
    dynamic, kind 3), each referring to the rows it adds as strongSwan's tables number them (the newest)."""
    newest = "(SELECT max(id) FROM {})".format
    remote_ts = (f"INSERT INTO traffic_selectors (type, start_addr, end_addr) VALUES (7, X'{_ip(ts)}', X'{_ip(ts)}');"
                 if ts is not None else "INSERT INTO traffic_selectors (type) VALUES (7);")
    return f"""
INSERT INTO identities (type, data) VALUES (3, X'{_hex(f"{name}@lab")}');
INSERT INTO shared_secrets (type, data) VALUES (1, X'{_hex(PSK[name])}');
INSERT INTO shared_secret_identity (shared_secret, identity) VALUES ({newest("shared_secrets")}, 1);
INSERT INTO shared_secret_identity (shared_secret, identity)
  VALUES ({newest("shared_secrets")}, {newest("identities")});
INSERT INTO peer_configs (name, ike_cfg, local_id, remote_id, auth_method, dpd_delay, rekeytime, pool)
  VALUES ('{name}', 1, 1, {newest("identities")}, 2, 0, 0, {f"'{pool}'" if pool else "NULL"});
INSERT INTO child_configs (name, rekeytime, lifetime) VALUES ('{name}', 0, 0);
INSERT INTO child_config_proposal (child_cfg, prio, prop) VALUES ({newest("child_configs")}, 0, 2);
INSERT INTO peer_config_child_config (peer_cfg, child_cfg)
  VALUES ({newest("peer_configs")}, {newest("child_configs")});
{remote_ts}
INSERT INTO child_config_traffic_selector (child_cfg, traffic_selector, kind)
  VALUES ({newest("child_configs")}, 1, 0);
INSERT INTO child_config_traffic_selector (child_cfg, traffic_selector, kind)
  VALUES ({newest("child_configs")}, {newest("traffic_selectors")}, {1 if ts is not None else 3});
"""


# moon's rows (identity 1, ike_cfg 1 with IKE proposal 1, ESP proposal 2, selector 1 its subnet) and carol's
MOON_ROWS = f"""
INSERT INTO identities (type, data) VALUES (2, X'{_hex("moon.lab")}');
INSERT INTO ike_configs (local, remote) VALUES ('{A}', '0.0.0.0');
INSERT INTO proposals (proposal) VALUES ('aes128gcm16-prfsha256-x25519');
INSERT INTO proposals (proposal) VALUES ('aes128gcm16');
INSERT INTO ike_config_proposal (ike_cfg, prio, prop) VALUES (1, 0, 1);
INSERT INTO traffic_selectors (type, start_addr, end_addr) VALUES (7, X'{_ip(A_IN)}', X'{_ip(A_IN)}');
""" + _rw_rows("carol", CAROL_IN)

# added while iked runs: dave, sharing moon's ike_cfg 1
DAVE_ROWS = _rw_rows("dave", DAVE_IN)

IKED_TOML = f"""[daemon]
listen = ["{A}"]
control = "@CTL@"
dataplane = "userspace"
tun = "ipsec0"
config_db = "sqlite:///@DIR@/ipsec.db"
"""


def _charon_conn(name: str, ident: str, inner: str, secret: str) -> tuple[str, str]:
    vip = "\n    vips = 0.0.0.0" if inner == "dynamic" else ""
    inner = inner if inner == "dynamic" else f"{inner}/32"
    conn = f"""  {name} {{
    local_addrs = {B}
    remote_addrs = {A}
    proposals = aes128gcm16-prfsha256-x25519
    rekey_time = 0{vip}
    local {{
      auth = psk
      id = {ident}
    }}
    remote {{
      auth = psk
      id = moon.lab
    }}
    children {{
      {name} {{
        local_ts = {inner}
        remote_ts = {A_IN}/32
        esp_proposals = aes128gcm16
        rekey_time = 0
      }}
    }}
  }}"""
    sec = f"""  ike-{name} {{
    id-1 = moon.lab
    id-2 = {ident}
    secret = "{secret}"
  }}"""
    return conn, sec


@dataclass
class Env:
    lab: Lab
    iked: Iked
    charon: Charon
    db: Path


@pytest.fixture(scope="module")
def env(two_hosts_per_module: Lab) -> Iterator[Env]:
    lab = two_hosts_per_module
    lab.addr("bob", "lo", f"{DAVE_IN}/32")
    c1, s1 = _charon_conn("carol", "carol@lab", CAROL_IN, PSK["carol"])
    c2, s2 = _charon_conn("dave", "dave@lab", DAVE_IN, PSK["dave"])
    c3, s3 = _charon_conn("erin", "erin@lab", "dynamic", PSK["erin"])
    conf = "connections {\n" + c1 + "\n" + c2 + "\n" + c3 + "\n}\nsecrets {\n" + s1 + "\n" + s2 + "\n" + s3 + "\n}\n"
    charon = Charon(lab, "bob", name="charon", conf=conf)
    iked = Iked(lab, "alice", IKED_TOML)
    db = iked.dir / "ipsec.db"
    load_sql(create_engine(f"sqlite:///{db}"), MOON_ROWS)
    try:
        charon.start()
        iked.start()
        yield Env(lab, iked, charon, db)
    finally:
        iked.stop()
        charon.stop()


def _agree(env: Env, conn: str) -> dict:  # type: ignore[type-arg]
    ours = env.iked.wait_sas(lambda s: any(x["name"] == conn and x["child-sas"] for x in s), timeout=30)
    (our,) = [x for x in ours if x["name"] == conn]
    theirs = env.charon.wait_child(conn, timeout=10)
    assert our["state"] == "ESTABLISHED" and our["initiator"] is False
    assert theirs["ike"]["initiator-spi"] == our["initiator-spi"]
    (child,) = our["child-sas"]
    assert child["spi-in"] == theirs["spi-out"] and child["spi-out"] == theirs["spi-in"]
    return theirs


def _ping(env: Env, dst: str, spis: set[str]) -> None:
    with env.lab.capture("bob", "eth0", "udp or esp") as cap:
        sent, received, out = env.lab.ping("alice", dst, source=A_IN, count=3, interval=0.05)
    assert (sent, received) == (3, 3), out + "\n" + env.iked.log_tail()
    esp_on_wire(cap.packets, ("esp-in-udp", "esp"), spis, 6)


def test_charon_road_warrior_with_moon_from_sql(env: Env) -> None:
    env.charon.initiate(child="carol", ike="carol", timeout=20)
    theirs = _agree(env, "carol")
    _ping(env, CAROL_IN, {theirs["spi-in"], theirs["spi-out"]})
    conns = env.iked.ctl({"cmd": "conns"})["conns"]
    assert [c["name"] for c in conns] == ["carol"]


def test_rows_added_while_iked_runs_are_used(env: Env) -> None:
    load_sql(create_engine(f"sqlite:///{env.db}"), DAVE_ROWS, create=False)
    env.charon.initiate(child="dave", ike="dave", timeout=30)
    theirs = _agree(env, "dave")
    _ping(env, DAVE_IN, {theirs["spi-in"], theirs["spi-out"]})
    assert "configuration database: 1 added (dave)" in env.iked.log_text()


# erin asks for a virtual IP (vips = 0.0.0.0) from the database pool 'rwpool' (peer_configs.pool)
ERIN_ROWS = _rw_rows("erin", None, pool="rwpool")


def test_pool_in_the_database_gives_an_identity_its_address_back(env: Env) -> None:
    """Pool 'rwpool' added to the database while iked runs; erin's address comes from it,
    stays hers after a reconnect and after a restart of iked, and the lease is in the database."""
    engine = create_engine(f"sqlite:///{env.db}")
    # the pool as `ipsec pool --add rwpool --start 10.3.0.1 --end 10.3.0.14 --timeout 60` leaves it, with
    # zoe holding the first address (one transaction: iked loads the pool as a whole)
    rows = [f"INSERT INTO addresses (pool, address, identity, acquired, released) VALUES "
            f"((SELECT id FROM pools WHERE name = 'rwpool'), X'0a0300{i:02x}', "
            f"{'(SELECT max(id) FROM identities)' if i == 1 else 0}, {1 if i == 1 else 0}, {2 if i == 1 else 1});"
            for i in range(1, 15)]
    load_sql(engine, f"""
        INSERT INTO identities (type, data) VALUES (3, X'{_hex("zoe@lab")}');
        INSERT INTO pools (name, start, "end", timeout) VALUES ('rwpool', X'0a030001', X'0a03000e', 3600);
        {" ".join(rows)}
    """, create=False)
    env.iked.wait_log("virtual IP pool 'rwpool' loaded", 10)
    load_sql(engine, ERIN_ROWS, create=False)

    def connect() -> str:
        try:
            # initiations tried again until one succeeds (after iked's restart its pool loads from the
            # database within seconds): a retried action, not a wait for an event
            wait_for(lambda: _try_initiate(env, "erin"), 40, what="erin's IKE_SA (the pool loads within seconds)")
        except TimeoutError as e:
            raise AssertionError(f"{e}\n{env.iked.log_tail(40)}") from None
        (sa,) = [x for x in env.charon.list_sas() if x["name"] == "erin"]
        (vip,) = sa["local-vips"]
        return str(vip)

    first = connect()
    assert first == "10.3.0.2"
    env.charon.terminate(ike="erin")
    env.iked.wait_sas(lambda sas: not any(x["name"] == "erin" for x in sas))
    assert connect() == first  # a reconnect
    env.charon.terminate(ike="erin")
    env.iked.stop()
    env.iked.start()
    assert connect() == first  # a restart of iked
    # the lease row is written behind (iked logs nothing when it is): a row of the database, polled
    leases = wait_for(lambda: [r for r in PoolAdmin(engine).leases("rwpool") if r["online"]] or None, 10,
                      what="erin's lease written to the database")
    assert [(r["address"], r["identity"]) for r in leases] == [(first, "erin@lab")]


def _try_initiate(env: Env, conn: str) -> bool:
    try:
        env.charon.initiate(child=conn, ike=conn, timeout=15)
    except CharonError:
        return False
    return True


UP_ROWS = f"""
INSERT INTO ike_configs (local, remote) VALUES ('{A}', '{B}');
INSERT INTO peer_configs (name, ike_cfg, local_id, remote_id, auth_method, dpd_delay, rekeytime)
  VALUES ('tocarol', (SELECT max(id) FROM ike_configs), 1, 2, 2, 0, 0);
INSERT INTO ike_config_proposal (ike_cfg, prio, prop) VALUES ((SELECT max(id) FROM ike_configs), 0, 1);
INSERT INTO child_configs (name, rekeytime, lifetime) VALUES ('tocarol', 0, 0);
INSERT INTO child_config_proposal (child_cfg, prio, prop) VALUES ((SELECT max(id) FROM child_configs), 0, 2);
INSERT INTO peer_config_child_config (peer_cfg, child_cfg)
  VALUES ((SELECT max(id) FROM peer_configs), (SELECT max(id) FROM child_configs));
INSERT INTO child_config_traffic_selector (child_cfg, traffic_selector, kind)
  VALUES ((SELECT max(id) FROM child_configs), 1, 0);
INSERT INTO child_config_traffic_selector (child_cfg, traffic_selector, kind)
  VALUES ((SELECT max(id) FROM child_configs), 2, 1);
"""


def test_ipsec_up_and_down_of_a_database_connection(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """`ikeme-ipsec up` initiates a connection that came from the database (moon -> charon as carol)."""
    env.charon.terminate_all()
    env.iked.wait_sas(lambda sas: not sas)
    load_sql(create_engine(f"sqlite:///{env.db}"), UP_ROWS, create=False)
    env.iked.wait_state(lambda: any(c["name"] == "tocarol" for c in env.iked.ctl({"cmd": "conns"})["conns"]), 10,
                        "the new row in iked's connections")  # it logs "configuration database: ..."
    capsys.readouterr()
    assert ipsec_cmd(["-s", env.iked.ctl_path, "up", "tocarol"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    theirs = env.charon.wait_child("carol", timeout=10)
    assert f"] established between {A}[moon.lab]...{B}[carol@lab]\n" in out, out
    assert f"with SPIs {theirs['spi-out']}_i {theirs['spi-in']}_o and TS {A_IN}/32 === {CAROL_IN}/32" in out
    assert out.rstrip().endswith("connection 'tocarol' established successfully")
    assert ipsec_cmd(["-s", env.iked.ctl_path, "down", "tocarol"]) == 0
    assert "closed tocarol[" in capsys.readouterr().out
    env.iked.wait_sas(lambda sas: not sas)
