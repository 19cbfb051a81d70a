"""bench/ike_template_driver.py against an in-process responder Engine: the template driver's requests
carry the Engine driver's payloads in its order, the responder establishes every IKE_SA with the driver's
per-SA identity after verifying its AUTH, and a wrong key fails (the responder did check)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from core_ike.ike import events as ev
from core_ike.ike.config import AuthConfig, IkeConfig
from core_ike.ike.creds import Credentials, load_private_key, load_public_key
from core_ike.ike.engine import Engine, EngineConfig
from core_ike.ike.identity import Identity

RESP = ("192.0.2.2", 500)
IPS = ["192.0.2.100", "192.0.2.101"]


def _pem(key: rsa.RSAPrivateKey) -> tuple[bytes, bytes]:
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return priv, pub


def _setup(auth: str, tmp_path: Path, psk: str) -> tuple[Engine, dict[str, Any]]:
    """A responder Engine configured as bench/ike_setup_rate.py's iked (unique = "no": one RSA identity), and a driver spec for it."""
    from ike_driver import PROPOSAL, RESP_PSK_ID

    creds = Credentials()
    spec: dict[str, Any] = {
        "auth": auth,
        "ips": IPS,
        "remote": RESP[0],
        "prefix": "t",
        "count": 5,
        "inflight": 2,
        "timeout": 10,
        "key": "",
        "peer_pub": "",
        "my_id": "",
    }
    if auth == "psk":
        creds.add_psk(psk)
        local, remote = (
            AuthConfig("psk", Identity.parse(RESP_PSK_ID)),
            AuthConfig("psk", Identity.parse("%any")),
        )
    else:
        r_priv, r_pub = _pem(rsa.generate_private_key(65537, 2048))
        d_priv, d_pub = _pem(rsa.generate_private_key(65537, 2048))
        creds.private_keys.append(load_private_key(r_priv))
        resp_id = creds.add_public_key(load_public_key(r_pub))
        driver_id = creds.add_public_key(load_public_key(d_pub))
        (tmp_path / "driver.key").write_bytes(d_priv)
        (tmp_path / "resp.pub").write_bytes(r_pub)
        spec.update(
            key=str(tmp_path / "driver.key"),
            peer_pub=str(tmp_path / "resp.pub"),
            my_id=f"keyid:#{driver_id.data.hex()}",
        )
        local, remote = AuthConfig("pubkey", resp_id), AuthConfig("pubkey", driver_id)
    cfg = IkeConfig(
        "bench",
        local_addrs=[RESP[0]],
        remote_addrs=["%any"],
        proposals=PROPOSAL,
        local=local,
        remote=remote,
        children=[],
        unique="no",
    )
    return Engine([cfg], creds, EngineConfig()), spec


def _run(
    drv: ModuleType, responder: Engine, spec: dict[str, Any], n: int
) -> tuple[list[str], list[ev.Event]]:
    """n IKE_SAs of the template driver against `responder`: the driver's outcomes and the responder's events."""
    ini = drv.TemplateInitiator(spec, drv.capture(spec))
    pools = drv._Pools.draw(n)
    outcomes: list[str] = []
    for k in range(n):
        ip = IPS[k % len(IPS)]
        msg: bytes | None = ini.first(k, ip, pools.spis[k], pools.nonces[k], pools.keys[k])
        while msg is not None:
            responder.receive(msg, RESP, (ip, 500), 1000.0)
            [(answer, _local, peer)] = responder.datagrams_to_send()
            assert peer == (ip, 500)
            what, msg, reason = ini.on_response(answer)
            if what in ("done", "failed"):
                outcomes.append(what if reason is None else f"{what}: {reason}")
    events = []
    while (e := responder.next_event()) is not None:
        events.append(e)
    return outcomes, events


@pytest.mark.parametrize("auth", ["psk", "rsa"])
def test_template_driver_sets_up_real_ike_sas(
    load_bench: Callable[[str], ModuleType], tmp_path: Path, auth: str
) -> None:
    drv = load_bench("ike_template_driver")
    from ike_driver import PSK

    responder, spec = _setup(auth, tmp_path, PSK)
    outcomes, events = _run(drv, responder, spec, 4)
    assert outcomes == ["done"] * 4
    up = [e for e in events if isinstance(e, ev.IkeSaEstablished)]
    assert len(up) == 4
    if auth == "psk":  # one identity per IKE_SA, as the Engine driver's
        assert sorted(e.remote_id for e in up) == [f"t{k}@bench" for k in range(4)]


def test_template_is_the_engines_message_shape(
    load_bench: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    drv = load_bench("ike_template_driver")
    from ike_driver import PSK

    _, spec = _setup("psk", tmp_path, PSK)
    tpl = drv.capture(spec)
    # IKE_SA_INIT: SA, KE, Ni, NAT-D source and destination, FRAGMENTATION_SUPPORTED,
    # SIGNATURE_HASH_ALGORITHMS, CHILDLESS_IKEV2_SUPPORTED (the Engine's order)
    assert [t for t, _, _ in tpl.init] == [33, 34, 40, 41, 41, 41, 41, 41]
    assert [b[2:4].hex() for t, _, b in tpl.init if t == 41] == ["4004", "4005", "402e", "402f", "4022"]
    # IKE_AUTH: IDi, IDr, AUTH, INITIAL_CONTACT
    assert [t for t, _, _ in tpl.auth] == [35, 36, 39, 41]
    ini = drv.TemplateInitiator(spec, tpl)
    pools = drv._Pools.draw(1)
    first = ini.first(0, IPS[0], pools.spis[0], pools.nonces[0], pools.keys[0])
    pls = drv.split_payloads(first[16], first[28:])
    assert [(t, len(b)) for t, _, b in pls] == [(t, len(b)) for t, _, b in tpl.init]
    assert first[:8] == pools.spis[0] and pools.keys[0][1] in first and pools.nonces[0] in first


def test_a_wrong_psk_fails_at_the_responder(load_bench: Callable[[str], ModuleType], tmp_path: Path) -> None:
    drv = load_bench("ike_template_driver")
    responder, spec = _setup("psk", tmp_path, "another-secret-0123456789")
    outcomes, events = _run(drv, responder, spec, 2)
    assert outcomes == ["failed: IKE_AUTH notify 24"] * 2  # AUTHENTICATION_FAILED (RFC 7296 3.10.1)
    assert not any(isinstance(e, ev.IkeSaEstablished) for e in events)
