"""The portals in process, without a web server: a fake clock and a WSGI client with cookies."""

from __future__ import annotations

import io
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from medweb_client import CSRF_RE, Reply


class FakeClock:
    """Monotonic seconds that move only when told to, or when someone sleeps."""

    def __init__(self, now: float = 1000.0) -> None:
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
class WsgiClient:
    app: Any
    remote_addr: str = "192.0.2.1"
    base: str = "/srv"
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, form: dict[str, str] | None = None) -> Reply:
        body = urllib.parse.urlencode(form or {}).encode()
        env: dict[str, Any] = {
            "REQUEST_METHOD": method, "SCRIPT_NAME": self.base, "PATH_INFO": "/" + path.lstrip("/"),
            "REMOTE_ADDR": self.remote_addr, "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http",
            "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": "application/x-www-form-urlencoded",
        }
        if self.cookies:
            env["HTTP_COOKIE"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        seen: list[tuple[str, list[tuple[str, str]]]] = []
        data = b"".join(self.app(env, lambda status, headers: seen.append((status, headers))))
        status, headers = seen[0]
        set_cookies = [v for k, v in headers if k.lower() == "set-cookie"]
        for sc in set_cookies:
            name, _, rest = sc.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" in sc or not value:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return Reply(int(status.split()[0]), {k.lower(): v for k, v in headers}, set_cookies,
                     data.decode("utf-8", "replace"))

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def submit(self, path: str, form: dict[str, str]) -> Reply:
        """GET ``path`` for its CSRF token, POST ``form`` to it (no redirects followed)."""
        m = CSRF_RE.search(self.get(path).body)
        assert m, "no CSRF token in page"
        return self.request("POST", path, {"csrf": m.group(1), **form})
