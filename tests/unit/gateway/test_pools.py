"""Virtual IP pools in the database: the same identity gets its address back after a release and after
a restart (a new DbVipPool on the same database), another identity only after the lease timeout,
never from a static pool; `ikeme-ipsec pool` adds, lists, shows leases and deletes."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.orm import Session

from core_ike.errors import LocalError
from core_ike.ike.identity import Identity
from gateway.ipsec_cmd import main as ipsec_cmd
from gateway.sqlconf import models as m
from gateway.sqlconf.pools import DbVipPool, PoolAdmin, parse_range

CAROL, DAVE, EVE = (Identity.parse(f"{n}@strongswan.org") for n in ("carol", "dave", "eve"))


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def db(tmp_path: Path) -> Engine:
    return create_engine(f"sqlite:///{tmp_path}/pool.db")


def daemon_pool(db: Engine, clock: Clock) -> DbVipPool:
    p = DbVipPool(db, clock)
    p.read()
    return p


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_same_identity_same_address_across_release_and_restart(db: Engine) -> None:
    PoolAdmin(db).add("bigpool", *parse_range("10.3.0.0/28"), timeout=3600)
    clock = Clock()
    pool = daemon_pool(db, clock)
    assert pool.lease(["%bigpool"], CAROL) == ip("10.3.0.1")  # in order, from the first host
    assert pool.lease(["bigpool"], DAVE) == ip("10.3.0.2")
    pool.release(ip("10.3.0.1"), "carol")
    clock.t += 10
    assert pool.lease(["bigpool"], EVE) == ip("10.3.0.3")  # carol's is bound to her within the timeout
    assert pool.lease(["bigpool"], CAROL) == ip("10.3.0.1")
    assert pool.flush() == 5 and pool.pending() == 0
    # restart: a new instance on the same database, carol and dave still hold theirs (released=0 rows)
    clock.t += 10
    again = daemon_pool(db, clock)
    assert again.lease(["bigpool"], DAVE) == ip("10.3.0.2")
    assert again.lease(["bigpool"], CAROL) == ip("10.3.0.1")
    again.flush()
    leases = {r["identity"]: r["address"] for r in PoolAdmin(db).leases("bigpool")}
    assert leases == {"carol@strongswan.org": "10.3.0.1", "dave@strongswan.org": "10.3.0.2",
                      "eve@strongswan.org": "10.3.0.3"}
    with Session(db) as s:  # the history of releases (strongSwan's leases table)
        assert s.scalar(select(func.count()).select_from(m.LeaseRow)) >= 1


def test_lease_timeout_and_static_pools(db: Engine) -> None:
    admin = PoolAdmin(db)
    admin.add("timed", *parse_range("10.4.0.1", "10.4.0.2"), timeout=60)
    admin.add("static", *parse_range("10.5.0.1", "10.5.0.1"), timeout=0)
    clock = Clock()
    pool = daemon_pool(db, clock)
    assert pool.lease(["timed"], CAROL) == ip("10.4.0.1")
    assert pool.lease(["timed"], DAVE) == ip("10.4.0.2")
    assert pool.lease(["timed"], EVE) is None  # full
    pool.release(ip("10.4.0.1"), "carol")
    clock.t += 30
    assert pool.lease(["timed"], EVE) is None  # carol's lease has not timed out
    clock.t += 31
    assert pool.lease(["timed"], EVE) == ip("10.4.0.1")
    assert pool.lease(["static"], CAROL) == ip("10.5.0.1")
    pool.release(ip("10.5.0.1"), "carol")
    clock.t += 10**6
    assert pool.lease(["static"], DAVE) is None  # a static address stays carol's
    assert pool.lease(["static", "timed"], CAROL) == ip("10.5.0.1")  # pools in order


def test_subnets_are_in_memory_pools_in_order(db: Engine) -> None:
    m.Base.metadata.create_all(db)
    pool = daemon_pool(db, Clock())
    assert pool.lease(["10.9.0.0/30"], CAROL) == ip("10.9.0.1")
    assert pool.lease(["10.9.0.0/30"], DAVE) == ip("10.9.0.2")
    assert pool.lease(["10.9.0.0/30"], EVE) is None
    assert pool.lease(["%nosuchpool"], EVE) is None
    pool.release(ip("10.9.0.1"), "carol")
    assert pool.lease(["10.9.0.0/30", "10.9.1.0/31"], EVE) == ip("10.9.0.1")  # the lowest free address
    assert pool.lease(["10.9.0.0/30", "10.9.1.0/31"], CAROL) == ip("10.9.1.0")  # /31: both are hosts
    pool.hold(ip("10.9.0.2"))  # a rekeyed IKE_SA's successor holds dave's address too (RFC 7296 2.18)
    pool.release(ip("10.9.0.2"), "dave")
    assert ip("10.9.0.2") in pool
    pool.release(ip("10.9.0.2"), "dave's successor")
    assert ip("10.9.0.2") not in pool and pool.lease(["10.9.0.0/30"], DAVE) == ip("10.9.0.2")


def test_a_gateway_without_database_has_in_memory_pools() -> None:
    pool = DbVipPool(None, Clock())
    pool.read()
    got = [pool.lease(["10.3.0.0/16"], None) for _ in range(1000)]
    assert got[0] == ip("10.3.0.1") and got[-1] == ip("10.3.3.232") and len(set(got)) == 1000
    assert pool.flush() == 0


def test_pool_commands(db: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/pool.db"
    assert ipsec_cmd(["pool", "--db", url, "add", "rw", "10.3.0.0/24", "--timeout", "1h"]) == 0
    assert "added pool 'rw': 254 addresses" in capsys.readouterr().out
    assert ipsec_cmd(["pool", "--db", url, "add", "rw", "10.3.0.0/24"]) == 1
    assert "exists already" in capsys.readouterr().err
    assert ipsec_cmd(["pool", "--db", url, "add", "v6", "fec3::1", "fec3::10", "--timeout", "0"]) == 0
    pool = daemon_pool(db, Clock())
    pool.lease(["rw"], CAROL)
    pool.flush()
    capsys.readouterr()
    assert ipsec_cmd(["pool", "--db", url, "status"]) == 0
    out = capsys.readouterr().out
    assert "rw" in out and "10.3.0.1" in out and "10.3.0.254" in out and "3600" in out
    assert " 254 " in out and " 16 " in out and "static" in out
    assert ipsec_cmd(["pool", "--db", url, "leases"]) == 0
    out = capsys.readouterr().out
    assert "10.3.0.1" in out and "carol@strongswan.org" in out and "online" in out
    assert ipsec_cmd(["pool", "--db", url, "del", "rw"]) == 0
    assert [p["name"] for p in PoolAdmin(db).status()] == ["v6"]
    assert ipsec_cmd(["pool", "--db", url, "del", "rw"]) == 1
    assert ipsec_cmd(["pool", "--db", url, "add", "bad", "10.3.0.9", "10.3.0.1"]) == 1
    assert "empty" in capsys.readouterr().err


def test_bad_ranges() -> None:
    with pytest.raises(LocalError, match="bad address range"):
        parse_range("10.3.0.0/33")
    with pytest.raises(LocalError, match="empty"):
        parse_range("10.0.0.1", "::1")
