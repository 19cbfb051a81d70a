"""Network-namespace lab: hosts, veth links, bridges, NAT, processes, captures.

Why it is built this way: ``docs/nat-lab.md`` §2. Every namespace of a lab is
named ``<prefix><host>``; the prefix is unique per run (default ``lb<pid>x<n>_``) so parallel runs never
collide, and veth pairs are created directly between two namespaces (never in the root namespace), so no
temporary interface names are needed.

Teardown kills the processes the lab started (by recorded PID / process group), then anything still
running inside the lab's namespaces, then deletes the namespaces. It is idempotent and also registered
with :mod:`atexit`. A run that ends with :meth:`Lab.close` (``with lab:`` does) removes the lab's directory
when it passed and keeps it, saying where, when it failed.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import itertools
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import NetNS, netns

from scenarios.lab.events import wait_files
from scenarios.lab.pcap import Capture

log = logging.getLogger("lab")

T = TypeVar("T")
_seq = itertools.count()
_ORPHAN_RE = re.compile(r"^lb(\d+)x\d+_")
KEPT_DIR = Path("/run/ikeme-lab-kept")  # one empty file per lab prefix left running (scenarios/run --keep)
_ARPHRD_ETHER = 1
_MARK_ETHERTYPE = 0x88B5  # IEEE 802 local experimental: never IP, so read_pcap passes over the marker


class LabError(RuntimeError):
    """Something in the lab did not come up as expected."""


def unique_prefix() -> str:
    """A namespace prefix unique to this process and call: ``lb<pid>x<n>_``."""
    return f"lb{os.getpid()}x{next(_seq)}_"


def wait_for(predicate: Callable[[], T | None], timeout: float, interval: float = 0.01,
             what: str = "condition") -> T:
    """Poll ``predicate`` every ``interval`` s until it returns a truthy value; raise after ``timeout``.

    Only for what tells nobody when it happens: a port another program listens on (lighttpd, iperf3),
    the kernel's routes, SAs and counters, a program's state with no log line or notification. Where an
    event exists, wait for that instead: a daemon's READY=1 (``Iked.start``, ``Iked.reload``), a file or
    log line written (:func:`scenarios.lab.events.wait_files`, ``Iked.wait_log`` / ``wait_state``), a
    process's exit (its pidfd)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def _pids_in_netns(name: str) -> list[int]:
    res = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def _kill_netns(name: str) -> None:
    """Kill every process left in namespace ``name`` (SIGKILL), then delete the namespace."""
    for pid in _pids_in_netns(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        netns.remove(name)


def cleanup_stale(prefix: str) -> list[str]:
    """Delete every namespace whose name starts with ``prefix`` (and kill what runs in it), kept or not."""
    removed = [n for n in netns.listnetns() if n.startswith(prefix)]
    for name in removed:
        _kill_netns(name)
    with contextlib.suppress(OSError):
        for mark in KEPT_DIR.iterdir():
            if mark.name.startswith(prefix):
                mark.unlink(missing_ok=True)
    return removed


def _kept() -> tuple[str, ...]:
    try:
        return tuple(m.name for m in KEPT_DIR.iterdir())
    except OSError:
        return ()


def cleanup_orphans() -> list[str]:
    """Delete namespaces of default-prefixed labs (``lb<pid>x<n>_``) whose creating process is gone,
    except those left running on purpose (:meth:`Lab.detach`, until ``cleanup_stale``)."""
    removed = []
    kept = _kept()
    for name in netns.listnetns():
        m = _ORPHAN_RE.match(name)
        if m and not Path(f"/proc/{m.group(1)}").exists() and not name.startswith(kept):
            _kill_netns(name)
            removed.append(name)
    return removed


class Lab:
    """A set of network namespaces plus the processes and captures running in them.

    ``hosts`` are logical names (``alice``); :meth:`ns` gives the namespace name. ``dir`` is the lab's
    scratch directory (configs, logs, captures), one subdirectory per host.
    """

    def __init__(self, prefix: str | None = None, workdir: str | Path | None = None) -> None:
        self.prefix = prefix or unique_prefix()
        if workdir is None:
            # named by the making process's pid whatever the namespace prefix (a test session removes the
            # directories of its finished labs by it: tests/conftest.py)
            mine = self.prefix if self.prefix.startswith(f"lb{os.getpid()}x") else f"lb{os.getpid()}x-{self.prefix}"
            self.dir = Path(tempfile.mkdtemp(prefix=f"lab-{mine}"))
        else:
            self.dir = Path(workdir)
            self.dir.mkdir(parents=True, exist_ok=True)
        self.hosts: list[str] = []
        self.addrs: dict[str, str] = {}      # host -> main address (no prefix length)
        self.nats: list[str] = []            # hosts that do NAT (flushed by flush_conntrack)
        self.info: dict[str, Any] = {}       # builder-specific facts (see builders)
        self._procs: list[subprocess.Popen[bytes]] = []
        self._nl: dict[str, NetNS] = {}
        self._at_detach: list[Callable[[], None]] = []
        self._closed = False
        self._detached = False
        atexit.register(self.teardown)

    # -- context manager -----------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """``with two_hosts() as lab:``: :meth:`close`, the run failed if the block raised."""
        self.close(passed=exc_type is None)

    # -- namespaces and links ---------------------------------------------------------------------

    def ns(self, host: str) -> str:
        """Namespace name of ``host``."""
        return f"{self.prefix}{host}"

    def host_dir(self, host: str) -> Path:
        d = self.dir / host
        d.mkdir(parents=True, exist_ok=True)
        return d

    def nl(self, host: str) -> NetNS:
        """A pyroute2 netlink handle inside ``host`` (cached, closed at teardown)."""
        if host not in self._nl:
            self._nl[host] = NetNS(self.ns(host))
        return self._nl[host]

    def add_host(self, name: str) -> str:
        """Create namespace ``<prefix><name>`` with ``lo`` up; returns the namespace name."""
        if name in self.hosts:
            raise LabError(f"host {name} exists")
        nsname = self.ns(name)
        netns.create(nsname)
        self.hosts.append(name)
        self.host_dir(name)
        self.set_up(name, "lo")
        return nsname

    def _index(self, host: str, ifname: str) -> int:
        idx = self.nl(host).link_lookup(ifname=ifname)
        if not idx:
            raise LabError(f"{host}: no interface {ifname}")
        return int(idx[0])

    def set_up(self, host: str, ifname: str, mtu: int | None = None) -> None:
        kw: dict[str, Any] = {"state": "up"}
        if mtu:
            kw["mtu"] = mtu
        self.nl(host).link("set", index=self._index(host, ifname), **kw)

    def link(self, a: str, a_if: str, b: str, b_if: str, a_addr: str | None = None,
             b_addr: str | None = None) -> None:
        """veth pair ``a:a_if <-> b:b_if``, both up, with optional CIDR addresses (``10.1.0.1/24``)."""
        self.nl(a).link("add", ifname=a_if, kind="veth",
                        peer={"ifname": b_if, "net_ns_fd": self.ns(b)})
        self.set_up(a, a_if)
        self.set_up(b, b_if)
        if a_addr:
            self.addr(a, a_if, a_addr)
        if b_addr:
            self.addr(b, b_if, b_addr)

    def bridge(self, host: str, name: str, ports: Iterable[str], addr: str | None = None) -> None:
        """Bridge ``name`` in ``host`` enslaving the given interfaces of that host."""
        nl = self.nl(host)
        nl.link("add", ifname=name, kind="bridge")
        br = self._index(host, name)
        for port in ports:
            nl.link("set", index=self._index(host, port), master=br)
        nl.link("set", index=br, state="up")
        if addr:
            self.addr(host, name, addr)

    def addr(self, host: str, ifname: str, cidr: str) -> None:
        iface = ipaddress.ip_interface(cidr)
        self.nl(host).addr("add", index=self._index(host, ifname), address=str(iface.ip),
                           prefixlen=iface.network.prefixlen)
        self.addrs.setdefault(host, str(iface.ip))

    def route(self, host: str, dst: str, gateway: str) -> None:
        """Route ``dst`` (CIDR or ``default``) via ``gateway`` inside ``host``."""
        kw: dict[str, Any] = {"gateway": gateway}
        if dst != "default":
            kw["dst"] = dst
        else:
            kw["dst"] = "0.0.0.0/0"
        self.nl(host).route("add", **kw)

    def sysctl(self, host: str, key: str, value: str | int) -> None:
        """Write ``/proc/sys/<key with dots as slashes>`` inside ``host``."""
        path = "/proc/sys/" + key.replace(".", "/")
        netns.pushns(self.ns(host))
        try:
            with open(path, "w") as f:
                f.write(f"{value}\n")
        finally:
            netns.popns()

    def nft(self, host: str, ruleset: str) -> None:
        """Load an nftables ruleset (``nft -f -``) inside ``host``."""
        self.run(host, ["nft", "-f", "-"], input=ruleset)

    # -- processes ------------------------------------------------------------------------------------

    def _argv(self, host: str | None, argv: Sequence[str]) -> list[str]:
        if host is None:
            return list(argv)
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def run(self, host: str | None, argv: Sequence[str], check: bool = True, timeout: float = 30.0,
            input: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside ``host`` (root namespace if None); text output captured."""
        full_env = {**os.environ, **env} if env else None
        res = subprocess.run(self._argv(host, argv), capture_output=True, text=True, timeout=timeout,
                             input=input, env=full_env, check=False)
        if check and res.returncode != 0:
            raise LabError(f"{host}: {' '.join(argv)} -> rc {res.returncode}: {res.stderr.strip()}")
        return res

    def popen(self, host: str | None, argv: Sequence[str], log_path: str | Path,
              env: dict[str, str] | None = None, pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
        """Start a daemon inside ``host`` in its own session, stdout+stderr to ``log_path``, with the
        descriptors ``pass_fds`` inherited.

        The PID is recorded and the process is stopped in :meth:`teardown` (or by :meth:`stop`).
        """
        full_env = {**os.environ, **env} if env else None
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(self._argv(host, argv), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=full_env, start_new_session=True,
                                    pass_fds=pass_fds)
        self._procs.append(proc)
        log.debug("started pid %d in %s: %s", proc.pid, host, " ".join(argv))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 3.0,
             sig: int = signal.SIGTERM) -> int | None:
        """Stop a process started by :meth:`popen` (its process group): ``sig``, then SIGKILL."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        if proc in self._procs:
            self._procs.remove(proc)
        return proc.returncode

    def ping(self, host: str, dst: str, count: int = 3, source: str | None = None,
             interval: float = 0.2, wait: float = 2.0) -> tuple[int, int, str]:
        """Ping from ``host``; returns (transmitted, received, output)."""
        argv = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(wait)]
        if source:
            argv += ["-I", source]
        out = self.run(host, [*argv, dst], check=False, timeout=count * (interval + wait) + 5).stdout
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        return (int(m.group(1)), int(m.group(2)), out) if m else (0, 0, out)

    @contextlib.contextmanager
    def capture(self, host: str, iface: str, bpf_filter: str = "", name: str | None = None,
                timeout: float = 5.0, ike_ports: Iterable[int] = (500,),
                natt_ports: Iterable[int] = (4500,), immediate: bool = True) -> Iterator[Capture]:
        """``tcpdump -w`` on ``host``:``iface`` (an Ethernet interface) for the duration of the block.

        ``immediate=False``: tcpdump reads the kernel's buffer when a block of it times out instead of
        waking for each packet (the timestamps are the kernel's either way), so a capture hardly
        disturbs what it measures; the marker then takes up to a second to arrive.

        Waits until tcpdump listens before entering the block. On exit it sends a marker frame out of
        the interface and waits until tcpdump has written it: every packet that crossed the interface
        during the block is then in the file (tcpdump drops what it has not read yet at SIGINT). Then
        stops tcpdump and parses the file: ``cap.packets`` (list of :class:`~scenarios.lab.pcap.Packet`,
        the marker is not one), ``cap.flows()``. UDP on ``ike_ports`` is IKE; on ``natt_ports`` it is
        told apart as IKE / ESP-in-UDP / keepalive.
        """
        links = self.nl(host).get_links(ifname=iface)
        if not links or links[0]["ifi_type"] != _ARPHRD_ETHER:
            raise LabError(f"capture on {host}:{iface}: not an Ethernet interface")
        stem = name or f"{host}-{iface}-{next(_seq)}"
        path = self.dir / f"{stem}.pcap"
        logf = self.dir / f"{stem}.tcpdump.log"
        argv = ["tcpdump", "-n", "-U", *(["--immediate-mode"] if immediate else []), "-i", iface, "-w", str(path)]
        if bpf_filter:
            argv.append(f"({bpf_filter}) or ether proto {_MARK_ETHERTYPE:#06x}")
        proc = self.popen(host, argv, logf)
        cap = Capture(path, ike_ports=frozenset(ike_ports), natt_ports=frozenset(natt_ports))
        try:
            wait_files(lambda: proc.poll() is not None or "listening on" in read_text(logf), timeout, [logf],
                       what=f"tcpdump on {host}:{iface}")
            if proc.poll() is not None:
                raise LabError(f"tcpdump on {host}:{iface} failed: {read_text(logf)}")
            yield cap
            mark = self._send_mark(host, iface)
            try:
                # tcpdump -U writes each packet as it comes: the file's change is the event
                wait_files(lambda: mark in _read_bytes(path), timeout, [path], what=f"the marker in {path.name}")
            except TimeoutError as e:
                raise LabError(f"tcpdump on {host}:{iface}: {e}\n{read_text(logf)}") from None
        finally:
            self.stop(proc, sig=signal.SIGINT)
            cap.load()

    def _send_mark(self, host: str, iface: str) -> bytes:
        """Send one frame with a fresh 16-octet tag out of ``host``:``iface``; returns the tag.

        Addressed to the interface's own MAC address, so the peer (or the bridge) drops it; packet
        sockets see it after every frame that crossed the interface before."""
        tag = os.urandom(16)
        netns.pushns(self.ns(host))
        try:
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
                s.bind((iface, 0))
                mac = s.getsockname()[4]
                # 60 octets: the Ethernet minimum
                s.send(mac + mac + struct.pack("!H", _MARK_ETHERTYPE) + tag + bytes(30))
        finally:
            netns.popns()
        return tag

    # -- NAT ----------------------------------------------------------------------------------------

    def flush_conntrack(self, hosts: Iterable[str] | None = None) -> None:
        """``conntrack -F`` in the NAT hosts (or the given ones), so no mapping leaks between tests."""
        for host in hosts if hosts is not None else self.nats:
            self.run(host, ["conntrack", "-F"], check=False)

    # -- teardown -----------------------------------------------------------------------------------

    def detach(self) -> None:
        """Leave namespaces and daemons running after this process exits (``scenarios/run --keep``).

        Remove them with :func:`cleanup_stale` (``scenarios/run --cleanup PREFIX``); :func:`cleanup_orphans`
        leaves them alone though the process that made them is gone. What was
        registered with :meth:`at_detach` runs first (a daemon's notification reader handed over)."""
        for fn in self._at_detach:
            try:
                fn()
            except Exception:  # the rest stays running; said in the lab's log
                log.warning("detaching %s: %s failed", self.prefix, fn, exc_info=True)
        self._at_detach.clear()
        KEPT_DIR.mkdir(exist_ok=True)
        (KEPT_DIR / self.prefix).touch()  # cleanup_orphans (the next run's) leaves it alone
        with contextlib.suppress(Exception):
            atexit.unregister(self.teardown)
        self._closed = self._detached = True

    def at_detach(self, fn: Callable[[], None]) -> None:
        """Call `fn` when :meth:`detach` leaves the lab running."""
        self._at_detach.append(fn)

    def teardown(self, remove_dir: bool = False) -> None:
        """Stop recorded processes, kill leftovers in the lab's namespaces, delete the namespaces; with
        ``remove_dir`` also the lab's directory (even when torn down before; never a detached lab's)."""
        if not self._closed:
            self._closed = True
            for proc in list(reversed(self._procs)):
                with contextlib.suppress(Exception):
                    self.stop(proc, timeout=2.0)
            for handle in self._nl.values():
                with contextlib.suppress(Exception):
                    handle.close()
            self._nl.clear()
            cleanup_stale(self.prefix)
            with contextlib.suppress(Exception):
                atexit.unregister(self.teardown)
        if remove_dir and not self._detached:
            shutil.rmtree(self.dir, ignore_errors=True)

    def close(self, passed: bool, say: Callable[[str], object] | None = None) -> None:
        """The end of a run in this lab (a bench, a scenario): :meth:`teardown`; a run that passed leaves
        nothing behind, a failed one keeps the lab's files (configurations, daemon logs, captures) for its
        post-mortem and says where, through ``say`` (default: a line on stderr)."""
        self.teardown(remove_dir=passed)
        if not passed:
            (say or _to_stderr)(f"lab {self.prefix}: files of the failed run: {self.dir}")


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
