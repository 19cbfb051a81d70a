"""deploy/install.sh into a temporary root: the layout docs/deployment.md promises, the installed
commands run from the installed virtualenv (not the checkout), a re-run keeps the admin's files and
is idempotent, --uninstall removes the product and keeps configuration, data and the account."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from unitfiles import COMMANDS, DEPLOY, UNITS, install

from tests.guards import require

CONFIGS = ("iked.toml", "mediation-server.toml", "mediation-client.toml", "medmgr-server.env",
           "medmgr-client.env")


def _account(root: Path, name: str) -> tuple[list[str], list[str]]:
    pw = [line.split(":") for line in (root / "etc/passwd").read_text().splitlines()]
    gr = [line.split(":") for line in (root / "etc/group").read_text().splitlines()]
    users = [p for p in pw if p[0] == name]
    groups = [g for g in gr if g[0] == name]
    assert len(users) == 1 and len(groups) == 1, (users, groups)
    return users[0], groups[0]


def _mode_owner(p: Path) -> tuple[int, int, int]:
    st = p.lstat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def test_layout(installed: Path) -> None:
    root = installed
    user, group = _account(root, "ikeme")
    uid, gid = int(user[2]), int(group[2])
    assert user[3] == group[2] and user[5] == "/var/lib/ikeme" and user[6] == "/usr/sbin/nologin"
    assert (root / "usr/lib/sysusers.d/ikeme.conf").read_text() == (DEPLOY / "ikeme.sysusers").read_text()

    for c in COMMANDS:
        exe = root / "opt/ikeme/bin" / c
        assert exe.is_file() and os.access(exe, os.X_OK), c
        link = root / "usr/local/bin" / c
        assert link.is_symlink() and os.readlink(link) == f"/opt/ikeme/bin/{c}"

    assert _mode_owner(root / "etc/ikeme") == (0o750, 0, gid)
    for f in CONFIGS:
        assert _mode_owner(root / "etc/ikeme" / f) == (0o640, 0, gid), f
        assert (root / "etc/ikeme" / f).read_bytes() == (DEPLOY / "examples" / f).read_bytes()
    for d in ("var/lib/ikeme", "var/log/ikeme"):
        assert _mode_owner(root / d) == (0o750, uid, gid), d

    for u in UNITS:
        installed_unit = root / "etc/systemd/system" / u
        assert installed_unit.read_bytes() == (DEPLOY / u).read_bytes(), u
        assert _mode_owner(installed_unit)[0] == 0o644
    share = root / "opt/ikeme/share/ikeme"
    for f in ("lighttpd-medmgr.conf", "apache-medmgr.conf", "README-medmgr.md", "schema.sql",
              "doc/deployment.md", "doc/configuration.md", *(f"examples/{c}" for c in CONFIGS)):
        assert (share / f).is_file(), f


def test_installed_commands_run_from_the_installed_venv(installed: Path) -> None:
    bin_ = installed / "opt/ikeme/bin"
    for c in COMMANDS:
        r = subprocess.run([str(bin_ / c), "--help"], capture_output=True, text=True, timeout=60, cwd="/")
        assert r.returncode == 0 and "usage:" in r.stdout, (c, r.stdout, r.stderr)
    r = subprocess.run([str(bin_ / "medmgr-client"), "hash-password"], input="a long admin password\n",
                       capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    # a real install, not a link back to this checkout (which may go away)
    r = subprocess.run([str(bin_ / "python"), "-c", "import core_ike, medmgr_web; print(core_ike.__file__);"
                        "print(medmgr_web.__file__)"], capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    for path in r.stdout.split():
        assert path.startswith(f"{installed}/opt/ikeme/lib/") and "site-packages" in path, path
    # the installed product makes its database from the installed schema (as portals and daemons do)
    r = subprocess.run([str(bin_ / "python"), "-c", "import sys; from med_db.engine import make_engine, "
                        "create_all; from sqlalchemy import inspect; e = make_engine(sys.argv[1]); create_all(e);"
                        "print(len(inspect(e).get_table_names()))", f"sqlite:///{installed}/schema-check.sqlite"],
                       capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0 and int(r.stdout) >= 5, r.stderr[-2000:]
    (installed / "schema-check.sqlite").unlink()
    # the package data the portals need came along (templates, static files, schema)
    r = subprocess.run([str(bin_ / "python"), "-c", "import importlib.resources as r, medmgr_web;"
                        "print(sum(1 for _ in r.files(medmgr_web).joinpath('templates').iterdir()))"],
                       capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0 and int(r.stdout) > 0, r.stderr


def test_rerun_keeps_admin_files_then_uninstall() -> None:
    require("root", why="install.sh chowns files to the ikeme account and runs useradd")
    root = Path(tempfile.mkdtemp(prefix="ikeme-reinstall-", dir="/var/tmp"))
    try:
        first = install(root, "--extras", "")
        assert first.returncode == 0, first.stderr[-3000:]
        passwd = (root / "etc/passwd").read_text()

        mine = '[daemon]\ncontrol = "/run/ikeme/iked.ctl"\n# the admin\'s own\n'
        (root / "etc/ikeme/iked.toml").write_text(mine)
        os.chmod(root / "etc/ikeme/iked.toml", 0o600)
        edited = root / "etc/systemd/system/iked.service"
        edited.write_text(edited.read_text().replace("Restart=on-failure", "Restart=always"))
        (root / "usr/local/bin/ikectl").unlink()
        (root / "usr/local/bin/ikectl").write_text("#!/bin/sh\necho an admin's own ikectl\n")

        again = install(root, "--extras", "")
        assert again.returncode == 0, again.stderr[-3000:]
        assert (root / "etc/ikeme/iked.toml").read_text() == mine
        assert stat.S_IMODE((root / "etc/ikeme/iked.toml").stat().st_mode) == 0o600
        assert "kept /etc/ikeme/iked.toml" in again.stdout
        assert "created" not in again.stdout
        assert (root / "etc/passwd").read_text() == passwd
        assert edited.read_bytes() == (DEPLOY / "iked.service").read_bytes()
        assert "Restart=always" in (root / "etc/systemd/system/iked.service.old").read_text()
        assert "iked.service.old" in again.stdout
        assert not (root / "usr/local/bin/ikectl").is_symlink()
        assert "left /usr/local/bin/ikectl alone" in again.stdout

        third = install(root, "--extras", "")
        assert third.returncode == 0, third.stderr[-3000:]
        assert ".old" not in third.stdout  # nothing of ours was edited since

        gone = install(root, "--uninstall")
        assert gone.returncode == 0, gone.stderr[-3000:]
        assert not (root / "opt/ikeme").exists()
        assert not any((root / "etc/systemd/system" / u).exists() for u in UNITS)
        assert not (root / "usr/lib/sysusers.d/ikeme.conf").exists()
        assert sorted(p.name for p in (root / "usr/local/bin").iterdir()) == ["ikectl"]  # the admin's
        assert (root / "etc/ikeme/iked.toml").read_text() == mine
        assert (root / "var/lib/ikeme").is_dir() and (root / "etc/passwd").read_text() == passwd
    finally:
        shutil.rmtree(root, ignore_errors=True)
