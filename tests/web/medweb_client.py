"""A tiny HTTP client for the portal tests (http.client, cookies, CSRF token extraction)."""

from __future__ import annotations

import html
import http.client
import re
import urllib.parse
from dataclasses import dataclass, field

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


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
class WebClient:
    base_url: str  # e.g. http://127.0.0.1:8088/srv
    cookies: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    source: str | None = None  # local address to connect from (e.g. 127.0.0.2: another client address)

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                follow: bool = True) -> Reply:
        url = urllib.parse.urlsplit(self.base_url)
        target = url.path.rstrip("/") + "/" + path.lstrip("/") if not path.startswith(url.path + "/") else path
        for _ in range(5):
            conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30,
                                              source_address=None if self.source is None else (self.source, 0))
            hdrs = dict(self.headers)
            if self.cookies:
                hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            body = None
            if form is not None:
                body = urllib.parse.urlencode(form).encode()
                hdrs["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, target, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read().decode("utf-8", "replace")
            set_cookies = resp.headers.get_all("Set-Cookie") or []
            for sc in set_cookies:
                name, _, rest = sc.partition("=")
                value = rest.split(";", 1)[0]
                if "Max-Age=0" in sc or not value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = value
            reply = Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, set_cookies, data)
            conn.close()
            if follow and resp.status in (301, 302, 303) and reply.location:
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
