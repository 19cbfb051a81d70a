"""The portal tests' browser: cookies kept, forms posted with the CSRF token of the page they came
from, redirects followed.  One client, two transports: ``WebClient`` over HTTP (http.client, through
lighttpd or Apache) and ``WsgiClient`` in process (Flask's test client, no web server), with a
``FakeClock`` for session expiry and login throttling."""

from __future__ import annotations

import html
import http.client
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


class FakeClock:
    """Seconds that move only when told to, or when someone sleeps."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    set_cookies: list[str]
    body: str

    @property
    def location(self) -> str:
        return self.headers.get("location", "")

    def csrf(self) -> str:
        m = CSRF_RE.search(self.body)
        assert m, "no CSRF token in page"
        return html.unescape(m.group(1))

    def text(self) -> str:
        """Body with tags stripped and entities decoded (what a user reads)."""
        return html.unescape(re.sub(r"<[^>]+>", " ", self.body))


@dataclass
class _Client:
    cookies: dict[str, str] = field(default_factory=dict, kw_only=True)
    headers: dict[str, str] = field(default_factory=dict, kw_only=True)

    def _base_path(self) -> str:
        raise NotImplementedError

    def _send(self, method: str, target: str, body: bytes | None,
              headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], str]:
        raise NotImplementedError

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                follow: bool = True) -> Reply:
        base = self._base_path().rstrip("/")
        target = path if path.startswith(base + "/") else base + "/" + path.lstrip("/")
        for _ in range(5):
            hdrs = dict(self.headers)
            if self.cookies:
                hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            body = None
            if form is not None:
                body = urllib.parse.urlencode(form).encode()
                hdrs["Content-Type"] = "application/x-www-form-urlencoded"
            status, headers, data = self._send(method, target, body, hdrs)
            set_cookies = [v for k, v in headers if k.lower() == "set-cookie"]
            for sc in set_cookies:
                name, _, rest = sc.partition("=")
                value = rest.split(";", 1)[0]
                if "Max-Age=0" in sc or not value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = value
            reply = Reply(status, {k.lower(): v for k, v in headers}, set_cookies, data)
            if follow and status in (301, 302, 303) and reply.location:
                method, form, target = "GET", None, reply.location
                continue
            return reply
        raise AssertionError("redirect loop")

    def get(self, path: str, follow: bool = True) -> Reply:
        return self.request("GET", path, follow=follow)

    def post(self, path: str, form: dict[str, str], follow: bool = True) -> Reply:
        return self.request("POST", path, form, follow=follow)

    def submit(self, page_path: str, path: str, form: dict[str, str], follow: bool = True) -> Reply:
        """GET ``page_path`` for a CSRF token, then POST ``form`` (+ token) to ``path``."""
        token = self.get(page_path).csrf()
        return self.post(path, {"csrf": token, **form}, follow=follow)


@dataclass
class WebClient(_Client):
    """Over HTTP, e.g. ``WebClient("http://127.0.0.1:8088/srv")``."""

    base_url: str
    source: str | None = None  # local address to connect from (e.g. 127.0.0.2: another client address)

    def _base_path(self) -> str:
        return urllib.parse.urlsplit(self.base_url).path

    def _send(self, method: str, target: str, body: bytes | None,
              headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], str]:
        url = urllib.parse.urlsplit(self.base_url)
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30,
                                          source_address=None if self.source is None else (self.source, 0))
        try:
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read().decode("utf-8", "replace")
        finally:
            conn.close()


@dataclass
class WsgiClient(_Client):
    """In process, through Flask's test client: the app mounted at ``base`` (its SCRIPT_NAME), the
    requests coming from ``remote_addr``."""

    app: Any
    remote_addr: str = "192.0.2.1"
    base: str = "/srv"
    scheme: str = "http"

    def _base_path(self) -> str:
        return self.base

    def _send(self, method: str, target: str, body: bytes | None,
              headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], str]:
        path, _, query = target.partition("?")
        assert path.startswith(self.base + "/") or path == self.base, target
        client = self.app.test_client(use_cookies=False)  # this class keeps the cookies
        resp = client.open(path[len(self.base):] or "/", method=method, data=body, headers=headers,
                           query_string=query, base_url=f"{self.scheme}://portal.test{self.base}/",
                           environ_base={"REMOTE_ADDR": self.remote_addr})
        return resp.status_code, list(resp.headers.items()), resp.get_data(as_text=True)
