"""Reading the shipped systemd units and the install script's result (helpers for tests/deploy)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
INSTALL_SH = DEPLOY / "install.sh"
UNITS = ("iked.service", "mediation-server.service", "mediation-client.service", "medmgr-server.service",
         "medmgr-client.service", "medmgr-sa.service")
DAEMONS = ("iked.service", "mediation-server.service", "mediation-client.service")
PORTALS = ("medmgr-server.service", "medmgr-client.service", "medmgr-sa.service")
COMMANDS = ("iked", "ikectl", "ikeme-ipsec", "mediation-server", "mediation-client", "medmgr-server", "medmgr-client",
            "medmgr-sa")


class Unit:
    """A unit file as systemd reads it: sections of (key, value), continuation lines joined."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sections: dict[str, list[tuple[str, str]]] = {}
        section = ""
        pending = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not pending and (not line or line[0] in "#;"):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line, pending = pending + line, ""
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                self.sections.setdefault(section, [])
                continue
            key, _, value = line.partition("=")
            self.sections.setdefault(section, []).append((key.strip(), " ".join(value.split())))

    def all(self, key: str, section: str = "Service") -> list[str]:
        return [v for k, v in self.sections.get(section, []) if k == key]

    def get(self, key: str, section: str = "Service") -> str | None:
        values = self.all(key, section)
        return values[-1] if values else None

    def words(self, key: str, section: str = "Service") -> set[str]:
        """A list-valued setting (capabilities, address families), all its lines together."""
        return {w for v in self.all(key, section) for w in v.split()}

    def environment(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for v in self.all("Environment"):
            for item in v.split():
                name, _, value = item.partition("=")
                env[name] = value
        return env


def unit(name: str) -> Unit:
    return Unit(DEPLOY / name)


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALL_SH), "--root", str(root), *args], capture_output=True,
                          text=True, timeout=900)


def installed_root() -> Iterator[Path]:
    """deploy/install.sh --root into a fresh directory others may traverse (daemons run as nobody)."""
    root = Path(tempfile.mkdtemp(prefix="ikeme-install-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    try:
        r = install(root)
        assert r.returncode == 0, f"install.sh failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
