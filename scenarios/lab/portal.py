"""The portals the way a user meets them, inside a lab: lighttpd + a medmgr_web FastCGI app started in a
host's namespace, and a small browser (urllib, cookie jar, CSRF tokens read from the forms) whose
sockets live in a chosen namespace, so "the user on alice" talks to what alice can reach.

```python
site = PortalSite(lab, "carol", "server_manager", bind=CAROL, args=["--ms-address", CAROL]).start()
web = Browser(lab, "alice", site.url)              # a user at alice, over the internet to carol
page = web.submit("user/add", "user/add", {"new_login": "pat", ...})
```
"""

from __future__ import annotations

import contextlib
import ctypes
import html
import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from scenarios.lab.events import wait_files
from scenarios.lab.netns import Lab, LabError, wait_for

ROOT = Path(__file__).resolve().parents[2]
LIGHTTPD = "/usr/sbin/lighttpd"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def in_netns(lab: Lab, host: str, fn: Callable[[], T], timeout: float = 60.0) -> T:
    """Run `fn` in a fresh thread switched (setns(2) is per thread) into `host`'s network namespace."""
    out: list[T] = []
    err: list[BaseException] = []

    def body() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{lab.ns(host)}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {lab.ns(host)} failed")
            finally:
                os.close(fd)
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            err.append(e)

    t = threading.Thread(target=body, name=f"netns-{host}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise LabError(f"{host}: call did not finish within {timeout} s")
    if err:
        raise err[0]
    return out[0]


@dataclass
class Page:
    status: int
    url: str
    body: str

    def csrf(self) -> str:
        m = _CSRF_RE.search(self.body)
        if m is None:
            raise LabError(f"no CSRF token in {self.url}")
        return html.unescape(m.group(1))

    def text(self) -> str:
        """What a user reads: tags stripped, entities decoded, whitespace collapsed."""
        return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", self.body)).split())

    def element(self, elem_id: str) -> str:
        """Text content of the element with id `elem_id` (code, textarea, ...)."""
        m = re.search(rf'<(\w+)[^>]*\bid="{re.escape(elem_id)}"[^>]*>(.*?)</\1>', self.body, re.S)
        if m is None:
            raise LabError(f"no element #{elem_id} in {self.url}")
        return html.unescape(m.group(2))

    def flashes(self) -> list[str]:
        """The page's notices ("Peer alice added, ...")."""
        return [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", m)).split())
                for m in re.findall(r'<p class="notice">(.*?)</p>', self.body, re.S)]

    def errors(self) -> list[str]:
        m = re.search(r'<div class="errors"[^>]*>(.*?)</div>', self.body, re.S)
        return [] if m is None else [" ".join(html.unescape(e).split()) for e in re.findall(r"<p>(.*?)</p>", m.group(1), re.S)]


class Browser:
    """A user's browser: cookies kept, forms posted with the CSRF token of the page they came from."""

    def __init__(self, lab: Lab, host: str, base_url: str) -> None:
        self.lab, self.host, self.base = lab, host, base_url.rstrip("/")
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def _open(self, path: str, form: dict[str, str] | None) -> Page:
        url = f"{self.base}/{path.lstrip('/')}"
        data = urllib.parse.urlencode(form).encode() if form is not None else None

        def fetch() -> Page:
            try:
                with self.opener.open(url, data=data, timeout=20) as r:
                    return Page(r.status, r.geturl(), r.read().decode("utf-8", "replace"))
            except urllib.error.HTTPError as e:
                return Page(e.code, url, e.read().decode("utf-8", "replace"))

        return in_netns(self.lab, self.host, fetch)

    def get(self, path: str) -> Page:
        return self._open(path, None)

    def post(self, path: str, form: dict[str, str]) -> Page:
        return self._open(path, form)

    def submit(self, page_path: str, action: str, form: dict[str, str], expect: int = 200) -> Page:
        """Open `page_path`, fill in `form` and post it (with the page's CSRF token) to `action`."""
        token = self.get(page_path).csrf()
        page = self.post(action, {"csrf": token, **form})
        if page.status != expect:
            raise LabError(f"POST {action}: HTTP {page.status}: {page.text()[:400]}")
        return page


class PortalSite:
    """`python -m medmgr_web.<module>` (FastCGI on a unix socket) behind lighttpd on `bind`:`port`, both
    in `host`'s namespace, the database an SQLite file in the host's directory."""

    def __init__(self, lab: Lab, host: str, module: str, bind: str = "127.0.0.1", port: int = 80,
                 mount: str = "/medmgr", args: list[str] | None = None, name: str | None = None) -> None:
        self.lab, self.host, self.module, self.bind, self.port, self.mount = lab, host, module, bind, port, mount
        self.name = name or module
        self.dir = lab.host_dir(host) / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.dir / "db.sqlite"
        self.db_url = f"sqlite:///{self.db_path}"
        self.sock = self.dir / "fcgi.sock"
        self.args = list(args or [])
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"http://{self.bind}:{self.port}{self.mount}"

    def start(self, timeout: float = 20.0) -> PortalSite:
        env = {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        app = self.lab.popen(self.host, [sys.executable, "-m", f"medmgr_web.{self.module}", "--socket",
                                         str(self.sock), "--db", self.db_url, *self.args],
                             self.dir / "app.log", env=env)
        self.procs.append(app)

        def sock_ready() -> bool:
            if app.poll() is not None:
                raise LabError(f"{self.name} exited: {(self.dir / 'app.log').read_text()[-2000:]}")
            return self.sock.exists()

        # flup says nothing when it serves: the socket's creation is the event (it listens right after)
        wait_files(sock_ready, timeout, [self.sock, self.dir / "app.log"], what=f"{self.name} FastCGI socket")
        (self.dir / "www").mkdir(exist_ok=True)
        conf = self.dir / "lighttpd.conf"
        conf.write_text(f"""server.modules += ( "mod_fastcgi" )
server.document-root = "{self.dir / 'www'}"
server.bind = "{self.bind}"
server.port = {self.port}
server.pid-file = "{self.dir / 'lighttpd.pid'}"
server.errorlog = "{self.dir / 'lighttpd-error.log'}"
fastcgi.server = ( "{self.mount}" => (( "socket" => "{self.sock}", "check-local" => "disable" )) )
""")
        self.lab.run(self.host, [LIGHTTPD, "-tt", "-f", str(conf)])
        httpd = self.lab.popen(self.host, [LIGHTTPD, "-D", "-f", str(conf)], self.dir / "lighttpd.log")
        self.procs.append(httpd)

        def listening() -> bool:
            if httpd.poll() is not None:
                raise LabError(f"lighttpd on {self.host} exited: {(self.dir / 'lighttpd.log').read_text()[-2000:]}")

            def probe() -> bool:
                try:
                    with socket.create_connection((self.bind, self.port), timeout=0.2):
                        return True
                except OSError:
                    return False

            return in_netns(self.lab, self.host, probe)

        # lighttpd -D reports no readiness (no sd_notify in this build) and logs nothing when it listens:
        # its port is tried
        wait_for(listening, timeout, interval=0.05, what=f"lighttpd on {self.host}:{self.port}")
        return self

    def stop(self) -> None:
        stop_sites(self)


def stop_sites(*sites: PortalSite) -> None:
    """Stop portals together: flup's FastCGI server takes up to a second to notice SIGTERM."""
    procs = [p for s in sites for p in s.procs]
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    for s in sites:
        for p in s.procs:
            s.lab.stop(p, timeout=2.0)
        s.procs.clear()
