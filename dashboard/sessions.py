"""Server-side dashboard sessions: the data in the registry database, the cookie only a signed id.

OIDC tokens never leave the server. Every API process (on any host) reads the same table, so a
user's next request may land on another process. Rows are keyed by the SHA-256 of the session
id, so a copy of the table gives nobody a usable cookie.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from itsdangerous import BadSignature, Signer
from sqlalchemy import Engine, String, Text, delete, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.repositories import UtcDateTime, utc_now
from service.schema import create_tables, open_engine

log = logging.getLogger("cvmfs.dashboard")


class _Base(DeclarativeBase):
    pass


class SessionRow(_Base):
    __tablename__ = "dashboard_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), index=True)


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    """Session data by id, in a SQL table; expired rows are never returned and get removed."""

    def __init__(
        self, engine: Engine, ttl_s: int, clock: Callable[[], dt.datetime] = utc_now
    ) -> None:
        self._engine = engine
        self._ttl = dt.timedelta(seconds=ttl_s)
        self._clock = clock
        create_tables(_Base.metadata, engine)

    @classmethod
    def open_url(cls, url: str, ttl_s: int) -> SessionStore:
        engine = open_engine(url)
        return cls(engine, ttl_s)

    def close(self) -> None:
        self._engine.dispose()

    def load(self, session_id: str) -> dict[str, Any] | None:
        with Session(self._engine) as session:
            row = session.get(SessionRow, _hash(session_id))
            if row is None or row.expires_at <= self._clock():
                return None
            data = json.loads(row.data)
            return data if isinstance(data, dict) else None

    def save(self, session_id: str, data: dict[str, Any]) -> None:
        """Store `data`; the session lives `ttl_s` from its last change."""
        now = self._clock()
        with Session(self._engine) as session, session.begin():
            row = session.get(SessionRow, _hash(session_id))
            if row is None:
                session.add(
                    SessionRow(
                        id_hash=_hash(session_id),
                        data=json.dumps(data),
                        expires_at=now + self._ttl,
                    )
                )
                # New sessions are rare (one per login): the moment to drop expired ones.
                session.execute(delete(SessionRow).where(SessionRow.expires_at <= now))
            else:
                row.data = json.dumps(data)
                row.expires_at = now + self._ttl

    def delete(self, session_id: str) -> None:
        with Session(self._engine) as session, session.begin():
            session.execute(delete(SessionRow).where(SessionRow.id_hash == _hash(session_id)))

    def count(self) -> int:
        with Session(self._engine) as session:
            return len(session.scalars(select(SessionRow.id_hash)).all())


SIGNER_SALT = "cvmfs-dashboard-session"


def session_signer(secret: str) -> Signer:
    """Signs and checks the session id in the cookie (`<id>.<signature>`)."""
    return Signer(secret, salt=SIGNER_SALT)


class ServerSession(dict[str, Any]):
    """`request.session`: a dict; `rotate()` gives it a new id (after login: no fixation)."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        super().__init__(data or {})
        self.rotated = False

    def rotate(self) -> None:
        self.rotated = True


class ServerSessionMiddleware:
    """Puts a `ServerSession` into the ASGI scope (what Starlette's `request.session` reads).

    The cookie is HttpOnly, SameSite=Lax, Secure when the request came over https, and scoped
    to `path`; it holds `<random id>.<signature>`. A session with no data has no row and no
    cookie, so anonymous visits store nothing.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: SessionStore,
        secret: str,
        *,
        cookie_name: str,
        path: str,
        max_age_s: int,
        always_secure: bool = False,
    ) -> None:
        self.app = app
        self.store = store
        self.signer = session_signer(secret)
        self.cookie_name = cookie_name
        self.path = path
        self.max_age_s = max_age_s
        # Behind a TLS-terminating proxy the request reaches us over http: the public URL's
        # scheme decides then.
        self.always_secure = always_secure

    def _session_id(self, connection: HTTPConnection) -> str | None:
        cookie = connection.cookies.get(self.cookie_name)
        if not cookie:
            return None
        try:
            return self.signer.unsign(cookie).decode()
        except BadSignature:
            log.info("event=session-cookie-refused reason=bad-signature")
            return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not scope["path"].startswith(self.path):
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        session_id = self._session_id(connection)
        data = await anyio.to_thread.run_sync(self.store.load, session_id) if session_id else None
        session = ServerSession(data)
        scope["session"] = session
        initial = json.dumps(data or {}, sort_keys=True)
        secure = self.always_secure or scope.get("scheme") == "https"

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                cookie = await anyio.to_thread.run_sync(
                    self._commit, session_id, data is not None, session, initial, secure
                )
                if cookie is not None:
                    MutableHeaders(scope=message).append("Set-Cookie", cookie)
            await send(message)

        await self.app(scope, receive, send_wrapper)

    def _commit(
        self,
        session_id: str | None,
        existed: bool,
        session: ServerSession,
        initial: str,
        secure: bool,
    ) -> str | None:
        """Save or drop the session; the Set-Cookie header to send, if any."""
        if not session:
            if session_id is not None:
                if existed:
                    self.store.delete(session_id)
                return self._cookie("", 0, secure)
            return None
        changed = json.dumps(dict(session), sort_keys=True) != initial
        if session.rotated or session_id is None or not existed:
            if session_id is not None and existed:
                self.store.delete(session_id)
            session_id = secrets.token_urlsafe(32)
            self.store.save(session_id, dict(session))
        elif changed:
            self.store.save(session_id, dict(session))
        else:
            return None
        signed = self.signer.sign(session_id).decode()
        return self._cookie(signed, self.max_age_s, secure)

    def _cookie(self, value: str, max_age_s: int, secure: bool) -> str:
        parts = [
            f"{self.cookie_name}={value}",
            f"Path={self.path}",
            f"Max-Age={max_age_s}",
            "HttpOnly",
            "SameSite=Lax",
        ]
        if secure:
            parts.append("Secure")
        return "; ".join(parts)
