"""The systemd units in deploy/: `systemd-analyze verify` finds nothing to say about them as
deploy/install.sh installs them, their hardening holds, and they agree with the example configs,
the web server snippets, pyproject's console scripts and docs/deployment.md."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from unitfiles import DAEMONS, DEPLOY, PORTALS, REPO, UNITS, Unit, unit

ANALYZE = "systemd-analyze"
TUN_USERS = ("iked.service", "mediation-client.service")
CAPS = {
    "iked.service": {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"},
    "mediation-client.service": {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"},
    "mediation-server.service": {"CAP_NET_BIND_SERVICE"},
    "medmgr-server.service": set(),
    "medmgr-client.service": set(),
    "medmgr-sa.service": set(),
}
DOC = (REPO / "docs/deployment.md").read_text()


def _in_root(root: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run `script` in a private mount namespace in which `root` has the host's systemd unit library
    and /usr/bin/kill (what the units reference besides the installed files), so that
    `systemd-analyze --root` resolves every path the units name inside the installed tree."""
    for d in ("usr/lib/systemd", "usr/bin"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "usr/bin/kill").touch()
    for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("sbin", "usr/sbin")):
        if not (root / link).is_symlink():
            (root / link).symlink_to(target)
    setup = ("mount -t tmpfs tmpfs /run && "  # systemd-analyze leaves a marker in /run/systemd
             f"mount --bind /usr/lib/systemd {root}/usr/lib/systemd && "
             f"mount --bind /usr/bin/kill {root}/usr/bin/kill && cd {root}/etc/systemd/system && ")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", setup + script],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def analyzable(installed: Path) -> Path:
    if subprocess.run([ANALYZE, "--version"], capture_output=True).returncode != 0:
        pytest.fail("systemd-analyze is missing (Debian package systemd; scripts/setup.sh installs it)")
    return installed


def test_systemd_analyze_verify_is_silent(analyzable: Path) -> None:
    r = _in_root(analyzable, f"{ANALYZE} verify --root={analyzable} {' '.join(UNITS)}")
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_systemd_analyze_verify_would_speak(analyzable: Path) -> None:
    """The check above can fail: a unknown key and a missing ExecStart binary are reported."""
    good = (analyzable / "etc/systemd/system/iked.service").read_text()
    bad = analyzable / "etc/systemd/system/ikeme-broken.service"
    bad.write_text(good.replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomeDir=yes")
                   .replace("/opt/ikeme/bin/iked", "/opt/ikeme/bin/no-such-daemon"))
    try:
        r = _in_root(analyzable, f"{ANALYZE} verify --root={analyzable} ikeme-broken.service")
    finally:
        bad.unlink()
    out = r.stdout + r.stderr
    assert "Unknown key" in out and "ProtectHomeDir" in out, out
    assert "no-such-daemon" in out, out


@pytest.mark.parametrize("name", UNITS)
def test_security_exposure_stays_low(analyzable: Path, name: str) -> None:
    r = _in_root(analyzable, f"{ANALYZE} security --offline=yes --root={analyzable} {name}")
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m.group(1)) <= 2.5, r.stdout  # systemd's scale: 0 (locked down) .. 10; "OK" below 4


# ---- static checks of the unit files (no root needed)


@pytest.mark.parametrize("name", UNITS)
def test_hardening(name: str) -> None:
    u = unit(name)
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("User", "ikeme"), ("Restart", "on-failure")):
        assert u.get(key) == value, (name, key)
    assert u.words("RestrictAddressFamilies") <= {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}
    assert u.words("RestrictAddressFamilies") >= {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert u.words("CapabilityBoundingSet") == CAPS[name]
    assert u.words("AmbientCapabilities") == CAPS[name]
    if name in TUN_USERS:
        assert u.get("DevicePolicy") == "closed" and u.all("DeviceAllow") == ["/dev/net/tun rw"]
        assert u.get("PrivateDevices") is None
    else:
        assert u.get("PrivateDevices") == "yes" and not u.all("DeviceAllow")


@pytest.mark.parametrize("name", UNITS)
def test_units_can_read_what_they_name_in_etc_ikeme(name: str) -> None:
    """/etc/ikeme is root:ikeme 0750, its files 0640 (deploy/install.sh): a unit that names a file
    there runs in group ikeme."""
    u = unit(name)
    names = " ".join(u.all("ExecStart") + u.all("EnvironmentFile"))
    assert "/etc/ikeme/" in names
    assert "ikeme" in {u.get("Group")} | u.words("SupplementaryGroups"), name


@pytest.mark.parametrize("name", DAEMONS)
def test_daemons_notify_and_reload(name: str) -> None:
    u = unit(name)
    assert u.get("Type") == "notify" and u.get("NotifyAccess") == "main"
    assert u.get("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert u.get("Group") == "ikeme"


@pytest.mark.parametrize("name", PORTALS)
def test_portals_sockets_for_the_web_server(name: str) -> None:
    u = unit(name)
    assert u.get("Group") == "www-data" and u.get("RuntimeDirectoryMode") == "0750"
    assert "--socket-mode 660" in (u.get("ExecStart") or "")


def test_exec_start_runs_an_installed_console_script() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for name in UNITS:
        argv0 = (unit(name).get("ExecStart") or "").split()[0]
        assert argv0 == f"/opt/ikeme/bin/{name.removesuffix('.service')}", (name, argv0)
        assert name.removesuffix(".service") in scripts


def _owners(kind: str) -> dict[str, list[Unit]]:
    out: dict[str, list[Unit]] = {}
    for name in UNITS:
        u = unit(name)
        for d in u.words(kind):
            out.setdefault(d, []).append(u)
    return out


@pytest.mark.parametrize("kind", ["RuntimeDirectory", "StateDirectory", "LogsDirectory"])
def test_shared_directories_agree(kind: str) -> None:
    """Units naming the same directory must not fight over it: systemd gives it the User/Group and
    mode of whichever unit starts, and removes a RuntimeDirectory when its unit stops."""
    for d, units in _owners(kind).items():
        assert len({(u.get("User"), u.get("Group"), u.get(kind + "Mode")) for u in units}) == 1, (kind, d)
        if kind == "RuntimeDirectory" and len(units) > 1:
            assert all(u.get("RuntimeDirectoryPreserve") == "yes" for u in units), d


def test_portals_write_the_state_directory_as_its_owner() -> None:
    state_users = {u.get("User") for u in _owners("StateDirectory")["ikeme"]}
    for name in PORTALS:
        u = unit(name)
        assert u.words("ReadWritePaths") == {"/var/lib/ikeme"} and not u.words("StateDirectory")
        assert {u.get("User")} == state_users


def _example(name: str) -> dict[str, object]:
    cmd = unit(name).get("ExecStart") or ""
    conf = cmd.split(" -c ", 1)[1].split()[0]
    assert conf.startswith("/etc/ikeme/")
    return tomllib.loads((DEPLOY / "examples" / Path(conf).name).read_text())


def _sqlite_path(url: str) -> str:
    assert url.startswith("sqlite:///"), url
    return url.removeprefix("sqlite:///")


@pytest.mark.parametrize("name", DAEMONS)
def test_example_configs_use_the_units_directories(name: str) -> None:
    u = unit(name)
    cfg = _example(name)
    control = Path(cfg["daemon"]["control"])  # type: ignore[index]
    assert str(control.parent) in {f"/run/{d}" for d in u.words("RuntimeDirectory")}, control
    for section in ("mediation", "client"):
        db = cfg.get(section, {}).get("database")  # type: ignore[attr-defined]
        if db:
            assert str(Path(_sqlite_path(db)).parent) in {f"/var/lib/{d}" for d in u.words("StateDirectory")}


def test_portal_databases_are_the_daemons() -> None:
    server_db = _example("mediation-server.service")["mediation"]["database"]  # type: ignore[index]
    client_db = _example("mediation-client.service")["client"]["database"]  # type: ignore[index]
    assert unit("medmgr-server.service").environment()["MED_DB_URL"] == server_db
    assert unit("medmgr-client.service").environment()["MED_DB_URL"] == client_db


def test_client_manager_reloads_the_mediation_client() -> None:
    control = _example("mediation-client.service")["daemon"]["control"]  # type: ignore[index]
    cmd = (unit("medmgr-client.service").get("ExecStart") or "").split()
    assert cmd[cmd.index("--daemon-socket") + 1] == control


def _uncommented(path: Path) -> str:
    """The file without its comment lines (both servers' comments start a line with #): the examples in
    them (a second worker's socket) are not sockets the units create."""
    return re.sub(r"(?m)^\s*#.*$", "", path.read_text())


def test_web_server_snippets_name_the_portal_sockets() -> None:
    sockets = set()
    for name in PORTALS:
        u = unit(name)
        sock = Path((u.get("ExecStart") or "").split("--socket ", 1)[1].split()[0])
        assert str(sock.parent) in {f"/run/{d}" for d in u.words("RuntimeDirectory")}
        sockets.add(str(sock))
    lighttpd = set(re.findall(r'"socket"\s*=>\s*"([^"]+)"', _uncommented(DEPLOY / "lighttpd-medmgr.conf")))
    apache = set(re.findall(r'"unix:([^|"]+)\|', _uncommented(DEPLOY / "apache-medmgr.conf")))
    assert lighttpd == sockets and apache == sockets


@pytest.mark.parametrize("name", UNITS)
def test_every_variable_has_a_default_and_is_documented(name: str) -> None:
    u = unit(name)
    used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", u.get("ExecStart") or "")) - {"MAINPID"}
    env = u.environment()
    assert used <= set(env), (name, used - set(env))
    for var in set(env) | used:
        assert f"`{var}`" in DOC, var
    for env_file in u.all("EnvironmentFile"):
        path = env_file.lstrip("-")
        assert path.startswith("/etc/ikeme/") and (DEPLOY / "examples" / Path(path).name).is_file()
        assert path in DOC


def test_firewall_section_names_every_port() -> None:
    conf = (REPO / "docs/configuration.md").read_text()
    relay = re.search(r"^\| `relay_ports` \| [^|]+\| `\"(\d+)-(\d+)\"`", conf, re.M)
    assert relay, "docs/configuration.md no longer documents relay_ports' default"
    low, high = relay.groups()
    firewall = DOC.split("## Firewall", 1)[1].split("\n## ", 1)[0]
    for port in ("| 500 |", "| 4500 |", f"| {low}-{high} |", "relay_ports", "443"):
        assert port in firewall, port
    assert f"udp dport {low}-{high} accept" in firewall
