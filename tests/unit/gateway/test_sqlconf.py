"""The SQL configuration backend reads strongSwan-shaped rows (data.sql as strongSwan's sql scenarios
write it) into the daemon's connection and credential objects."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from core_ike.constants import IdType
from core_ike.errors import CredentialsPending
from core_ike.ike.identity import Identity
from gateway.sqlconf.loader import load, selector_texts
from gateway.sqlconf.source import SqlConfigSource
from scenarios.lab.creds import ca_and_host
from tests.unit.gateway.sqldata import cert_subst, load_sql

IPS = {"PH_IP_MOON": "192.168.0.1", "PH_IP_SUN": "192.168.0.2"}


def sqlite() -> Engine:
    return create_engine("sqlite://")


def snapshot(db: Engine):  # the loader's Snapshot
    with Session(db) as s:
        return load(s)


def check_net2net_psk(db: Engine) -> None:
    load_sql(db, "net2net-psk.sql", IPS)
    snap = snapshot(db)
    assert snap.problems == []
    [c] = snap.connections
    assert c.name == "net-net"
    assert (c.local_addrs, c.remote_addrs) == (["192.168.0.1"], ["192.168.0.2"])
    assert (c.local.auth, c.remote.auth) == ("psk", "psk")
    assert c.local.id == Identity.parse("moon.example.org") and c.local.id.id_type == IdType.FQDN
    assert c.remote.id == Identity.parse("sun.example.org")
    [ch] = c.children
    assert (ch.name, ch.local_ts, ch.remote_ts) == ("net-net", ["10.1.0.0/16"], ["10.2.0.0/16"])
    assert (ch.rekey_time, ch.life_time) == (1200.0, 1500.0)  # strongSwan's column defaults
    assert ch.start_action == "none"
    assert c.rekey_time == 7200.0 and c.dpd_delay == 120.0 and c.keyingtries == 3
    assert snap.creds.psk(c.local.id, c.remote.id) == b"net2net-secret-0123456789"
    assert snap.creds.psk(c.local.id, Identity.parse("venus.example.org")) is None


def test_net2net_psk_sqlite() -> None:
    check_net2net_psk(sqlite())


def test_rw_psk_ipv4_a_secret_per_road_warrior() -> None:
    db = sqlite()
    load_sql(db, "rw-psk-ipv4.sql", IPS)
    snap = snapshot(db)
    [c] = snap.connections
    assert c.remote_addrs == ["%any"] and c.remote.id.is_any
    assert c.local.id == Identity.parse("192.168.0.1")
    assert c.children[0].local_ts == ["10.1.0.0/16"] and c.children[0].remote_ts == ["dynamic"]
    moon = c.local.id
    assert snap.creds.psk(moon, Identity.parse("192.168.0.100")) == b"carol-secret-8c1f"
    assert snap.creds.psk(moon, Identity.parse("192.168.0.200")) == b"dave-secret-33e0a"


def test_net2net_cert_certificates_keys_and_proposals() -> None:
    db = sqlite()
    pki = ca_and_host()
    load_sql(db, "net2net-cert.sql", {**IPS, **cert_subst(pki)})
    snap = snapshot(db)
    assert snap.problems == []
    [c] = snap.connections
    assert (c.local.auth, c.remote.auth) == ("pubkey", "pubkey")  # auth_method's default, 1
    assert c.local.certs == [pki["cert"]]
    assert snap.creds.cas == [pki["ca"]]
    key = snap.creds.private_key_for(c.local.id)
    assert key is not None and key.public_key().public_numbers() == pki["key"].public_key().public_numbers()
    assert c.proposals == "aes128-sha256-modp3072,aes256gcm16-prfsha256-x25519"  # ordered by prio
    assert c.children[0].esp_proposals == "aes256gcm16-modp3072"
    assert c.dpd_delay == 0.0


def test_address_ranges_become_covering_subnets_and_ports_are_kept() -> None:
    assert selector_texts(0, 7, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 6]), 0, 65535) == \
        ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
    assert selector_texts(1, 8, 6, bytes(16), b"\xff" * 16, 443, 443) == ["::/0[6/443]"]
    assert selector_texts(3, 7, 17, None, None, 0, 65535) == ["dynamic[17]"]


def test_bad_rows_are_reported_and_the_others_load() -> None:
    db = sqlite()
    load_sql(db, "net2net-psk.sql", IPS)
    load_sql(db, """
        INSERT INTO ike_configs (local, remote) VALUES ('moon.example.org', '0.0.0.0');
        INSERT INTO peer_configs (name, ike_cfg, local_id, remote_id, auth_method) VALUES ('byname', 2, 1, 3, 2);
        INSERT INTO proposals (proposal) VALUES ('aes128-nosuchprf-modp2048');
        INSERT INTO ike_configs (local, remote) VALUES ('0.0.0.0', '0.0.0.0');
        INSERT INTO ike_config_proposal (ike_cfg, prio, prop) VALUES (3, 0, 1);
        INSERT INTO peer_configs (name, ike_cfg, local_id, remote_id, auth_method) VALUES ('badprop', 3, 1, 3, 2);
        INSERT INTO peer_configs (name, ike_cfg, local_id, remote_id, auth_method, eap_type)
            VALUES ('eap', 1, 1, 3, 2, 13);
        INSERT INTO peer_configs (name, ike_cfg, local_id, remote_id, auth_method) VALUES ('noid', 1, 99, 3, 2);
    """, create=False)
    snap = snapshot(db)
    assert [c.name for c in snap.connections] == ["net-net"]
    text_ = "\n".join(snap.problems)
    for name, why in (("byname", "host names are not resolved"), ("badprop", "nosuchprf"), ("eap", "EAP"),
                      ("noid", "local_id '99'")):
        assert f"'{name}'" in text_ and why in text_, (name, text_)


def test_mediation_rows() -> None:
    db = sqlite()
    load_sql(db, """
        INSERT INTO identities (type, data) VALUES (2, X'616c696365');
        INSERT INTO identities (type, data) VALUES (2, X'6d6564737276');
        INSERT INTO identities (type, data) VALUES (2, X'626f62');
        INSERT INTO ike_configs (local, remote) VALUES ('0.0.0.0', '192.0.2.10');
        INSERT INTO ike_configs (local, remote) VALUES ('0.0.0.0', '0.0.0.0');
        INSERT INTO peer_configs (name, ike_cfg, local_id, remote_id, auth_method, mediation)
            VALUES ('medsrv', 1, 1, 2, 2, 1);
        INSERT INTO peer_configs (name, ike_cfg, local_id, remote_id, auth_method, mediated_by, peer_id)
            VALUES ('bob', 2, 1, 3, 2, 1, 3);
        INSERT INTO shared_secrets (type, data) VALUES (2, X'01');
    """)
    snap = snapshot(db)
    med, bob = snap.connections
    assert med.mediation and not bob.mediation
    assert bob.mediated_by == "medsrv" and bob.mediation_peer == Identity.parse("bob")
    assert snap.eap_secrets == 1


def test_a_miss_waits_for_the_refresher_then_finds_the_new_row(tmp_path: Path) -> None:
    """Engine.config_miss: the first miss asks for a refresh and the attempt waits (CredentialsPending);
    once a refresh sees the row, the connection is there; an identity no row names is a definite miss
    after two refreshes."""
    db = create_engine(f"sqlite:///{tmp_path}/cfg.db")  # the refresher's thread opens its own connection
    load_sql(db, "net2net-psk.sql", IPS)
    src = SqlConfigSource(db, refresh_interval=3600)

    async def scenario() -> None:
        snapshots: asyncio.Queue[list[str]] = asyncio.Queue()  # each refresh hands its snapshot to the loop
        src.on_snapshot = lambda s: snapshots.put_nowait([c.name for c in s.connections])

        async def next_snapshot() -> list[str]:
            return await asyncio.wait_for(snapshots.get(), 10.0)

        task = asyncio.create_task(src.refresh_loop(min_interval=0.0))
        try:
            await asyncio.sleep(0)  # the task runs up to its first wait (a miss or the interval)
            assert src._wake is not None and src.generation == 0
            with db.begin() as c:
                c.execute(text("INSERT INTO peer_configs (name, ike_cfg, local_id, remote_id, auth_method) "
                               "VALUES ('late', 1, 1, 3, 2)"))
            venus = Identity.parse("venus.example.org")
            with pytest.raises(CredentialsPending):
                src.miss(venus)
            assert "late" in await next_snapshot()  # the refresh the miss asked for
            with pytest.raises(CredentialsPending):  # the refresh running at the miss may predate the row
                src.miss(venus)
            await next_snapshot()
            assert snapshots.empty() and src.generation == 2
            src.miss(venus)  # definite now: returns, the engine answers the peer
        finally:
            task.cancel()

    asyncio.run(scenario())
