"""The one place that decides whether a test can run on this machine: root, strongSwan's charon,
lighttpd, tcpdump, ... each checked when the test is set up (not at import) and named precisely when
it is missing.

    pytestmark = [pytest.mark.netns, needs("root", "strongswan", why="charon in network namespaces")]
    require("root", why="install.sh chowns files")      # inside a fixture

A missing component skips the test with the reason, except where every component must be installed
(``IKEME_REQUIRE_ALL=1``, set by scripts/test.sh, which installs them first): there the test fails,
because a skip would hide a broken setup. tests/conftest.py applies the ``needs`` marker.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

REQUIRE_ALL = "IKEME_REQUIRE_ALL"


def _root() -> str | None:
    uid = os.geteuid()
    return None if uid == 0 else f"not root (uid {uid})"


def _strongswan() -> str | None:
    from scenarios.lab.charon import CHARON  # where the lab starts charon from

    gone = []
    if not os.access(CHARON, os.X_OK):
        gone.append(f"strongSwan's charon is not at {CHARON} (Debian package strongswan-charon)")
    if not shutil.which("swanctl"):
        gone.append("swanctl is not on PATH (Debian package strongswan-swanctl)")
    return "; ".join(gone) or None


def _file(path: str, package: str) -> Callable[[], str | None]:
    return lambda: None if os.access(path, os.X_OK) else f"{path} is missing (Debian package {package})"


def _command(name: str, package: str) -> Callable[[], str | None]:
    return lambda: None if shutil.which(name) else f"{name} is not on PATH (Debian package {package})"


def _tun() -> str | None:
    return None if Path("/dev/net/tun").exists() else "/dev/net/tun is missing (kernel module tun)"


def _commands(package: str, *names: str) -> Callable[[], str | None]:
    def check() -> str | None:
        gone = [n for n in names if not shutil.which(n)]
        return f"{' and '.join(gone)} not on PATH (Debian package {package})" if gone else None
    return check


def _files(package: str, *paths: str) -> Callable[[], str | None]:
    def check() -> str | None:
        gone = [p for p in paths if not os.path.exists(p)]
        return f"{' and '.join(gone)} missing (Debian package {package})" if gone else None
    return check


# component -> check: None when present, else what is missing and how to install it
COMPONENTS: dict[str, Callable[[], str | None]] = {
    "root": _root,
    "strongswan": _strongswan,
    "lighttpd": _file("/usr/sbin/lighttpd", "lighttpd"),
    "miniupnpd": _file("/usr/sbin/miniupnpd", "miniupnpd-nftables"),
    "apache2": _files("apache2", "/usr/sbin/apache2", "/usr/lib/apache2/modules/mod_proxy_fcgi.so"),
    "chromium": _file("/usr/bin/chromium", "chromium"),
    "postgresql": _file("/usr/lib/postgresql/15/bin/initdb", "postgresql-15"),
    "redis": _file("/usr/bin/redis-server", "redis-server"),
    "mariadb": _files("mariadb-server", "/usr/sbin/mariadbd", "/usr/bin/mariadb-install-db"),
    "tcpdump": _command("tcpdump", "tcpdump"),
    "ethtool": _command("ethtool", "ethtool"),
    "iproute2": _command("ip", "iproute2"),
    "setpriv": _command("setpriv", "util-linux"),
    "tun": _tun,
    "valgrind": _commands("valgrind", "valgrind", "callgrind_annotate", "callgrind_control"),
}


def _known(components: tuple[str, ...]) -> None:
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown components {unknown}; tests/guards.py knows {sorted(COMPONENTS)}")


def missing(*components: str) -> list[str]:
    """The reasons, one per missing component (empty when all are there)."""
    _known(components)
    return [r for r in (COMPONENTS[c]() for c in components) if r]


def require(*components: str, why: str = "") -> None:
    """Skip the running test (fail it under IKEME_REQUIRE_ALL=1) unless every component is there;
    ``why`` says what the test needs them for."""
    reasons = missing(*components)
    if not reasons:
        return
    why = f"{why}: {'; '.join(reasons)}" if why else "; ".join(reasons)
    if os.environ.get(REQUIRE_ALL) == "1":
        pytest.fail(f"{why} ({REQUIRE_ALL}=1: every component must be installed, see scripts/setup.sh)",
                    pytrace=False)
    pytest.skip(why)


def needs(*components: str, why: str = "") -> pytest.MarkDecorator:
    """Marker: the test runs only where every component is there (checked by tests/conftest.py at setup
    with :func:`require`)."""
    _known(components)
    return pytest.mark.needs(*components, why=why)
