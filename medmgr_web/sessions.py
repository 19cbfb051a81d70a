"""Login sessions kept in med_db (table ``web_session``), as a Flask session interface.

- Only a login creates a session: an anonymous request gets no row.  Its session holds nothing but the
  CSRF value of its forms, kept in a cookie of its own (``<portal>_csrf``, HttpOnly, SameSite=Strict);
  Flask-WTF signs the forms' tokens over it with the portal's key from ``web_secret``, which every
  process of the portal shares (a signed double-submit cookie).
- A logged-in browser holds ``<portal>_sid``: 32 random bytes; the row is keyed by their SHA-256, so a
  copy of the database holds no usable cookie.  The row carries the user id and the session's data
  (its CSRF value, messages for the next page) as JSON; every process of the portal sees it, and it
  survives a restart.  Logout deletes it (everywhere at once: there is no other copy).
- A session idle for more than ``idle_timeout`` seconds is refused and deleted; every process sweeps
  the expired rows at most once per ``SWEEP_INTERVAL`` and at each login.  At most ``max_sessions``
  rows per portal: a login beyond deletes the ones idle the longest.
- Times come from ``clock`` (wall-clock seconds: rows are shared between processes and outlive them).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import secrets
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask, Request, Response, request
from flask.sessions import SessionInterface, SessionMixin
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.datastructures import CallbackDict

from med_db.models import WebSecret, WebSession

log = logging.getLogger("medmgr_web.sessions")

SWEEP_INTERVAL = 60.0  # seconds between sweeps of expired rows by one process
TOUCH_INTERVAL = 1.0   # last_seen is written when it is at least this old (not on every request)
SID_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
CSRF_VALUE_RE = re.compile(r"[0-9a-f]{40}")  # Flask-WTF's raw CSRF value (hex of 20 bytes)
CSRF_KEY = "csrf"  # the session key (and form field) Flask-WTF uses, WTF_CSRF_FIELD_NAME


def _when(seconds: float) -> dt.datetime:
    """Clock seconds as the naive UTC DATETIME every table holds."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(tzinfo=None)


def _row_id(sid: str) -> str:
    return hashlib.sha256(sid.encode("ascii")).hexdigest()


class PortalSession(CallbackDict[str, Any], SessionMixin):
    """The request's session: ``user_id`` is None when nobody is logged in."""

    def __init__(self, data: dict[str, Any] | None = None, *, sid: str | None = None,
                 user_id: int | None = None, last_seen: float = 0.0) -> None:
        def on_update(_: Any) -> None:
            self.modified = True

        super().__init__(data or {}, on_update)
        self.sid = sid
        self.user_id = user_id
        self.last_seen = last_seen
        self.modified = False
        self.new_login: int | None = None   # log in as this user when the response is saved
        self.ended = False                  # log out when the response is saved
        self.clear_sid_cookie = False       # the browser's session cookie names no live session
        self.had_csrf_cookie = False        # an anonymous form cookie came with the request
        self.passive = False                # a page's own polling: does not count as activity

    @property
    def logged_in(self) -> bool:
        return self.user_id is not None and not self.ended

    def login(self, user_id: int) -> None:
        """Log in with a fresh session id (no fixation), fresh data (a new CSRF value)."""
        self.clear()
        self.new_login = user_id
        self.user_id = user_id
        self.ended = False

    def logout(self) -> None:
        self.clear()
        self.new_login = None
        self.ended = True


class SessionStore:
    """The ``web_session`` rows of one portal."""

    def __init__(self, session_factory: sessionmaker[Session], portal: str, idle_timeout: float,
                 max_sessions: int, clock: Callable[[], float]) -> None:
        self.session_factory = session_factory
        self.portal = portal
        self.idle_timeout = idle_timeout
        self.max_sessions = max(1, max_sessions)
        self.clock = clock
        self.evicted = 0  # sessions this process deleted to make room, since start
        self._next_sweep = 0.0
        self._lock = threading.Lock()

    def _cutoff(self, now: float) -> dt.datetime:
        return _when(now - self.idle_timeout)

    def get(self, sid: str) -> tuple[int, dict[str, Any], float] | None:
        """(user id, data, last seen) of a live session; an expired one is deleted."""
        now = self.clock()
        self._maybe_sweep(now)
        with self.session_factory() as db:
            row = db.get(WebSession, _row_id(sid))
            if row is None or row.portal != self.portal:
                return None
            if row.last_seen < self._cutoff(now):
                db.delete(row)
                db.commit()
                return None
            try:
                data = json.loads(row.data)
            except ValueError:
                data = {}
            last_seen = row.last_seen.replace(tzinfo=dt.UTC).timestamp()
            return row.user_id, data if isinstance(data, dict) else {}, last_seen

    def new(self, user_id: int, data: dict[str, Any]) -> str:
        now = self.clock()
        sid = secrets.token_urlsafe(32)
        with self.session_factory() as db:
            self._sweep(db, now)
            live = db.scalar(select(func.count()).select_from(WebSession)
                             .where(WebSession.portal == self.portal)) or 0
            if live >= self.max_sessions:
                oldest = list(db.scalars(select(WebSession.id).where(WebSession.portal == self.portal)
                                         .order_by(WebSession.last_seen).limit(live - self.max_sessions + 1)))
                db.execute(delete(WebSession).where(WebSession.id.in_(oldest)))
                with self._lock:
                    self.evicted += len(oldest)
            when = _when(now)
            db.add(WebSession(id=_row_id(sid), portal=self.portal, user_id=user_id, data=json.dumps(data),
                              created=when, last_seen=when))
            db.commit()
        return sid

    def save(self, sid: str, data: dict[str, Any] | None, last_seen: float) -> None:
        """Write the session's data (None: unchanged) and mark it used now (at most once per
        ``TOUCH_INTERVAL``)."""
        now = self.clock()
        if data is None and now - last_seen < TOUCH_INTERVAL:
            return
        with self.session_factory() as db:
            row = db.get(WebSession, _row_id(sid))
            if row is None or row.portal != self.portal:
                return  # logged out elsewhere in the meantime
            row.last_seen = _when(now)
            if data is not None:
                row.data = json.dumps(data)
            db.commit()

    def drop(self, sid: str) -> None:
        with self.session_factory() as db:
            db.execute(delete(WebSession).where(WebSession.id == _row_id(sid), WebSession.portal == self.portal))
            db.commit()

    def drop_user(self, user_id: int, db: Session) -> None:
        """End every session of ``user_id`` within ``db``'s transaction (e.g. the one deleting the
        account: both happen, or neither)."""
        db.execute(delete(WebSession).where(WebSession.portal == self.portal, WebSession.user_id == user_id))

    def sweep(self) -> int:
        """Delete the expired sessions now; the number left."""
        with self.session_factory() as db:
            self._sweep(db, self.clock())
            db.commit()
            return self.count(db)

    def count(self, db: Session | None = None) -> int:
        if db is None:
            with self.session_factory() as own:
                return self.count(own)
        return db.scalar(select(func.count()).select_from(WebSession).where(WebSession.portal == self.portal)) or 0

    def _sweep(self, db: Session, now: float) -> None:
        db.execute(delete(WebSession).where(WebSession.portal == self.portal,
                                            WebSession.last_seen < self._cutoff(now)))
        with self._lock:
            self._next_sweep = now + SWEEP_INTERVAL

    def _maybe_sweep(self, now: float) -> None:
        with self._lock:
            due = now >= self._next_sweep
        if due:
            with self.session_factory() as db:
                self._sweep(db, now)
                db.commit()


def portal_secret(session_factory: sessionmaker[Session], portal: str) -> bytes:
    """The portal's signing key: the one in ``web_secret``, or a new one if this process is the
    first (when two start at once, the one whose row went in first wins and both use it)."""
    with session_factory() as db:
        row = db.get(WebSecret, portal)
        if row is not None:
            return bytes(row.secret)
        db.add(WebSecret(portal=portal, secret=secrets.token_bytes(32)))
        try:
            db.commit()
        except IntegrityError:
            db.rollback()
        row = db.get(WebSecret, portal, populate_existing=True)
        assert row is not None
        return bytes(row.secret)


class DbSessionInterface(SessionInterface):
    """Flask's session handling for the portals (see the module docstring)."""

    def __init__(self, store: SessionStore, cookie_name: str, csrf_cookie_name: str) -> None:
        self.store = store
        self.cookie_name = cookie_name
        self.csrf_cookie_name = csrf_cookie_name

    def open_session(self, app: Flask, request: Request) -> PortalSession:
        sid = request.cookies.get(self.cookie_name)
        if sid:
            found = self.store.get(sid) if SID_RE.fullmatch(sid) else None
            if found is not None:
                user_id, data, last_seen = found
                return PortalSession(data, sid=sid, user_id=user_id, last_seen=last_seen)
        session = PortalSession()
        session.clear_sid_cookie = bool(sid)  # expired or unknown: the browser may forget it
        nonce = request.cookies.get(self.csrf_cookie_name, "")
        if CSRF_VALUE_RE.fullmatch(nonce):
            session[CSRF_KEY] = nonce
            session.had_csrf_cookie = True
            session.modified = False
        return session

    @staticmethod
    def _cookie_args() -> dict[str, Any]:
        # is_secure: wsgi.url_scheme, which flup sets from the web server's HTTPS variable
        return {"path": request.script_root or "/", "httponly": True, "samesite": "Strict",
                "secure": request.is_secure}

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        assert isinstance(session, PortalSession)
        args = self._cookie_args()
        if (session.ended or session.new_login is not None) and session.sid is not None:
            self.store.drop(session.sid)
        if session.new_login is not None:
            sid = self.store.new(session.new_login, dict(session))
            response.set_cookie(self.cookie_name, sid, **args)
            if session.had_csrf_cookie:  # the anonymous forms' cookie has served its purpose
                response.delete_cookie(self.csrf_cookie_name, **args)
            return
        if session.ended or session.clear_sid_cookie:
            response.delete_cookie(self.cookie_name, **args)
        if session.ended:
            return
        if session.sid is not None and (session.modified or not session.passive):
            # a passive request (a page polling) leaves last_seen alone: an open page alone does not
            # keep a login past its idle timeout
            self.store.save(session.sid, dict(session) if session.modified else None, session.last_seen)
        elif session.modified and CSRF_KEY in session and not session.had_csrf_cookie:
            response.set_cookie(self.csrf_cookie_name, str(session[CSRF_KEY]), **args)
