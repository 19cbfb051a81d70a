"""A small WSGI toolkit for the portals: requests, responses, controller/action routing behind an
auth filter, login sessions with CSRF tokens, one DB session per request, jinja2 templates.

Server-side sessions exist for logged-in users only; anonymous pages carry a CSRF token bound to a
cookie of their own (``security.py``), so requests without a login cost the server no memory.

URL scheme (as the reference portal): ``<base>/<controller>/<action>/<arg>...``; ``<base>/static/*``
serves the shipped CSS/JS/icon.
"""

from __future__ import annotations

import http.cookies
import logging
import mimetypes
import secrets
import traceback
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib import resources
from typing import Any

import jinja2
from sqlalchemy.orm import Session, sessionmaker

from med_db.keyid import keyid_colon, keyid_text
from medmgr_web.security import (
    CSRF_NONCE_RE,
    LoginSession,
    SessionStore,
    anon_csrf_ok,
    anon_csrf_token,
    csrf_ok,
    new_csrf_nonce,
)
from medmgr_web.throttle import Attempt, LoginThrottle

log = logging.getLogger("medmgr_web")

MAX_BODY = 64 * 1024
StartResponse = Callable[..., Any]

SECURITY_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Content-Security-Policy",
     "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
     "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
]


class HTTPError(Exception):
    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message or HTTPStatus(status).phrase


@dataclass
class Response:
    body: bytes = b""
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "text/html; charset=utf-8"


def redirect(location: str, status: int = 303) -> Response:
    return Response(status=status, headers=[("Location", location)])


class Request:
    def __init__(self, environ: dict[str, Any], db: Session, login: LoginSession | None) -> None:
        self.environ = environ
        self.method: str = environ.get("REQUEST_METHOD", "GET").upper()
        self.base: str = environ.get("SCRIPT_NAME", "").rstrip("/")
        self.path: str = environ.get("PATH_INFO", "") or "/"
        self.remote_addr: str = environ.get("REMOTE_ADDR", "")
        self.db = db
        self.login = login
        self.form: dict[str, str] = {}
        self.query: dict[str, str] = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")[:MAX_BODY]))
        self.args: list[str] = []
        self.new_login: LoginSession | None = None  # set when a new cookie must be sent
        self.clear_cookie = False
        self.csrf_nonce: str | None = None       # the anonymous-form cookie, as received
        self.new_csrf_nonce: str | None = None   # set when that cookie must be (re)issued
        self.clear_csrf = False

    @property
    def secure(self) -> bool:
        https = str(self.environ.get("HTTPS", "")).lower()
        return self.environ.get("wsgi.url_scheme") == "https" or https in ("on", "1")

    @property
    def user_id(self) -> int | None:
        return None if self.login is None else self.login.user_id

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def read_form(self) -> None:
        if self.method != "POST":
            return
        try:
            length = int(self.environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise HTTPError(400, "Bad Content-Length.") from None
        if length > MAX_BODY:
            raise HTTPError(413, "Form too large.")
        ctype = self.environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        raw = self.environ["wsgi.input"].read(length) if length else b""
        if ctype not in ("application/x-www-form-urlencoded", ""):
            raise HTTPError(415, "Unsupported form encoding.")
        pairs = urllib.parse.parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
        self.form = {k: v for k, v in pairs}

    def field(self, name: str, strip: bool = True) -> str:
        value = self.form.get(name, "")
        return value.strip() if strip else value

    def flash(self, message: str) -> None:
        if self.login is not None:
            self.login.flash.append(message)


Handler = Callable[[Request], Response]


@dataclass
class Route:
    handler: Handler
    public: bool
    methods: tuple[str, ...]


class PortalApp:
    """Base WSGI application: subclasses register routes and provide template context."""

    cookie_name = "SID"
    csrf_cookie_name = "CSRF"  # the anonymous forms' cookie
    templates_prefix = ""
    title = "Portal"

    def __init__(self, session_factory: sessionmaker[Session], store: SessionStore, throttle: LoginThrottle,
                 login_url: str, home_url: str) -> None:
        self.session_factory = session_factory
        self.store = store
        self.throttle = throttle
        self.csrf_key = secrets.token_bytes(32)  # signs the anonymous forms' tokens; per process
        self.login_url = login_url
        self.home_url = home_url
        self.routes: dict[tuple[str, str], Route] = {}
        self.jinja = jinja2.Environment(
            loader=jinja2.PackageLoader("medmgr_web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        # key ids (20 raw octets) as the pages show them: keyid:#<hex>, and strongSwan's colon form
        self.jinja.filters["keyid_text"] = keyid_text
        self.jinja.filters["keyid_colon"] = keyid_colon

    # -- routing ---------------------------------------------------------------------------

    def route(self, controller: str, action: str, handler: Handler, *, public: bool = False,
              methods: tuple[str, ...] = ("GET", "POST")) -> None:
        self.routes[(controller, action)] = Route(handler, public, methods)

    def user_exists(self, req: Request) -> bool:
        """Auth filter hook: is the logged-in principal still valid?"""
        return True

    def dispatch(self, req: Request) -> Response:
        parts = [p for p in req.path.split("/") if p]
        if not parts:
            return redirect(req.url(self.home_url if req.user_id else self.login_url))
        if parts[0] == "static":
            return self.static("/".join(parts[1:]))
        if len(parts) == 1:
            parts.append("")
        route = self.routes.get((parts[0], parts[1]))
        if route is None:
            raise HTTPError(404, "Page not found.")
        req.args = parts[2:]
        # auth filter: a vanished user loses the login; anonymous users reach public pages only
        if req.user_id is not None and not self.user_exists(req):
            assert req.login is not None
            self.store.drop(req.login.sid)
            req.login, req.clear_cookie = None, True
        if not route.public and req.user_id is None:
            return redirect(req.url(self.login_url))
        if req.method not in route.methods:
            raise HTTPError(405, "Method not allowed.")
        req.read_form()
        if req.method == "POST":
            self.check_csrf(req)
        return route.handler(req)

    def check_csrf(self, req: Request) -> None:
        token = req.form.get("csrf")
        if req.login is not None:
            ok = csrf_ok(req.login.csrf, token)
        else:
            ok = anon_csrf_ok(self.csrf_key, req.csrf_nonce, token)
        if not ok:
            hint = " (no form cookie came with it: are cookies enabled?)" if req.login is None and \
                req.csrf_nonce is None else ""
            raise HTTPError(403, f"The form has expired or did not come from this site{hint}. Reload the page "
                                 "and try again.")

    def static(self, name: str) -> Response:
        if not name or "/" in name or name.startswith("."):
            raise HTTPError(404, "Not found.")
        try:
            data = resources.files("medmgr_web").joinpath("static", name).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise HTTPError(404, "Not found.") from None
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        return Response(data, content_type=ctype, headers=[("Cache-Control", "max-age=3600")])

    # -- rendering -------------------------------------------------------------------------

    def context(self, req: Request) -> dict[str, Any]:
        return {}

    def csrf_token(self, req: Request) -> str:
        """The token for this page's forms: the session's, or (anonymous) one bound to the form cookie."""
        if req.login is not None:
            return req.login.csrf
        if req.csrf_nonce is None:
            req.csrf_nonce = req.new_csrf_nonce = new_csrf_nonce()
        return anon_csrf_token(self.csrf_key, req.csrf_nonce)

    def render(self, req: Request, template: str, status: int = 200, **ctx: Any) -> Response:
        flashes: list[str] = []
        if req.login is not None:
            flashes, req.login.flash = req.login.flash, []
        full: dict[str, Any] = {
            "base": req.base, "csrf": self.csrf_token(req), "flashes": flashes, "title": self.title,
            "logged_in": req.user_id is not None, "errors": [],
        }
        full.update(self.context(req))
        full.update(ctx)
        body = self.jinja.get_template(f"{self.templates_prefix}{template}").render(full)
        return Response(body.encode("utf-8"), status=status)

    def error_page(self, req: Request | None, status: int, message: str) -> Response:
        phrase = HTTPStatus(status).phrase
        try:
            body = self.jinja.get_template("error.html").render(
                base="" if req is None else req.base, title=self.title, status=status, phrase=phrase,
                message=message, logged_in=False, flashes=[], errors=[], csrf="", home=self.home_url,
            )
        except Exception:  # never let the error page itself fail
            log.exception("error page failed")
            return Response(f"{status} {phrase}: {message}\n".encode(), status=status,
                            content_type="text/plain; charset=utf-8")
        return Response(body.encode("utf-8"), status=status)

    # -- WSGI ------------------------------------------------------------------------------

    def _read_cookies(self, req: Request) -> None:
        jar = http.cookies.SimpleCookie()
        try:
            jar.load(req.environ.get("HTTP_COOKIE", ""))
        except http.cookies.CookieError:
            return
        sid = jar.get(self.cookie_name)
        if sid is not None and sid.value:
            req.login = self.store.get(sid.value)
            req.clear_cookie = req.login is None  # expired or unknown: the browser may forget it
        nonce = jar.get(self.csrf_cookie_name)
        if nonce is not None and CSRF_NONCE_RE.fullmatch(nonce.value):
            req.csrf_nonce = nonce.value

    def _set_cookies(self, req: Request, resp: Response) -> None:
        flags = f"; Path={req.base or '/'}; HttpOnly; SameSite=Strict" + ("; Secure" if req.secure else "")
        if req.new_login is not None:
            resp.headers.append(("Set-Cookie", f"{self.cookie_name}={req.new_login.sid}{flags}"))
        elif req.clear_cookie:
            resp.headers.append(("Set-Cookie", f"{self.cookie_name}={flags}; Max-Age=0"))
        if req.new_csrf_nonce is not None:
            resp.headers.append(("Set-Cookie", f"{self.csrf_cookie_name}={req.new_csrf_nonce}{flags}"))
        elif req.clear_csrf:
            resp.headers.append(("Set-Cookie", f"{self.csrf_cookie_name}={flags}; Max-Age=0"))

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        db = self.session_factory()
        req = Request(environ, db, None)
        self._read_cookies(req)
        try:
            try:
                resp = self.dispatch(req)
                db.commit()
            except HTTPError as exc:
                db.rollback()
                resp = self.error_page(req, exc.status, exc.message)
            except Exception:
                db.rollback()
                log.error("internal error on %s %s\n%s", req.method, req.path, traceback.format_exc())
                resp = self.error_page(req, 500, "Internal error; the request was not completed.")
        finally:
            db.close()
        self._set_cookies(req, resp)
        headers = [("Content-Type", resp.content_type), ("Content-Length", str(len(resp.body)))]
        if resp.content_type.startswith("text/html"):
            headers.append(("Cache-Control", "no-store"))
        headers += SECURITY_HEADERS + resp.headers
        start_response(f"{resp.status} {HTTPStatus(resp.status).phrase}", headers)
        return [resp.body]

    # -- login helpers ---------------------------------------------------------------------

    def login_refused(self, req: Request, template: str, attempt: Attempt, **ctx: Any) -> Response:
        """The answer to a login attempt from a blocked address (``throttle.py``)."""
        resp = self.render(req, template, status=429, errors=[
            f"Too many failed login attempts from your address. Try again in {attempt.retry_after} seconds."],
            **ctx)
        resp.headers.append(("Retry-After", str(attempt.retry_after)))
        return resp

    def start_login(self, req: Request, user_id: int) -> None:
        """Log in with a fresh session id (no fixation); the old session is dropped, and so is the
        anonymous forms' cookie."""
        if req.login is not None:
            self.store.drop(req.login.sid)
        req.login = self.store.new(user_id)
        req.new_login = req.login
        req.clear_csrf = req.csrf_nonce is not None

    def stats(self) -> str:
        """One line for the log (SIGUSR1, ``launcher.py``)."""
        counts = {"sessions": self.store.sweep(), "max_sessions": self.store.max_sessions,
                  "sessions_evicted": self.store.evicted, **self.throttle.stats()}
        return "portal stats: " + " ".join(f"{k}={v}" for k, v in counts.items())

    def end_login(self, req: Request) -> None:
        if req.login is not None:
            self.store.drop(req.login.sid)
        req.login, req.new_login, req.clear_cookie = None, None, True
