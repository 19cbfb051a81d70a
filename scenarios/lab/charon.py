"""Drive a real strongSwan charon (Debian 5.9.8) inside a lab namespace (docs/nat-lab.md §7).

Each instance gets its own directory ``<lab>/<host>/<name>/`` holding ``strongswan.conf``, the swanctl
tree (``swanctl/swanctl.conf``, ``private/``, ``pubkey/`` ...), a private ``run/`` bind-mounted over
``/run`` (charon's PID file is hard-coded to /var/run/charon.pid), ``charon.log`` and the vici socket.
The data plane is kernel-libipsec (userspace ESP over TUN): this kernel has no ESP.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import vici

from scenarios.lab.events import wait_files
from scenarios.lab.netns import Lab, LabError, read_text, wait_for

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "swanctl"
PLUGINS = ("kernel-libipsec random nonce aes sha1 sha2 hmac gmp curve25519 openssl pem pkcs1 pkcs8 x509 "
           "pubkey kdf kernel-netlink socket-default vici")

STRONGSWAN_CONF = """charon {{
  load_modular = no
  load = {plugins}
  install_routes = yes
  plugins {{
    vici {{
      socket = unix://{vici}
    }}
  }}
  filelog {{
    main {{
      path = {log}
      time_format = %H:%M:%S
      time_add_ms = yes
      default = 1
      ike = {ike_level}
      {extra_log}
      flush_line = yes
    }}
  }}
{extra}
}}
swanctl {{
  socket = unix://{vici}
}}
"""


class CharonError(RuntimeError):
    """charon did not start, or a vici command failed."""


def decode(value: Any) -> Any:
    """vici message values (bytes, nested dicts/lists) -> str values, recursively."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, Mapping):
        return {str(k): decode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [decode(v) for v in value]
    return value


class Charon:
    """One charon daemon in ``host`` of ``lab``.

    ``conf`` is swanctl.conf text, ``settings`` extra strongswan.conf lines placed inside ``charon { }``
    (newline-separated, e.g. ``"retransmit_tries = 2\\nmake_before_break = yes"``).
    """

    state_backstop: float | None = 0.1  # its threads may log a change before list-sas shows it (wait_daemons)

    def __init__(self, lab: Lab, host: str, name: str = "charon", conf: str = "", settings: str = "",
                 plugins: str = PLUGINS, ike_level: int = 2, log_levels: Mapping[str, int] | None = None) -> None:
        self.lab = lab
        self.host = host
        self.name = name
        self.dir = lab.host_dir(host) / name
        self.swanctl_dir = self.dir / "swanctl"
        self.run_dir = self.dir / "run"
        self.log_path = self.dir / "charon.log"
        self.vici_path = self.dir / "charon.vici"
        self.conf_path = self.dir / "strongswan.conf"
        if len(str(self.vici_path)) > 100:
            raise CharonError(f"vici socket path too long for AF_UNIX: {self.vici_path}")
        self.conf = conf
        self.settings = settings
        self.plugins = plugins
        self.ike_level = ike_level
        self.log_levels = dict(log_levels or {})
        self.proc: Any = None
        for sub in ("private", "pubkey", "x509", "x509ca", "rsa", "ecdsa", "pkcs8", "conf.d"):
            (self.swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    # -- files ----------------------------------------------------------------------------------

    def write_config(self) -> None:
        extra_log = "\n      ".join(f"{k} = {v}" for k, v in self.log_levels.items())
        self.conf_path.write_text(STRONGSWAN_CONF.format(
            plugins=self.plugins, vici=self.vici_path, log=self.log_path, ike_level=self.ike_level,
            extra_log=extra_log, extra="\n".join("  " + line for line in self.settings.splitlines())))
        (self.swanctl_dir / "swanctl.conf").write_text(self.conf)

    def add_file(self, subdir: str, filename: str, data: bytes | str) -> Path:
        """Write a credential file into the swanctl tree (``private``, ``pubkey``, ``x509`` ...)."""
        path = self.swanctl_dir / subdir / filename
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    # -- life cycle ------------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        return {"STRONGSWAN_CONF": str(self.conf_path), "SWANCTL_DIR": str(self.swanctl_dir)}

    def daemon_command(self) -> str:
        """What runs charon in this instance's namespace, its /run bound to ours (a subclass: the starter)."""
        return CHARON

    def start(self, timeout: float = 10.0, load: bool = True) -> Charon:
        """Write the configs, start charon, wait until vici answers, then (``load``) load the config."""
        self.write_config()
        with contextlib.suppress(FileNotFoundError):
            self.vici_path.unlink()
        cmd = f"mount --bind {self.run_dir} /run && exec {self.daemon_command()}"
        self.proc = self.lab.popen(self.host, ["sh", "-c", cmd], self.dir / "stdout.log", env=self.env)
        try:
            # charon (not charon-systemd) has no readiness notification: its vici socket appearing and
            # its log growing are the events; the check again after 50 ms without one covers the moment
            # between the socket's bind (the file) and its listen
            wait_files(self._vici_ready, timeout, [self.vici_path, self.log_path], backstop=0.05,
                       what=f"charon vici on {self.host}")
        except TimeoutError as e:
            raise CharonError(f"{e}\n{self.log_tail()}") from None
        if load:
            self.load()
        return self

    def _vici_ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise CharonError(f"charon on {self.host} exited rc={self.proc.returncode}\n{self.log_tail()}")
        if not self.vici_path.exists():
            return False
        try:
            with contextlib.closing(self.vici()) as s:
                s.version()
            return True
        except OSError:
            return False

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc, timeout)
            self.proc = None

    def __enter__(self) -> Charon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- vici / swanctl --------------------------------------------------------------------------

    def vici(self, timeout: float | None = None) -> _Session:
        """A new vici session (close it, or use ``with contextlib.closing(...)``)."""
        sock = socket.socket(socket.AF_UNIX)
        if timeout is not None:
            sock.settimeout(timeout)
        sock.connect(str(self.vici_path))
        return _Session(sock)

    def swanctl(self, *args: str, check: bool = True, timeout: float = 30.0) -> str:
        """Run ``swanctl ARGS --uri <this charon>``; returns stdout."""
        res = self.lab.run(None, [SWANCTL, *args, "--uri", f"unix://{self.vici_path}"], check=False,
                           timeout=timeout, env=self.env)
        if check and res.returncode != 0:
            raise CharonError(f"swanctl {' '.join(args)} on {self.host} rc={res.returncode}: "
                              f"{res.stdout.strip()} {res.stderr.strip()}")
        return res.stdout

    def load(self) -> str:
        """``swanctl --load-all`` (connections, secrets, keys from this charon's swanctl dir)."""
        return self.swanctl("--load-all", "--noprompt")

    def initiate(self, child: str | None = None, ike: str | None = None, timeout: float = 30.0,
                 wait: bool = True) -> list[str]:
        """Initiate through vici; returns charon's log lines for the request.

        ``wait=False`` returns as soon as charon accepted the request (vici ``timeout = -1``).
        Raises :class:`CharonError` on failure.
        """
        req: dict[str, Any] = {"timeout": -1 if not wait else int(timeout * 1000)}
        if child:
            req["child"] = child
        if ike:
            req["ike"] = ike
        lines: list[str] = []
        with contextlib.closing(self.vici()) as s:
            try:
                for entry in s.initiate(req):
                    lines.append(decode(entry).get("msg", ""))
            except vici.exception.CommandException as e:
                raise CharonError(f"initiate {child or ike} on {self.host}: {e}\n" + "\n".join(lines)) from None
        return lines

    def terminate(self, child: str | None = None, ike: str | None = None, timeout: float = 10.0) -> None:
        req: dict[str, Any] = {"timeout": int(timeout * 1000), "force": "yes"}
        if child:
            req["child"] = child
        if ike:
            req["ike"] = ike
        with contextlib.closing(self.vici()) as s, contextlib.suppress(vici.exception.CommandException):
            for _ in s.terminate(req):
                pass

    def terminate_all(self) -> None:
        """Terminate every IKE_SA (wait for :meth:`list_sas` to be empty)."""
        for sa in self.list_sas():
            self.terminate(ike=sa["name"])

    def list_sas(self, ike: str | None = None) -> list[dict[str, Any]]:
        """IKE_SAs as dicts of str values; each gets its connection name under ``"name"``."""
        req = {"ike": ike} if ike else {}
        out = []
        with contextlib.closing(self.vici()) as s:
            for entry in s.list_sas(req):
                for name, sa in decode(entry).items():
                    out.append({"name": name, **sa})
        return out

    def child_sas(self, ike: str | None = None) -> list[dict[str, Any]]:
        """All CHILD_SAs (``name``, ``state``, ``spi-in`` ...), each with its IKE_SA under ``"ike"``."""
        out = []
        for sa in self.list_sas(ike):
            for child in sa.get("child-sas", {}).values():
                out.append({**child, "ike": sa})
        return out

    def wait_child(self, child: str, state: str = "INSTALLED", timeout: float = 30.0,
                   interval: float = 0.005) -> dict[str, Any]:
        """Poll ``list-sas`` until CHILD_SA ``child`` is in ``state``; returns it. A poll: charon tells
        SA changes only to a vici event subscription (ike-updown, child-updown), which this driver does
        not hold, and its log line may come before `list-sas` shows the state; benchmarks time setups
        with it (the interval bounds the error)."""
        def found() -> dict[str, Any] | None:
            for c in self.child_sas():
                if c.get("name") == child and c.get("state") == state:
                    return c
            return None
        try:
            return wait_for(found, timeout, interval, what=f"CHILD_SA {child} {state} on {self.host}")
        except TimeoutError as e:
            raise CharonError(f"{e}\n{self.log_tail()}") from None

    def wait_ike(self, ike: str, state: str = "ESTABLISHED", count: int = 1, timeout: float = 30.0,
                 interval: float = 0.01) -> list[dict[str, Any]]:
        """Poll until at least ``count`` IKE_SAs of connection ``ike`` are in ``state`` (a poll, as
        :meth:`wait_child`)."""
        def found() -> list[dict[str, Any]] | None:
            sas = [sa for sa in self.list_sas(ike) if sa.get("state") == state]
            return sas if len(sas) >= count else None
        try:
            return wait_for(found, timeout, interval, what=f"IKE_SA {ike} {state} x{count} on {self.host}")
        except TimeoutError as e:
            raise CharonError(f"{e}\n{self.log_tail()}") from None

    # -- log ---------------------------------------------------------------------------------------

    def log_mark(self) -> int:
        """Current size of charon.log: pass to :meth:`wait_log` as ``since`` to match only new lines."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, since: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, regex: str, timeout: float = 10.0, since: int = 0,
                 interval: float = 0.01) -> re.Match[str]:
        """Tail charon.log from offset ``since`` until a line matches ``regex``; returns the match."""
        pattern = re.compile(regex, re.MULTILINE)
        buf, pos = "", since

        def found() -> re.Match[str] | None:
            nonlocal buf, pos
            chunk = self.log_text(pos)
            if not chunk:
                return None
            pos += len(chunk.encode())
            buf += chunk
            return pattern.search(buf)

        try:
            return wait_files(found, timeout, [self.log_path], what=f"a log line matching {regex!r} on {self.host}")
        except TimeoutError as e:
            raise CharonError(f"{e}\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_text() or read_text(self.dir / "stdout.log")
        return "\n".join(f"  [{self.host}] {ln}" for ln in text.splitlines()[-lines:])

    def log_lines(self, regex: str, since: int = 0) -> Iterator[str]:
        pattern = re.compile(regex)
        for line in self.log_text(since).splitlines():
            if pattern.search(line):
                yield line


class _Session(vici.Session):  # type: ignore[misc]
    """vici.Session that owns its socket and can be closed."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self._sock = sock

    def close(self) -> None:
        self._sock.close()


__all__ = ["PLUGINS", "Charon", "CharonError", "LabError", "decode"]
