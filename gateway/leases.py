"""Gateway leases in the registry database, so every gateway process (and host) sees them.

Rules (upstream gateway/internal/gateway/backend/lease_service.go, lease_entity.go): a lease
is on `<fqrn>/<path>`; a new lease whose path is, contains or lies below an unexpired lease's
path of the same repository is refused as `path_busy` with the time that lease has left;
expired leases are removed when a new lease is granted; a token names the lease for payloads,
commit and cancel. Disjoint paths of one repository hold leases at the same time.

Granting is check-then-insert, so it runs under a per-repository guard row: the UPDATE of
that row takes the database's write lock (SQLite) or the row lock (PostgreSQL) first, which
serialises two processes granting on the same repository.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, Float, Integer, String, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from gateway.errors import InvalidLease, PathBusy
from gateway.paths import LeasePath
from service.schema import create_tables, open_engine


class _Base(DeclarativeBase):
    pass


class LeaseRow(_Base):
    __tablename__ = "gateway_leases"

    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    fqrn: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(String(4096))
    key_id: Mapped[str] = mapped_column(String(255))
    hostname: Mapped[str] = mapped_column(String(255))
    protocol_version: Mapped[int] = mapped_column(Integer)
    # The root catalog the repository had when the lease was granted: a commit must name it
    # (or the current one) as its old root hash.
    base_root_hash: Mapped[str] = mapped_column(String(64))
    base_revision: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[float] = mapped_column(Float)  # seconds since the epoch


class LeaseGuardRow(_Base):
    __tablename__ = "gateway_lease_guards"

    fqrn: Mapped[str] = mapped_column(String(64), primary_key=True)
    touched_at: Mapped[float] = mapped_column(Float)


@dataclass(frozen=True)
class Lease:
    token: str
    lease_path: LeasePath
    key_id: str
    hostname: str
    protocol_version: int
    base_root_hash: str
    base_revision: int
    expires_at: float

    @property
    def fqrn(self) -> str:
        return self.lease_path.fqrn


def new_token() -> str:
    """32 random bytes in base32, the shape of the stock gateway's tokens (token.go)."""
    return base64.b32encode(secrets.token_bytes(32)).decode()


def _lease(row: LeaseRow) -> Lease:
    return Lease(
        token=row.token,
        lease_path=LeasePath(row.fqrn, row.path),
        key_id=row.key_id,
        hostname=row.hostname,
        protocol_version=row.protocol_version,
        base_root_hash=row.base_root_hash,
        base_revision=row.base_revision,
        expires_at=row.expires_at,
    )


class LeaseStore:
    """Grant, find, cancel and expire leases; every method is one database transaction."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._clock = clock
        create_tables(_Base.metadata, engine)

    @classmethod
    def open_url(cls, url: str) -> LeaseStore:
        engine = open_engine(url)
        return cls(engine)

    def close(self) -> None:
        self._engine.dispose()

    def _guard(self, session: Session, fqrn: str, now: float) -> None:
        dialect = sqlite if self._engine.dialect.name == "sqlite" else postgresql
        touched = session.execute(
            update(LeaseGuardRow).where(LeaseGuardRow.fqrn == fqrn).values(touched_at=now)
        )
        if not touched.rowcount:  # type: ignore[attr-defined]
            session.execute(
                dialect.insert(LeaseGuardRow)
                .values(fqrn=fqrn, touched_at=now)
                .on_conflict_do_nothing()
            )
            session.execute(
                update(LeaseGuardRow).where(LeaseGuardRow.fqrn == fqrn).values(touched_at=now)
            )

    def acquire(
        self,
        lease_path: LeasePath,
        *,
        key_id: str,
        hostname: str,
        protocol_version: int,
        base_root_hash: str,
        base_revision: int,
        lease_time_s: float,
    ) -> Lease:
        """A new lease, or `PathBusy` with the longest time an overlapping lease has left."""
        now = self._clock()
        with Session(self._engine) as session, session.begin():
            self._guard(session, lease_path.fqrn, now)
            rows = session.scalars(
                select(LeaseRow).where(LeaseRow.fqrn == lease_path.fqrn, LeaseRow.expires_at > now)
            ).all()
            busy = [r for r in rows if LeasePath(r.fqrn, r.path).overlaps(lease_path)]
            if busy:
                raise PathBusy(max(r.expires_at for r in busy) - now)
            session.execute(delete(LeaseRow).where(LeaseRow.expires_at <= now))
            row = LeaseRow(
                token=new_token(),
                fqrn=lease_path.fqrn,
                path=lease_path.path,
                key_id=key_id,
                hostname=hostname[:255],
                protocol_version=protocol_version,
                base_root_hash=base_root_hash,
                base_revision=base_revision,
                expires_at=now + lease_time_s,
            )
            session.add(row)
            session.flush()
            return _lease(row)

    def find(self, token: str) -> Lease:
        """The unexpired lease of `token`, else `InvalidLease`."""
        with Session(self._engine) as session:
            row = session.get(LeaseRow, token)
            if row is None:
                raise InvalidLease("unknown token")
            if row.expires_at <= self._clock():
                raise InvalidLease("the lease expired")
            return _lease(row)

    def active(self) -> list[Lease]:
        now = self._clock()
        with Session(self._engine) as session:
            rows = session.scalars(select(LeaseRow).where(LeaseRow.expires_at > now)).all()
            return [_lease(r) for r in rows]

    def release(self, token: str) -> None:
        """Remove the lease of `token` (cancel, or the end of a commit); unknown → InvalidLease."""
        with Session(self._engine) as session, session.begin():
            removed = session.execute(delete(LeaseRow).where(LeaseRow.token == token))
            if not removed.rowcount:  # type: ignore[attr-defined]
                raise InvalidLease("unknown token")

    def release_under(self, lease_path: LeasePath) -> int:
        """Remove every lease on `lease_path` or below it (the admin's drop by path)."""
        with Session(self._engine) as session, session.begin():
            rows = session.scalars(select(LeaseRow).where(LeaseRow.fqrn == lease_path.fqrn)).all()
            doomed = [r.token for r in rows if lease_path.contains(r.path)]
            if doomed:
                session.execute(delete(LeaseRow).where(LeaseRow.token.in_(doomed)))
            return len(doomed)
