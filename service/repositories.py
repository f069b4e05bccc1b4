"""The registry of repositories: the source of truth for bucket → repository → owner, plus
provisioning requests (for idempotent redelivery), per-file sync provenance and key-access audit.

SQLAlchemy 2.0; SQLite under settings.data_dir by default, PostgreSQL when settings.database_url
is set. Every write is a single conflict-aware statement, so two workers racing on the same
repository or request cannot both win: one inserts, the other reads what the first wrote.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import (
    Boolean,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from service.schema import create_tables, open_engine
from service.settings import Settings

RepositoryKind = Literal["personal", "group"]
RepositoryStatus = Literal["requested", "ready", "failed", "deprovisioned"]
RequestStatus = Literal["pending", "ok", "refused", "failed"]
# waiting: the bucket does not exist yet; wired: its notification feeds the repository;
# foreign: it exists but belongs to another RGW user; unreadable: it exists and the service
# cannot read it. Repositories provisioned before bucket states were recorded have none.
BucketStateName = Literal["waiting", "wired", "foreign", "unreadable"]
SQLITE_FILE = "registry.sqlite3"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- errors ---------------------------------------------------------------------------------


class RegistryError(Exception):
    """A registry operation was refused; `reason` is safe to show the requester."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ClaimRefused(RegistryError):
    """A repository cannot be created as asked (name or bucket owned by someone else)."""


class NameTaken(ClaimRefused):
    pass


class BucketTaken(ClaimRefused):
    pass


class ClaimMismatch(ClaimRefused):
    """The same owner asked again for the repository, but with a different bucket."""


class RequestConflict(RegistryError):
    """A request id was reused for a different repository or requester."""


class UnknownRepository(RegistryError):
    pass


# -- schema ---------------------------------------------------------------------------------


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("registry timestamps must be timezone-aware")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    pass


class RepositoryRow(Base):
    __tablename__ = "repositories"

    fqrn: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    owner_subject: Mapped[str] = mapped_column(String(255), index=True)
    owner_username: Mapped[str] = mapped_column(String(255))
    group: Mapped[str | None] = mapped_column(String(255), index=True)
    # One bucket feeds one repository; a deprovisioned repository keeps its bucket reserved
    # so events still in flight cannot land in someone else's repository.
    bucket: Mapped[str] = mapped_column(String(63), unique=True)
    # The RGW user id owning the bucket (`ownerIdentity` in its events), read at wiring time.
    bucket_owner_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    current_revision: Mapped[int | None] = mapped_column(Integer)
    last_publish_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())


class ProvisioningRequestRow(Base):
    __tablename__ = "provisioning_requests"

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    fqrn: Mapped[str | None] = mapped_column(String(64), index=True)
    requester_subject: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class FileProvenanceRow(Base):
    __tablename__ = "file_provenance"

    fqrn: Mapped[str] = mapped_column(
        String(64), ForeignKey("repositories.fqrn", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(4096), primary_key=True)
    s3_key: Mapped[str] = mapped_column(String(1024))
    etag: Mapped[str | None] = mapped_column(String(128))
    version_id: Mapped[str | None] = mapped_column(String(1024))
    size_bytes: Mapped[int] = mapped_column(Integer)
    revision: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class SyncRefusalRow(Base):
    """A bucket key the sync does not publish, and why; replaced by every sync of the
    repository (a key gone from the bucket, or accepted again, loses its row)."""

    __tablename__ = "sync_refusals"

    fqrn: Mapped[str] = mapped_column(
        String(64), ForeignKey("repositories.fqrn", ondelete="CASCADE"), primary_key=True
    )
    s3_key: Mapped[str] = mapped_column(String(2048), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    other_key: Mapped[str | None] = mapped_column(String(2048))
    kind: Mapped[str] = mapped_column(String(16))
    etag: Mapped[str | None] = mapped_column(String(128))
    refused_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class KeyAccessRow(Base):
    __tablename__ = "key_access_audit"
    __table_args__ = (Index("ix_key_access_fqrn_at", "fqrn", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    fqrn: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    allowed: Mapped[bool] = mapped_column(Boolean)
    detail: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class BucketStateRow(Base):
    """Where a repository's bucket stands; a table of its own because the registry has no
    migrations (create_all only adds missing tables)."""

    __tablename__ = "repository_buckets"

    fqrn: Mapped[str] = mapped_column(
        String(64), ForeignKey("repositories.fqrn", ondelete="CASCADE"), primary_key=True
    )
    bucket: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(16), index=True)
    message: Mapped[str] = mapped_column(Text)
    # The RGW owner seen at the last check (None while the bucket does not exist).
    observed_owner_id: Mapped[str | None] = mapped_column(String(255))
    since: Mapped[dt.datetime] = mapped_column(UtcDateTime())  # when `state` last changed
    checked_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    # When a watcher last started a wiring run (claimed so that one copy starts it).
    wire_requested_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())


class ProvisionRetryRow(Base):
    """A provision that failed part way and is resumed by the repository watcher."""

    __tablename__ = "provision_retries"

    fqrn: Mapped[str] = mapped_column(
        String(64), ForeignKey("repositories.fqrn", ondelete="CASCADE"), primary_key=True
    )
    request_id: Mapped[str] = mapped_column(String(128))
    attempts: Mapped[int] = mapped_column(Integer)  # resumes started so far
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


# -- values returned to callers -------------------------------------------------------------


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)


class RepositoryClaim(_Record):
    """What provisioning asks the registry for."""

    fqrn: str
    kind: RepositoryKind
    owner_subject: str
    owner_username: str
    group: str | None = None
    bucket: str


class Repository(_Record):
    fqrn: str
    kind: RepositoryKind
    owner_subject: str
    owner_username: str
    group: str | None
    bucket: str
    bucket_owner_id: str | None = None
    status: RepositoryStatus
    created_at: dt.datetime
    updated_at: dt.datetime
    last_error: str | None
    current_revision: int | None
    last_publish_at: dt.datetime | None


class ProvisioningRequest(_Record):
    request_id: str
    fqrn: str | None
    requester_subject: str | None
    status: RequestStatus
    reason: str | None
    received_at: dt.datetime
    updated_at: dt.datetime


class FileProvenance(_Record):
    path: str  # inside the repository, e.g. "software/bin/tool"
    s3_key: str
    etag: str | None
    version_id: str | None
    size_bytes: int
    revision: int
    updated_at: dt.datetime | None = None  # set by the registry


class SyncRefusal(_Record):
    """A key of the repository's bucket that is not published: the reason, the other key of
    a colliding pair, what judged it (`key` alone, a `pair`, the object's `content`)."""

    s3_key: str
    reason: str
    other_key: str | None = None
    kind: Literal["key", "pair", "content"] = "key"
    etag: str | None = None
    refused_at: dt.datetime | None = None  # set by the registry: when first refused so


class KeyAccess(_Record):
    fqrn: str
    subject: str
    action: str
    allowed: bool
    detail: str
    at: dt.datetime


class BucketState(_Record):
    fqrn: str
    bucket: str
    state: BucketStateName
    message: str
    observed_owner_id: str | None
    since: dt.datetime
    checked_at: dt.datetime
    wire_requested_at: dt.datetime | None


class ProvisionRetry(_Record):
    fqrn: str
    request_id: str
    attempts: int
    next_attempt_at: dt.datetime


# -- the registry ---------------------------------------------------------------------------


def database_url(settings: Settings) -> str:
    """settings.database_url, the stack's PostgreSQL, or the SQLite file in the data dir."""
    configured = settings.registry_database_url
    if configured is not None:
        return configured
    return f"sqlite:///{settings.absolute_data_dir / SQLITE_FILE}"


class RepositoryRegistry:
    """Typed access to the registry tables; no SQL leaves this class."""

    def __init__(self, engine: Engine, clock: Callable[[], dt.datetime] = utc_now) -> None:
        self._engine = engine
        self._clock = clock
        self._paths_by_code_point: bool | None = None  # see _ordered_path
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise RegistryError(
                f"database {engine.dialect.name!r} is not supported: use SQLite or PostgreSQL"
            )

    @classmethod
    def open(
        cls, settings: Settings, clock: Callable[[], dt.datetime] = utc_now
    ) -> RepositoryRegistry:
        """Connect to the configured database and create missing tables."""
        return cls.open_url(database_url(settings), clock)

    @classmethod
    def open_url(cls, url: str, clock: Callable[[], dt.datetime] = utc_now) -> RepositoryRegistry:
        registry = cls(open_engine(url), clock)
        registry.create_schema()
        return registry

    def create_schema(self) -> None:
        create_tables(Base.metadata, self._engine)

    def close(self) -> None:
        self._engine.dispose()

    def _insert(self, table: Any) -> Any:
        dialect = sqlite if self._engine.dialect.name == "sqlite" else postgresql
        return dialect.insert(table)

    # -- repositories ----------------------------------------------------------------------

    def claim(self, claim: RepositoryClaim) -> Repository:
        """Create the repository, or return it if the same owner already has it.

        Idempotent and race-safe: the INSERT does nothing on any conflict, and what is then in
        the table decides. Raises NameTaken / BucketTaken / ClaimMismatch otherwise. A
        deprovisioned repository claimed again by its owner goes back to `requested`.
        """
        now = self._clock()
        with Session(self._engine) as session, session.begin():
            session.execute(
                self._insert(RepositoryRow)
                .values(
                    **claim.model_dump(),
                    bucket_owner_id=None,
                    status="requested",
                    created_at=now,
                    updated_at=now,
                    last_error=None,
                    current_revision=None,
                    last_publish_at=None,
                )
                .on_conflict_do_nothing()
            )
            row = session.get(RepositoryRow, claim.fqrn, populate_existing=True)
            if row is None:
                raise BucketTaken(
                    f"bucket {claim.bucket!r} already feeds another repository; name another bucket"
                )
            self._check_same_claim(row, claim)
            if row.status == "deprovisioned":
                row.status = "requested"
                row.updated_at = now
                row.last_error = None
            return Repository.model_validate(row)

    @staticmethod
    def _check_same_claim(row: RepositoryRow, claim: RepositoryClaim) -> None:
        same_owner = row.kind == claim.kind and (
            row.group == claim.group
            if claim.kind == "group"
            else row.owner_subject == claim.owner_subject
        )
        if not same_owner:
            raise NameTaken(
                f"repository {claim.fqrn!r} already belongs to another "
                f"{'group' if row.kind == 'group' else 'user'}; choose another short name"
            )
        if row.bucket != claim.bucket:
            raise ClaimMismatch(
                f"repository {claim.fqrn!r} already exists and is fed by bucket "
                f"{row.bucket!r}, not {claim.bucket!r}"
            )

    def get(self, fqrn: str) -> Repository | None:
        with Session(self._engine) as session:
            row = session.get(RepositoryRow, fqrn)
            return Repository.model_validate(row) if row is not None else None

    def require(self, fqrn: str) -> Repository:
        repository = self.get(fqrn)
        if repository is None:
            raise UnknownRepository(f"no repository {fqrn!r} in the registry")
        return repository

    def by_bucket(self, bucket: str) -> Repository | None:
        with Session(self._engine) as session:
            row = session.scalars(
                select(RepositoryRow).where(RepositoryRow.bucket == bucket)
            ).first()
            return Repository.model_validate(row) if row is not None else None

    def visible_to(self, subject: str, groups: Iterable[str]) -> list[Repository]:
        """Repositories owned by `subject` or by one of `groups` (normalised group names)."""
        groups = list(groups)
        condition = RepositoryRow.owner_subject == subject
        if groups:
            condition = or_(
                condition, (RepositoryRow.kind == "group") & RepositoryRow.group.in_(groups)
            )
        with Session(self._engine) as session:
            rows = session.scalars(select(RepositoryRow).where(condition).order_by("fqrn"))
            return [Repository.model_validate(r) for r in rows]

    def repositories(self, status: RepositoryStatus | None = None) -> list[Repository]:
        query = select(RepositoryRow).order_by(RepositoryRow.fqrn)
        if status is not None:
            query = query.where(RepositoryRow.status == status)
        with Session(self._engine) as session:
            return [Repository.model_validate(r) for r in session.scalars(query)]

    def set_status(
        self, fqrn: str, status: RepositoryStatus, last_error: str | None = None
    ) -> Repository:
        """Set the status; `last_error` is recorded for `failed` and cleared otherwise."""
        with Session(self._engine) as session, session.begin():
            result = session.execute(
                update(RepositoryRow)
                .where(RepositoryRow.fqrn == fqrn)
                .values(
                    status=status,
                    last_error=last_error if status == "failed" else None,
                    updated_at=self._clock(),
                )
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                raise UnknownRepository(f"no repository {fqrn!r} in the registry")
        return self.require(fqrn)

    def set_bucket_owner(self, fqrn: str, owner_id: str) -> Repository:
        """Record who owns the bucket in RGW; the bridge checks every event against it."""
        with Session(self._engine) as session, session.begin():
            result = session.execute(
                update(RepositoryRow)
                .where(RepositoryRow.fqrn == fqrn)
                .values(bucket_owner_id=owner_id, updated_at=self._clock())
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                raise UnknownRepository(f"no repository {fqrn!r} in the registry")
        return self.require(fqrn)

    def record_error(self, fqrn: str, error: str) -> None:
        """Remember the last error (e.g. a failed publish) without changing the status."""
        with Session(self._engine) as session, session.begin():
            session.execute(
                update(RepositoryRow)
                .where(RepositoryRow.fqrn == fqrn)
                .values(last_error=error, updated_at=self._clock())
            )

    def record_publish(self, fqrn: str, revision: int, at: dt.datetime | None = None) -> bool:
        """Record a published revision; False (nothing changed) if it is not newer.

        Revisions only grow: a late, retried task reporting an older revision is ignored.
        """
        at = at or self._clock()
        with Session(self._engine) as session, session.begin():
            result = session.execute(
                update(RepositoryRow)
                .where(RepositoryRow.fqrn == fqrn)
                .where(
                    or_(
                        RepositoryRow.current_revision.is_(None),
                        RepositoryRow.current_revision < revision,
                    )
                )
                .values(
                    current_revision=revision,
                    last_publish_at=at,
                    last_error=None,
                    updated_at=self._clock(),
                )
            )
            changed = bool(result.rowcount)  # type: ignore[attr-defined]
        if not changed:
            self.require(fqrn)
        return changed

    # -- bucket states ---------------------------------------------------------------------

    def record_bucket_state(
        self,
        fqrn: str,
        bucket: str,
        state: BucketStateName,
        message: str,
        observed_owner_id: str | None = None,
    ) -> BucketState:
        """Record the outcome of a bucket check; `since` moves only when the state changes."""
        now = self._clock()
        try:
            with Session(self._engine) as session, session.begin():
                session.execute(
                    self._insert(BucketStateRow)
                    .values(
                        fqrn=fqrn,
                        bucket=bucket,
                        state=state,
                        message=message,
                        observed_owner_id=observed_owner_id,
                        since=now,
                        checked_at=now,
                        wire_requested_at=None,
                    )
                    .on_conflict_do_nothing()
                )
                session.execute(
                    update(BucketStateRow)
                    .where(BucketStateRow.fqrn == fqrn, BucketStateRow.state != state)
                    .values(since=now)
                )
                session.execute(
                    update(BucketStateRow)
                    .where(BucketStateRow.fqrn == fqrn)
                    .values(
                        bucket=bucket,
                        state=state,
                        message=message,
                        observed_owner_id=observed_owner_id,
                        checked_at=now,
                    )
                )
        except IntegrityError as error:
            raise UnknownRepository(f"no repository {fqrn!r} in the registry") from error
        state_now = self.bucket_state(fqrn)
        assert state_now is not None
        return state_now

    def bucket_state(self, fqrn: str) -> BucketState | None:
        with Session(self._engine) as session:
            row = session.get(BucketStateRow, fqrn)
            return BucketState.model_validate(row) if row is not None else None

    def bucket_states(self, fqrns: Iterable[str]) -> dict[str, BucketState]:
        wanted = sorted(set(fqrns))
        found: dict[str, BucketState] = {}
        with Session(self._engine) as session:
            for start in range(0, len(wanted), 500):
                rows = session.scalars(
                    select(BucketStateRow).where(
                        BucketStateRow.fqrn.in_(wanted[start : start + 500])
                    )
                )
                found.update((row.fqrn, BucketState.model_validate(row)) for row in rows)
        return found

    def buckets_to_watch(self) -> list[tuple[Repository, BucketState]]:
        """Ready repositories whose bucket is not wired yet (waiting, foreign or unreadable)."""
        query = (
            select(RepositoryRow, BucketStateRow)
            .join(BucketStateRow, BucketStateRow.fqrn == RepositoryRow.fqrn)
            .where(RepositoryRow.status == "ready", BucketStateRow.state != "wired")
            .order_by(RepositoryRow.fqrn)
        )
        with Session(self._engine) as session:
            return [
                (Repository.model_validate(repo), BucketState.model_validate(state))
                for repo, state in session.execute(query)
            ]

    def claim_wiring(self, fqrn: str, retry_after: dt.timedelta) -> bool:
        """True for the one caller that may start a wiring run now (none started recently).

        A conditional UPDATE, so of several watchers (processes, hosts) exactly one wins.
        """
        now = self._clock()
        with Session(self._engine) as session, session.begin():
            result = session.execute(
                update(BucketStateRow)
                .where(
                    BucketStateRow.fqrn == fqrn,
                    BucketStateRow.state != "wired",
                    or_(
                        BucketStateRow.wire_requested_at.is_(None),
                        BucketStateRow.wire_requested_at <= now - retry_after,
                    ),
                )
                .values(wire_requested_at=now)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    # -- resuming failed provisions --------------------------------------------------------

    def schedule_provision_retry(
        self, fqrn: str, request_id: str, delay: dt.timedelta
    ) -> ProvisionRetry:
        """Remember a failed provision for resuming; an existing schedule is kept as it is."""
        now = self._clock()
        try:
            with Session(self._engine) as session, session.begin():
                session.execute(
                    self._insert(ProvisionRetryRow)
                    .values(
                        fqrn=fqrn,
                        request_id=request_id,
                        attempts=0,
                        next_attempt_at=now + delay,
                        updated_at=now,
                    )
                    .on_conflict_do_nothing()
                )
                row = session.get(ProvisionRetryRow, fqrn, populate_existing=True)
                assert row is not None
                return ProvisionRetry.model_validate(row)
        except IntegrityError as error:
            raise UnknownRepository(f"no repository {fqrn!r} in the registry") from error

    def schedule_stalled_provisions(self, stalled_after: dt.timedelta) -> list[ProvisionRetry]:
        """Schedule a resume, due now, of each repository left `requested` for `stalled_after`.

        A provision run that died before recording an outcome (a killed worker, a lost host)
        leaves its repository `requested`, with no failure to resume from; its latest request
        (recorded by the claim step) is resumed, so the user's request turns `ok` when done.
        """
        now = self._clock()
        stalled = (
            select(RepositoryRow.fqrn)
            .outerjoin(ProvisionRetryRow, ProvisionRetryRow.fqrn == RepositoryRow.fqrn)
            .where(
                RepositoryRow.status == "requested",
                RepositoryRow.updated_at <= now - stalled_after,
                ProvisionRetryRow.fqrn.is_(None),
            )
        )
        scheduled = []
        with Session(self._engine) as session:
            fqrns = list(session.scalars(stalled))
        for fqrn in fqrns:
            with Session(self._engine) as session:
                request_id = session.scalars(
                    select(ProvisioningRequestRow.request_id)
                    .where(ProvisioningRequestRow.fqrn == fqrn)
                    .order_by(ProvisioningRequestRow.received_at.desc())
                    .limit(1)
                ).first()
            scheduled.append(
                self.schedule_provision_retry(fqrn, request_id or f"resume-{fqrn}", dt.timedelta(0))
            )
        return scheduled

    def due_provision_retries(self, max_attempts: int) -> list[tuple[Repository, ProvisionRetry]]:
        """Failed (or stalled) repositories whose next resume is due, with attempts left."""
        query = (
            select(RepositoryRow, ProvisionRetryRow)
            .join(ProvisionRetryRow, ProvisionRetryRow.fqrn == RepositoryRow.fqrn)
            .where(
                RepositoryRow.status.in_(("failed", "requested")),
                ProvisionRetryRow.next_attempt_at <= self._clock(),
                ProvisionRetryRow.attempts < max_attempts,
            )
            .order_by(ProvisionRetryRow.next_attempt_at)
        )
        with Session(self._engine) as session:
            return [
                (Repository.model_validate(repo), ProvisionRetry.model_validate(retry))
                for repo, retry in session.execute(query)
            ]

    def claim_provision_retry(self, retry: ProvisionRetry, next_delay: dt.timedelta) -> bool:
        """True for the one caller that starts resume number `retry.attempts + 1`."""
        now = self._clock()
        with Session(self._engine) as session, session.begin():
            result = session.execute(
                update(ProvisionRetryRow)
                .where(
                    ProvisionRetryRow.fqrn == retry.fqrn,
                    ProvisionRetryRow.attempts == retry.attempts,
                )
                .values(
                    attempts=retry.attempts + 1,
                    next_attempt_at=now + next_delay,
                    updated_at=now,
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def provision_retry(self, fqrn: str) -> ProvisionRetry | None:
        with Session(self._engine) as session:
            row = session.get(ProvisionRetryRow, fqrn)
            return ProvisionRetry.model_validate(row) if row is not None else None

    def clear_provision_retry(self, fqrn: str) -> None:
        with Session(self._engine) as session, session.begin():
            session.execute(delete(ProvisionRetryRow).where(ProvisionRetryRow.fqrn == fqrn))

    # -- provisioning requests -------------------------------------------------------------

    def record_request(
        self, request_id: str, fqrn: str | None, requester_subject: str | None
    ) -> tuple[ProvisioningRequest, bool]:
        """Record a received request; returns (the record, True if this call created it).

        A redelivered request returns the first record unchanged (so its stored outcome can be
        replied again). The same id for another repository or requester is a RequestConflict.
        """
        now = self._clock()
        with Session(self._engine) as session, session.begin():
            result = session.execute(
                self._insert(ProvisioningRequestRow)
                .values(
                    request_id=request_id,
                    fqrn=fqrn,
                    requester_subject=requester_subject,
                    status="pending",
                    reason=None,
                    received_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing()
                # RETURNING tells reliably whether this statement inserted (rowcount does
                # not, on every driver, for ON CONFLICT DO NOTHING).
                .returning(ProvisioningRequestRow.request_id)
            )
            created = result.first() is not None
            row = session.get(ProvisioningRequestRow, request_id, populate_existing=True)
            assert row is not None
            if (row.fqrn, row.requester_subject) != (fqrn, requester_subject):
                raise RequestConflict(
                    f"request id {request_id!r} was already used for another request; "
                    f"use a new request id"
                )
            return ProvisioningRequest.model_validate(row), created

    def finish_request(
        self, request_id: str, status: RequestStatus, reason: str | None = None
    ) -> ProvisioningRequest:
        with Session(self._engine) as session, session.begin():
            row = session.get(ProvisioningRequestRow, request_id)
            if row is None:
                raise RegistryError(f"no provisioning request {request_id!r}")
            row.status = status
            row.reason = reason
            row.updated_at = self._clock()
            return ProvisioningRequest.model_validate(row)

    def request(self, request_id: str) -> ProvisioningRequest | None:
        with Session(self._engine) as session:
            row = session.get(ProvisioningRequestRow, request_id)
            return ProvisioningRequest.model_validate(row) if row is not None else None

    # -- file provenance -------------------------------------------------------------------

    def upsert_file(self, fqrn: str, file: FileProvenance) -> FileProvenance:
        """Record where a published path came from (insert or replace)."""
        values = file.model_dump(exclude={"updated_at"}) | {
            "fqrn": fqrn,
            "updated_at": self._clock(),
        }
        statement = self._insert(FileProvenanceRow).values(**values)
        statement = statement.on_conflict_do_update(
            index_elements=["fqrn", "path"],
            set_={k: v for k, v in values.items() if k not in ("fqrn", "path")},
        )
        try:
            with Session(self._engine) as session, session.begin():
                session.execute(statement)
                row = session.get(FileProvenanceRow, (fqrn, file.path), populate_existing=True)
                return FileProvenance.model_validate(row)
        except IntegrityError as error:
            # The only constraint an upsert can break is the foreign key to the repository.
            raise UnknownRepository(f"no repository {fqrn!r} in the registry") from error

    def record_sync(
        self, fqrn: str, published: Iterable[FileProvenance], removed: Iterable[str]
    ) -> None:
        """One revision's provenance changes in one database transaction."""
        now = self._clock()
        rows = [
            f.model_dump(exclude={"updated_at"}) | {"fqrn": fqrn, "updated_at": now}
            for f in published
        ]
        gone = list(removed)
        try:
            with Session(self._engine) as session, session.begin():
                if gone:
                    session.execute(
                        delete(FileProvenanceRow).where(
                            FileProvenanceRow.fqrn == fqrn, FileProvenanceRow.path.in_(gone)
                        )
                    )
                for values in rows:
                    statement = self._insert(FileProvenanceRow).values(**values)
                    session.execute(
                        statement.on_conflict_do_update(
                            index_elements=["fqrn", "path"],
                            set_={k: v for k, v in values.items() if k not in ("fqrn", "path")},
                        )
                    )
        except IntegrityError as error:
            raise UnknownRepository(f"no repository {fqrn!r} in the registry") from error

    def get_file(self, fqrn: str, path: str) -> FileProvenance | None:
        with Session(self._engine) as session:
            row = session.get(FileProvenanceRow, (fqrn, path))
            return FileProvenance.model_validate(row) if row is not None else None

    def files_at(self, fqrn: str, paths: Iterable[str]) -> dict[str, FileProvenance]:
        """Provenance of these paths (paths without any are left out), in bounded queries."""
        wanted = sorted(set(paths))
        found: dict[str, FileProvenance] = {}
        with Session(self._engine) as session:
            for start in range(0, len(wanted), 500):  # under every backend's bind-parameter cap
                rows = session.scalars(
                    select(FileProvenanceRow).where(
                        FileProvenanceRow.fqrn == fqrn,
                        FileProvenanceRow.path.in_(wanted[start : start + 500]),
                    )
                )
                found.update((row.path, FileProvenance.model_validate(row)) for row in rows)
        return found

    def _ordered_path(self) -> Any:
        """The path column compared by code point, as the range queries over paths need.

        SQLite compares bytes. PostgreSQL compares by the database's collation: a linguistic
        one (en_US.UTF-8) ignores '/' at first, so `/a/b/c` falls outside [`/a/b/`, `/a/b0`).
        Such a database gets COLLATE "C" (its index then no longer serves the range); one that
        already orders by code point (C, C.UTF-8, as the stack's) keeps its index.
        """
        if self._engine.dialect.name != "postgresql":
            return FileProvenanceRow.path
        if self._paths_by_code_point is None:
            probe = text("SELECT ('/a/b/c' < '/a/b0') AND ('B' < 'a') AND ('/a' < '0')")
            with self._engine.connect() as connection:
                self._paths_by_code_point = bool(connection.execute(probe).scalar())
        if self._paths_by_code_point:
            return FileProvenanceRow.path
        return FileProvenanceRow.path.collate("C")

    def files_near(
        self, fqrn: str, paths: Iterable[str], below: Iterable[str]
    ) -> dict[str, FileProvenance]:
        """Provenance at `paths` and strictly below each directory of `below`, in indexed
        queries (what a batch's plan reads instead of every row: buckets/plan_scope.py)."""
        found = self.files_at(fqrn, paths)
        roots = sorted(set(below))
        path = self._ordered_path()
        with Session(self._engine) as session:
            for start in range(0, len(roots), 100):
                ranges = [
                    # Below `/a`: from `/a/` up to `/a0` ('0' follows '/'), without LIKE.
                    (path > root + "/") & (path < root + "0")
                    for root in roots[start : start + 100]
                ]
                rows = session.scalars(
                    select(FileProvenanceRow).where(FileProvenanceRow.fqrn == fqrn, or_(*ranges))
                )
                found.update((row.path, FileProvenance.model_validate(row)) for row in rows)
        return found

    def count_files(self, fqrn: str) -> int:
        """How many paths of the repository have provenance."""
        query = select(func.count()).where(FileProvenanceRow.fqrn == fqrn)
        with Session(self._engine) as session:
            return int(session.scalar(query) or 0)

    def remove_file(self, fqrn: str, path: str) -> bool:
        with Session(self._engine) as session, session.begin():
            row = session.get(FileProvenanceRow, (fqrn, path))
            if row is None:
                return False
            session.delete(row)
            return True

    def files(self, fqrn: str, prefix: str = "") -> list[FileProvenance]:
        # Columns, not ORM objects: for 100,000 rows 0.7 s instead of 2.2-2.4 s (a reconcile,
        # a batch planned from every row; bench/README.md, sync flow's tasks).
        fields = list(FileProvenance.model_fields)
        query = select(*(getattr(FileProvenanceRow, name) for name in fields)).where(
            FileProvenanceRow.fqrn == fqrn
        )
        if prefix:
            # Prefix match without LIKE, so '%' and '_' in paths are not wildcards.
            path = self._ordered_path()
            query = query.where(path >= prefix, path < prefix + "\U0010ffff")
        with Session(self._engine) as session:
            rows = session.execute(query.order_by(FileProvenanceRow.path))
            return [FileProvenance.model_validate(dict(zip(fields, r, strict=True))) for r in rows]

    # -- sync refusals ---------------------------------------------------------------------

    def refusals(self, fqrn: str) -> list[SyncRefusal]:
        query = (
            select(SyncRefusalRow)
            .where(SyncRefusalRow.fqrn == fqrn)
            .order_by(SyncRefusalRow.s3_key)
        )
        with Session(self._engine) as session:
            return [SyncRefusal.model_validate(r) for r in session.scalars(query)]

    def replace_refusals(self, fqrn: str, refusals: Iterable[SyncRefusal]) -> list[SyncRefusal]:
        """Make `refusals` the repository's current ones; returns those that are new (a key
        not refused before, or now for another reason). A refusal that stays keeps its time."""
        now = self._clock()
        wanted = {r.s3_key: r for r in refusals}
        new: list[SyncRefusal] = []
        try:
            with Session(self._engine) as session, session.begin():
                old = {
                    row.s3_key: row
                    for row in session.scalars(
                        select(SyncRefusalRow).where(SyncRefusalRow.fqrn == fqrn)
                    )
                }
                for key, stale in old.items():
                    if key not in wanted:
                        session.delete(stale)
                for key, refusal in wanted.items():
                    values = refusal.model_dump(exclude={"refused_at", "s3_key"})
                    row = old.get(key)
                    if row is None or row.reason != refusal.reason:
                        new.append(refusal.model_copy(update={"refused_at": now}))
                    if row is None:
                        session.add(SyncRefusalRow(fqrn=fqrn, s3_key=key, refused_at=now, **values))
                    else:
                        if row.reason != refusal.reason:
                            row.refused_at = now
                        for name, value in values.items():
                            setattr(row, name, value)
        except IntegrityError as error:
            raise UnknownRepository(f"no repository {fqrn!r} in the registry") from error
        return new

    # -- key access audit ------------------------------------------------------------------

    def record_key_access(
        self, fqrn: str, subject: str, action: str, allowed: bool, detail: str = ""
    ) -> KeyAccess:
        """Append one audit record (who asked for which repository's keys, and the answer)."""
        with Session(self._engine) as session, session.begin():
            row = KeyAccessRow(
                fqrn=fqrn,
                subject=subject,
                action=action,
                allowed=allowed,
                detail=detail,
                at=self._clock(),
            )
            session.add(row)
            session.flush()
            return KeyAccess.model_validate(row)

    def key_accesses(self, fqrn: str) -> list[KeyAccess]:
        query = select(KeyAccessRow).where(KeyAccessRow.fqrn == fqrn).order_by(KeyAccessRow.id)
        with Session(self._engine) as session:
            return [KeyAccess.model_validate(r) for r in session.scalars(query)]
