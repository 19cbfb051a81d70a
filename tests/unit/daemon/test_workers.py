"""iked with several workers (core_ike/daemon/workers.py; docs/operations.md, "Workers"): the real daemon
as a subprocess on loopback with two workers, driven by many initiators (our own engine, each IKE_SA with
its own identity, half of them floating to the NAT-T port); every IKE_SA must come up on the worker its
SPI names, and ikectl sees one daemon. The shared cookie secret and the start-up errors are checked too."""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core_ike.daemon.ctl import call
from core_ike.ike.engine import Engine, EngineConfig
from tests.unit.daemon.ikedproc import notify_socket, wait_ready

ROOT = Path(__file__).resolve().parents[3]
PSK = "workers-test-secret-0123456789"
DAEMON = """[daemon]
listen = ["127.0.0.1"]
port = {port}
natt_port = {natt}
control = "{dir}/ctl.sock"
dataplane = "none"
log_level = "warning"
workers = {workers}
{extra}
"""
RESPONDER = f"""
[[secrets.ike]]
secret = "{PSK}"

[connections.clients]
remote_addrs = ["%any"]
unique = "no"
local = {{ auth = "psk", id = "server@test" }}
remote = {{ auth = "psk", id = "%any" }}
"""
SERVER_CONN = """
[connections.medsrv]
mediation = true
local = { auth = "psk", id = "carol@med" }
remote = { auth = "psk", id = "%any" }
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "MED_DB_URL", "NOTIFY_SOCKET")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _write(tmp: Path, workers: int | str, body: str, extra: str = "") -> tuple[Path, int, int]:
    port, natt = _free_port(), _free_port()
    w = f'"{workers}"' if isinstance(workers, str) else str(workers)
    conf = tmp / "test.toml"
    conf.write_text(DAEMON.format(port=port, natt=natt, dir=tmp, workers=w, extra=extra) + body)
    return conf, port, natt


@pytest.fixture
def iked2(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, int, int]]:
    conf, port, natt = _write(tmp_path, 2, RESPONDER, extra="cookie_threshold = 1000000\ncookie_threshold_ip = 1000000")
    notify, env = notify_socket(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "core_ike.daemon.main", "-c", str(conf)], env=_env() | env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    ctl = tmp_path / "ctl.sock"
    try:
        wait_ready(proc, notify, 60.0)  # the supervisor's READY=1: every worker up, its control socket listening
        yield proc, ctl, port, natt
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        notify.close()  # after the daemon: its STOPPING=1 still finds the socket


def _read_ready(engine: Engine, poller: Any, by_fd: dict[int, tuple[socket.socket, int]], natt: int,
                wait: float) -> None:
    """What arrived within `wait` seconds, to the engine (on the NAT-T port after the non-ESP marker)."""
    for fd, _ in poller.poll(wait):
        s, p = by_fd[fd]
        while True:
            try:
                data, peer = s.recvfrom(65535)
            except BlockingIOError:
                break
            if p == natt:
                data = data[4:]
            engine.receive(data, ("127.0.0.2", p), peer, time.monotonic())


def _drive(n: int, port: int, natt: int, timeout: float = 90.0) -> dict[str, Any]:
    """`n` IKE_SAs (IKE_SA_INIT + IKE_AUTH, childless) from 127.0.0.2 to the daemon on 127.0.0.1, each
    with its own identity; every other one with forced UDP encapsulation, so it floats to the NAT-T port
    (RFC 7296 2.23) with fake NAT-D. The initiator uses the daemon's port numbers on its own address."""
    from core_ike.ike import events as ev
    from core_ike.ike.config import AuthConfig, IkeConfig, RetransmitConfig
    from core_ike.ike.creds import Credentials
    from core_ike.ike.identity import Identity
    from core_ike.ike.tasks.ike_auth import IkeAuth
    from core_ike.ike.tasks.ike_init import IkeInit

    sys.path.insert(0, str(ROOT))
    from bench.ike_driver import _childless_extension

    creds = Credentials()
    creds.add_psk(PSK)
    base = IkeConfig("drv", local_addrs=["127.0.0.2"], remote_addrs=["127.0.0.1"], remote_port=port,
                     proposals="aes128gcm16-prfsha256-x25519", remote=AuthConfig("psk", Identity.parse("server@test")),
                     children=[], rekey_time=10**7, retransmit=RetransmitConfig(1.0, 1.8, 5), send_certreq=False)
    engine = Engine([base], creds, EngineConfig(ike_port=port, natt_port=natt))
    engine.extensions.append(_childless_extension())
    socks: dict[int, socket.socket] = {}
    for p in (port, natt):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.2", p))
        s.setblocking(False)
        socks[p] = s
    poller = select.epoll()
    by_fd = {s.fileno(): (s, p) for p, s in socks.items()}
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    established: dict[str, tuple[bytes, bytes, int]] = {}  # name -> (SPIi, SPIr, local port at the end)
    failed: list[str] = []
    sas = {}
    now = time.monotonic()
    for i in range(n):
        cfg = dataclasses.replace(base, name=f"c{i}", local=AuthConfig("psk", Identity.parse(f"c{i}@test")),
                                  encap=bool(i % 2))
        sa = engine.new_initiator(cfg, ("127.0.0.1", port), ("127.0.0.2", port))
        sa.queue.append(IkeInit())
        sa.queue.append(IkeAuth())
        sa.initiate_next(now)
        sas[cfg.name] = sa
    deadline = now + timeout
    try:
        while len(established) + len(failed) < n and time.monotonic() < deadline:
            for data, local, peer in engine.datagrams_to_send():
                socks[local[1]].sendto(data, peer)
            timer = engine.get_timer()
            wait = 0.05 if timer is None else min(0.05, max(0.0, timer - time.monotonic()))
            _read_ready(engine, poller, by_fd, natt, wait)
            if (timer := engine.get_timer()) is not None and timer <= time.monotonic():
                engine.handle_timer(time.monotonic())
            while (e := engine.next_event()) is not None:
                if isinstance(e, ev.IkeSaEstablished):
                    sa = sas[e.name]
                    established[e.name] = (sa.spi_i, sa.spi_r, sa.local[1])
                elif isinstance(e, ev.IkeSaFailed):
                    failed.append(f"{e.name}: {e.reason}")
            for data, local, peer in engine.datagrams_to_send():
                socks[local[1]].sendto(data, peer)
    finally:
        for s in socks.values():
            s.close()
    return {"established": established, "failed": failed}


def test_two_workers_set_up_ike_sas_each_on_the_worker_its_spi_names(
        iked2: tuple[subprocess.Popen[str], Path, int, int]) -> None:
    _proc, ctl, port, natt = iked2
    n = 40
    got = _drive(n, port, natt)
    assert got["failed"] == [] and len(got["established"]) == n, got["failed"]
    floated = [name for name, (_, _, lp) in got["established"].items() if lp == natt]
    assert len(floated) == n // 2  # the encapsulated half moved to the NAT-T port
    listing = call(str(ctl), {"cmd": "list"})
    assert listing["ok"]
    sas = {s["remote-id"]: s for s in listing["sas"] if s["state"] == "ESTABLISHED"}
    assert len(sas) == n
    by_worker = {0: 0, 1: 0}
    for name, (spi_i, spi_r, _) in got["established"].items():
        s = sas[f"{name}@test"]
        assert s["responder-spi"] == spi_r.hex() and s["initiator-spi"] == spi_i.hex()
        worker = spi_r[0]  # the tag the responding worker put into its SPI
        assert worker in (0, 1)
        assert (s["uniqueid"] - 1) % 2 == worker  # unique ids: the worker's own sequence
        by_worker[worker] += 1
    # the initiators' SPIs spread the new IKE_SAs over both workers
    assert by_worker[0] > 0 and by_worker[1] > 0, by_worker
    st = call(str(ctl), {"cmd": "stats"})["stats"]
    assert st["workers"] == 2
    assert st["ike-sas"]["ESTABLISHED"] == n and st["ike-sas-total"] == n
    assert st["events"]["ike-established"] == n
    # nothing reached a worker that did not own it: no unknown SPI was answered or dropped
    counters = st["counters"]
    assert not {k: v for k, v in counters.items() if "invalid-spi" in k or "unknown" in k}, counters
    # down by unique id reaches the worker that owns it
    victim = next(s for s in sas.values() if (s["uniqueid"] - 1) % 2 == 1)
    r = call(str(ctl), {"cmd": "down", "ike": victim["uniqueid"], "timeout": 1})
    assert "no IKE_SA" not in str(r.get("error", "")), r
    after = {s["uniqueid"] for s in call(str(ctl), {"cmd": "list"})["sas"] if s["state"] == "ESTABLISHED"}
    assert victim["uniqueid"] not in after
    # reload and loglevel reach every worker; one answer comes back
    r = call(str(ctl), {"cmd": "reload"})
    assert r["ok"] and r["unchanged"] == ["clients"], r
    assert call(str(ctl), {"cmd": "loglevel", "level": "info"})["ok"]
    assert call(str(ctl), {"cmd": "conns"})["conns"][0]["name"] == "clients"


def test_workers_share_the_cookie_secret_and_rotate_together() -> None:
    seed = os.urandom(32)
    a, b = (Engine([], _creds(), EngineConfig(spi_tag=k, unique_id_stride=2, cookie_seed=seed, force_cookies=True))
            for k in (0, 1))
    ni, spi_i = os.urandom(32), os.urandom(8)
    for now in (1000.0, 1599.0, 1601.0):  # the 600 s periods of the shared monotonic clock
        a.now = b.now = now
        cookie = a.prefilter.new_cookie(ni, ("192.0.2.7", 500), spi_i)
        assert b.prefilter.cookie_valid(cookie, ni, "192.0.2.7", spi_i)
        assert not b.prefilter.cookie_valid(cookie, ni, "192.0.2.8", spi_i)
    a, b = (Engine([], _creds(), EngineConfig(spi_tag=k, unique_id_stride=2, cookie_seed=seed)) for k in (0, 1))
    a.now = 1000.0
    old = a.prefilter.new_cookie(ni, ("192.0.2.7", 500), spi_i)
    b.now = 1201.0  # the next period: the previous secret still holds
    assert b.prefilter.cookie_valid(old, ni, "192.0.2.7", spi_i)
    b.now = 1801.0  # two periods later it does not
    assert not b.prefilter.cookie_valid(old, ni, "192.0.2.7", spi_i)
    # without a seed each engine has its own random secret
    c = Engine([], _creds(), EngineConfig())
    c.now = 1000.0
    assert not b.prefilter.cookie_valid(c.prefilter.new_cookie(ni, ("192.0.2.7", 500), spi_i), ni, "192.0.2.7", spi_i)


def test_spi_tag_marks_every_spi_the_engine_chooses() -> None:
    e = Engine([], _creds(), EngineConfig(spi_tag=3, unique_id_stride=4))
    assert all(e.new_spi()[0] == 3 for _ in range(50))
    assert all(e.alloc_spi() >> 24 == 3 for _ in range(50))  # ESP SPIs (RFC 4303 2.1) too
    assert [next(e._ike_ids) for _ in range(3)] == [4, 8, 12]


def _creds() -> Any:
    from core_ike.ike.creds import Credentials

    return Credentials()


@pytest.mark.parametrize(("module", "body", "prog"), [
    ("mediation_server", SERVER_CONN, "mediation-server"),
    ("mediation_client", "", "mediation-client"),
])
def test_mediation_daemons_refuse_workers(module: str, body: str, prog: str, tmp_path: Path) -> None:
    conf, _, _ = _write(tmp_path, 2, body)
    r = subprocess.run([sys.executable, "-m", module, "-c", str(conf)], capture_output=True, text=True, timeout=60,
                       env=_env(), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.splitlines() == [f"{prog}: [daemon] workers = 2: {prog} runs as one process (all its IKE_SAs "
                                     "share its state: the peer registry, mediation attempts); remove the key or "
                                     "set it to 1"]


def test_workers_need_a_data_plane_outside_the_process(tmp_path: Path) -> None:
    conf, _, _ = _write(tmp_path, 2, RESPONDER)
    conf.write_text(conf.read_text().replace('dataplane = "none"', 'dataplane = "userspace"'))
    r = subprocess.run([sys.executable, "-m", "core_ike.daemon.main", "-c", str(conf)], capture_output=True,
                       text=True, timeout=60, env=_env(), cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith('iked: [daemon] workers = 2 needs dataplane = "none" or "xfrm"')


@pytest.mark.parametrize("value", ["0", "65", '"many"', "true"])
def test_workers_value_is_checked(value: str, tmp_path: Path) -> None:
    conf, _, _ = _write(tmp_path, 1, RESPONDER)
    conf.write_text(conf.read_text().replace("workers = 1", f"workers = {value}"))
    r = subprocess.run([sys.executable, "-m", "core_ike.daemon.main", "-c", str(conf)], capture_output=True,
                       text=True, timeout=60, env=_env(), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f'iked: [daemon] workers: expected an integer 1-64 or "auto", got {value}']
