"""What the two portals share: a Flask app with sessions in med_db (``sessions.py``), CSRF on every
POST (Flask-WTF), one database session per request, an auth filter, login throttling per client
address (``throttle.py``), security headers and error pages; the Jinja templates escape every value
(autoescaping).

URLs are ``<base>/<controller>/<action>[/<id>]`` under the web server's prefix (``SCRIPT_NAME``);
``<base>/static/*`` serves the shipped CSS, JS and icon.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

import jinja2
from flask import Flask, Response, current_app, g, get_flashed_messages, render_template, request, url_for
from flask import redirect as flask_redirect
from flask import session as flask_session
from flask_wtf.csrf import CSRFError, CSRFProtect  # type: ignore[import-untyped]  # no type information
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.exceptions import HTTPException

from med_db import data
from med_db.engine import create_all, make_engine, make_session_factory
from med_db.keyid import keyid_colon, keyid_text
from med_db.models import User
from medmgr_web import forms
from medmgr_web.security import DUMMY_HASH, hash_password, needs_rehash, verify_password
from medmgr_web.sessions import DbSessionInterface, PortalSession, SessionStore, portal_secret
from medmgr_web.throttle import Attempt, LoginThrottle, ThrottleBusy, ThrottleConfig
from medmgr_web.validation import html_rules

log = logging.getLogger("medmgr_web")

MAX_BODY = 64 * 1024
FORM_TYPES = ("application/x-www-form-urlencoded", "")
SECURITY_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Content-Security-Policy",
     "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
     "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
]
ERROR_MESSAGES = {404: "Page not found.", 405: "Method not allowed.", 413: "Form too large."}


@dataclass
class PortalSettings:
    name: str               # cookie prefix and web_session.portal: "medsrv", "medcli"
    title: str
    templates: str          # template directory prefix, "server/"
    login_endpoint: str
    home_endpoint: str
    public: frozenset[str]  # endpoints anonymous users may reach (static files always)
    session_timeout: float = 900.0
    max_sessions: int = 10_000
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)


class Portal(Flask):
    """A portal's WSGI app: Flask plus its database, session store and login throttle."""

    settings: PortalSettings
    session_factory: sessionmaker[Session]
    store: SessionStore
    throttle: LoginThrottle
    user_valid: Callable[[Session, int], bool]
    context: Callable[[], dict[str, Any]]

    def stats(self) -> str:
        """One line for the log (SIGUSR1, ``launcher.py``)."""
        counts = {"sessions": self.store.sweep(), "max_sessions": self.store.max_sessions,
                  "sessions_evicted": self.store.evicted, **self.throttle.stats()}
        return "portal stats: " + " ".join(f"{k}={v}" for k, v in counts.items())


def make_portal(import_name: str, settings: PortalSettings, session_factory: sessionmaker[Session], *,
                clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                user_valid: Callable[[Session, int], bool] = lambda db, uid: True,
                context: Callable[[], dict[str, Any]] = dict) -> Portal:
    """The app with everything but the routes.  ``clock`` (wall-clock seconds) drives session expiry
    and login throttling, ``sleep`` the throttle's delays; ``user_valid`` tells whether a logged-in
    user still exists, ``context`` adds template variables."""
    app = Portal(import_name, static_folder="static", static_url_path="/static",
                 template_folder="templates")
    app.jinja_options = {**app.jinja_options, "trim_blocks": True, "lstrip_blocks": True,
                         "undefined": jinja2.StrictUndefined}
    # key ids (20 raw octets) as the pages show them: keyid:#<hex>, and strongSwan's colon form
    app.jinja_env.filters["keyid_text"] = keyid_text
    app.jinja_env.filters["keyid_colon"] = keyid_colon
    app.jinja_env.globals["rules"] = html_rules()
    app.settings = settings
    app.session_factory = session_factory
    app.user_valid = user_valid
    app.context = context
    app.store = SessionStore(session_factory, settings.name, settings.session_timeout, settings.max_sessions, clock)
    app.throttle = LoginThrottle(settings.throttle, session_factory, settings.name, clock, sleep)
    app.session_interface = DbSessionInterface(app.store, f"{settings.name}_sid", f"{settings.name}_csrf")
    app.config.update(
        SECRET_KEY=portal_secret(session_factory, settings.name),
        MAX_CONTENT_LENGTH=MAX_BODY,
        SEND_FILE_MAX_AGE_DEFAULT=3600,
        WTF_CSRF_FIELD_NAME="csrf",
        WTF_CSRF_TIME_LIMIT=None,  # a token lives as long as its session (or its form cookie)
        WTF_CSRF_HEADERS=[],       # forms only: no script posts to the portals
    )
    # order matters: the auth filter runs before the CSRF check, so an anonymous POST to a page that
    # needs a login is sent to the login page, not refused as a forgery
    app.before_request(_open_request)
    CSRFProtect(app)
    app.after_request(_finish_request)
    app.teardown_request(_close_db)
    app.register_error_handler(CSRFError, _csrf_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ThrottleBusy, _throttle_busy)
    app.register_error_handler(Exception, _internal_error)
    app.add_url_rule("/", "index", _index)
    return app


def portal() -> Portal:
    return cast(Portal, current_app)


def session() -> PortalSession:
    return cast(PortalSession, flask_session)


def db() -> Session:
    """The request's database session: committed when the answer is a success or a redirect, rolled
    back otherwise."""
    if "db" not in g:
        g.db = portal().session_factory()
    return cast(Session, g.db)


def user_id() -> int | None:
    s = session()
    return s.user_id if s.logged_in else None


def redirect(endpoint: str, **values: Any) -> Response:
    return flask_redirect(url_for(endpoint, **values), 303)  # type: ignore[return-value]


def render(template: str, status: int = 200, errors: Iterable[str] = (), form: Any = None,
           **ctx: Any) -> Response:
    """A page; ``errors`` are listed at its top, above the fields' own errors (``form``), which the
    templates also show next to each field."""
    app = portal()
    all_errors = list(errors)
    if form is not None:
        all_errors += [e for f in form for e in f.errors]
    full: dict[str, Any] = {
        "base": request.script_root, "title": app.settings.title, "flashes": get_flashed_messages(),
        "logged_in": user_id() is not None, "errors": all_errors, "form": form,
    }
    full.update(app.context())
    full.update(ctx)
    body = render_template(f"{app.settings.templates}{template}", **full)
    return Response(body, status=status, content_type="text/html; charset=utf-8")


def login_user(uid: int) -> None:
    session().login(uid)


def logout_user() -> None:
    session().logout()


def login_refused(template: str, attempt: Attempt, **ctx: Any) -> Response:
    """The answer to a login attempt from a blocked address (``throttle.py``)."""
    resp = render(template, status=429, errors=[
        f"Too many failed login attempts from your address. Try again in {attempt.retry_after} seconds."], **ctx)
    resp.headers["Retry-After"] = str(attempt.retry_after)
    return resp


def session_factory(db: str | sessionmaker[Session] | None, *, init_db: bool = True) -> sessionmaker[Session]:
    """med_db's session factory: ``db`` as a ready factory, or a URL (None: the default one) to open, its
    tables made when ``init_db``."""
    if db is not None and not isinstance(db, str):
        return db
    engine = make_engine(db)
    if init_db:
        create_all(engine)
    return make_session_factory(engine)


def account_login(refusal: Callable[[User], str | None], home_endpoint: str) -> Response:
    """The login page of a portal whose accounts are med_db users (``forms.LoginForm``): throttled per
    client address and login (``throttle.py``); ``refusal(user)`` is why a user with the right password
    may not log in here (None: they may); an Argon2 hash with old parameters is renewed on success."""
    form = forms.LoginForm()
    if request.method == "GET":
        return render("user/login.html", form=form)
    form.validate()
    login, password = form.login.data or "", form.password.data or ""
    app = portal()
    attempt = app.throttle.begin(request.remote_addr or "", login)
    if attempt.retry_after:
        return login_refused("user/login.html", attempt, form=form)
    app.throttle.wait(attempt)  # before the database is read: holds no connection
    s = db()
    user = data.get_user_by_login(s, login) if login else None
    # the same work whether the account exists or not: timing does not tell logins apart
    if not verify_password(password, user.password if user is not None else DUMMY_HASH) or user is None:
        app.throttle.failed(attempt)
        return render("user/login.html", status=401, form=form, errors=["Invalid username or password."])
    app.throttle.succeeded(attempt)
    refused = refusal(user)
    if refused is not None:
        return render("user/login.html", status=403, form=form, errors=[refused])
    if needs_rehash(user.password):
        data.update_user(s, user, user.login, hash_password(password))
    login_user(user.id)
    return redirect(home_endpoint)


# -- request hooks ---------------------------------------------------------------------------------


def _index() -> Response:
    s = portal().settings
    return redirect(s.home_endpoint if user_id() is not None else s.login_endpoint)


def _open_request() -> Response | None:
    """Auth filter: a vanished user loses the login; anonymous users reach public pages only."""
    app = portal()
    if request.routing_exception is not None:
        return None  # 404 / 405, raised by Flask after this hook
    uid = user_id()
    if uid is not None and not app.user_valid(db(), uid):
        logout_user()
        uid = None
    if request.endpoint not in app.settings.public and request.endpoint not in ("static", "index") \
            and uid is None:
        return redirect(app.settings.login_endpoint)
    if request.method == "POST" and request.mimetype not in FORM_TYPES:
        return _error_page(415, "Unsupported form encoding.")
    return None


def _finish_request(response: Response) -> Response:
    dbs: Session | None = g.pop("db", None)
    if dbs is not None:
        if response.status_code < 400:
            dbs.commit()
        else:
            dbs.rollback()
        dbs.close()
    if response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-store"
    for name, value in SECURITY_HEADERS:
        response.headers.setdefault(name, value)
    return response


def _close_db(exc: BaseException | None) -> None:
    dbs: Session | None = g.pop("db", None)
    if dbs is not None:  # the answer was never finished: nothing of this request is kept
        dbs.rollback()
        dbs.close()


def _error_page(status: int, message: str) -> Response:
    phrase = HTTPStatus(status).phrase
    try:
        body = render_template(
            "error.html", base=request.script_root, title=portal().settings.title, status=status, phrase=phrase,
            message=message, logged_in=False, flashes=[], errors=[],
            home=url_for(portal().settings.home_endpoint))
    except Exception:  # never let the error page itself fail
        log.exception("error page failed")
        return Response(f"{status} {phrase}: {message}\n", status=status, content_type="text/plain; charset=utf-8")
    return Response(body, status=status, content_type="text/html; charset=utf-8")


def _csrf_error(exc: CSRFError) -> Response:
    hint = ""
    if user_id() is None and not session().had_csrf_cookie:
        hint = " (no form cookie came with it: are cookies enabled?)"
    log.info("CSRF check failed on %s %s: %s", request.method, request.path, exc.description)
    return _error_page(403, f"The form has expired or did not come from this site{hint}. Reload the page "
                            "and try again.")


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    message = exc.description if exc.description and exc.description != type(exc).description else \
        ERROR_MESSAGES.get(status, exc.name + ".")
    resp = _error_page(status, str(message))
    if status == 405 and exc.get_response().headers.get("Allow"):
        resp.headers["Allow"] = exc.get_response().headers["Allow"]
    return resp


def _throttle_busy(exc: ThrottleBusy) -> Response:
    """Many login attempts from one address met in the throttle (``throttle.py``): this one was
    neither counted nor checked; the client may send it again shortly."""
    log.warning("login from %s not judged: %s", exc.address, exc)
    resp = _error_page(503, "Too many login attempts at once from your address; this one was not "
                            f"checked. Try again in {exc.retry_after} second(s).")
    resp.headers["Retry-After"] = str(exc.retry_after)
    return resp


def _internal_error(exc: Exception) -> Response:
    log.error("internal error on %s %s", request.method, request.path, exc_info=exc)
    return _error_page(500, "Internal error; the request was not completed.")
