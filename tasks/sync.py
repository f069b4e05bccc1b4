"""The steps of one sync: look up the repository, read the bucket, plan, publish, record.

The flow holds the repository's publish lock around reading the bucket and publishing, so the
state it publishes is never older than what the bucket had when the lock was taken.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, ParamSpec, TypeVar

from botocore.exceptions import ClientError
from prefect import Task, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from bridge.config import BridgeConfig
from bridge.publisher import EventPublisher
from bridge.s3_events import KEY_PREFIX
from buckets.bucket_rules import Refused
from buckets.bucket_sync import (
    ApplyReport,
    BucketObject,
    ChangeRefused,
    ObjectChanged,
    Plan,
    PlanInputs,
    Put,
    apply_changes,
    head_object,
    head_objects,
    list_objects,
    plan_changes,
    read_what_the_plan_needs,
)
from buckets.ownership import BucketCheck, judge_bucket
from buckets.plan_scope import scope_for
from buckets.s3_clients import bucket_agent_s3
from cvmfs.tarball import TarPolicy
from cvmfs.writer import RepositoryWriter
from metrics.flows import flow_metrics
from service.faults import BadInput, Transient, retry_if_transient
from service.keystore import KeyOwner, KeyStore
from service.repositories import FileProvenance, Repository, RepositoryRegistry, SyncRefusal
from service.settings import Settings
from tasks.storage import repository_storage

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

P = ParamSpec("P")
R = TypeVar("R")
FQRN_PATTERN = r"^[a-z0-9][a-z0-9.-]{0,62}$"


class SyncRequest(BaseModel):
    """One sync run: the keys events named, or a backfill of a prefix (all of `cvmfs/` if
    neither is given). Operators start it from the Prefect UI or `cvmfs-svc sync`."""

    model_config = ConfigDict(extra="forbid")

    repo: Annotated[str, Field(pattern=FQRN_PATTERN, description="repository fqrn")]
    bucket: str | None = Field(default=None, description="defaults to the repository's bucket")
    changed_keys: list[str] = Field(default_factory=list, description="object keys that changed")
    prefix: str | None = Field(default=None, description="backfill every key under cvmfs/<prefix>")
    dry_run: bool = Field(default=False, description="only report the difference")
    event_times: dict[str, AwareDatetime] = Field(
        default_factory=dict,
        description="when S3 reported each changed key (the bridge sets it; for the "
        "upload-to-visible metric only)",
    )


@dataclass
class SyncOutcome:
    fqrn: str
    revision: int | None  # None: nothing published
    plan: Plan
    report: ApplyReport = field(default_factory=ApplyReport)


class RunClients:
    """The bucket agent's S3 client of one flow run, made on first use and then shared by its
    tasks: making a boto3 client costs ~12 ms (botocore builds the S3 endpoint rules for every
    client; py-spy of the sync flow on the 100,000-file repository), three times per run.
    The flow makes one and passes it to its tasks; nothing outlives the run."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._s3: S3Client | None = None

    def bucket_s3(self) -> S3Client:
        if self._s3 is None:
            self._s3 = bucket_agent_s3(self._settings)
        return self._s3


def step(name: str, retries: int = 3) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A sync step: retried only for transient faults (`service.faults`), never cached."""
    return task(
        name=name,
        retries=retries,
        retry_delay_seconds=[2, 10, 30],
        retry_condition_fn=retry_if_transient,
        cache_policy=NO_CACHE,
    )


@step("look up repository", retries=1)
def look_up_repository(settings: Settings, req: SyncRequest) -> Repository:
    registry = RepositoryRegistry.open(settings)
    try:
        repository = registry.require(req.repo)
    finally:
        registry.close()
    if req.bucket is not None and req.bucket != repository.bucket:
        raise BadInput(
            f"repository {req.repo} is fed by bucket {repository.bucket!r}, not {req.bucket!r}"
        )
    return repository


@step("read bucket state")
def read_bucket_state(
    settings: Settings,
    repository: Repository,
    req: SyncRequest,
    clients: RunClients,
) -> dict[str, BucketObject | None]:
    """HEAD each named key, or list the backfill prefix (plus keys the repository has there
    and keys refused there: a listing is the whole truth of its prefix)."""
    s3 = clients.bucket_s3()
    if req.changed_keys:
        return head_objects(s3, repository.bucket, req.changed_keys)
    prefix = KEY_PREFIX + (req.prefix or "").lstrip("/")
    try:
        truth: dict[str, BucketObject | None] = {
            obj.key: obj for obj in list_objects(s3, repository.bucket, prefix)
        }
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "NoSuchBucket":
            raise
        _wait_for_bucket_again(settings, repository)
        raise BadInput(
            f"bucket {repository.bucket} no longer exists; {repository.fqrn} keeps what it "
            "published and connects the bucket again once it is created"
        ) from error
    registry = RepositoryRegistry.open(settings)
    try:
        for record in registry.files(repository.fqrn):
            if record.s3_key.startswith(prefix):
                truth.setdefault(record.s3_key, None)  # published, no longer in the bucket
        for refusal in registry.refusals(repository.fqrn):
            if refusal.s3_key.startswith(prefix):
                truth.setdefault(refusal.s3_key, None)  # refused, no longer in the bucket
    finally:
        registry.close()
    return truth


def _wait_for_bucket_again(settings: Settings, repository: Repository) -> None:
    """A deleted bucket took its notification with it: the repository waits for it again, so
    the bridge's repository watcher wires it when it is created again (flows/provision.py)."""
    verdict = judge_bucket(
        BucketCheck(exists=False), repository.bucket, None, settings.s3_public_url
    )
    registry = RepositoryRegistry.open(settings)
    try:
        registry.record_bucket_state(
            repository.fqrn, repository.bucket, verdict.state, verdict.message
        )
    finally:
        registry.close()


@step("plan changes")
def plan_sync(
    settings: Settings,
    repository: Repository,
    truth: dict[str, BucketObject | None],
    clients: RunClients,
) -> Plan:
    """Decide with what the registry knows of the rest of the bucket (the published keys the
    batch's keys can collide with, and every refused one), so that a batch gets the answer a
    reconcile would give."""
    registry = RepositoryRegistry.open(settings)
    try:
        stored = {
            r.s3_key: Refused(r.s3_key, r.reason, r.other_key, r.kind, r.etag)
            for r in registry.refusals(repository.fqrn)
        }
        # A batch reads only the rows its keys can collide with (O(batch), not O(files)).
        scope = scope_for(truth, stored)
        if scope is None:
            published = {record.path: record for record in registry.files(repository.fqrn)}
            elsewhere = 0
        else:
            published = registry.files_near(repository.fqrn, scope.exact, scope.focus)
            elsewhere = registry.count_files(repository.fqrn) - len(published)
    finally:
        registry.close()
    inputs = PlanInputs(
        fqrn=repository.fqrn,
        truth=dict(truth),
        published=published,
        stored=stored,
        max_object_bytes=settings.sync.max_object_bytes,
        unchanged_elsewhere=elsewhere,
    )
    return read_what_the_plan_needs(clients.bucket_s3(), repository.bucket, plan_changes(inputs))


# Each pass refuses one more key or reads one changed object again; a bucket rewritten faster
# than a transaction is applied is a transient state: the run fails and is retried.
MAX_APPLY_PASSES = 20


@step("publish changes")
def publish_changes(
    settings: Settings, repository: Repository, plan: Plan, clients: RunClients
) -> SyncOutcome:
    owner = KeyOwner.for_repository(repository.kind, repository.owner_subject, repository.group)
    keys = KeyStore.from_settings(settings.vault).read(owner, repository.fqrn)
    writer = RepositoryWriter.open(
        repository_storage(settings, repository.fqrn), repository.fqrn, keys
    )
    s3 = clients.bucket_s3()
    tar_policy = TarPolicy(
        max_file_size=settings.sync.max_object_bytes, skip_special=settings.sync.skip_special
    )
    started = time.monotonic()
    # A change refused while applying spoils the transaction it was applied to: decide the
    # plan again without it (its key may have won a collision) and start a new transaction.
    for _ in range(MAX_APPLY_PASSES):
        with writer.transaction() as txn:
            try:
                report = apply_changes(txn, s3, repository.bucket, plan, tar_policy=tar_policy)
            except ChangeRefused as refusal:
                refused = Refused(refusal.key, refusal.reason, kind="content", etag=refusal.etag)
                plan = read_what_the_plan_needs(s3, repository.bucket, plan.refusing(refused))
                continue
            except ObjectChanged as changed:
                assert plan.inputs is not None
                plan.inputs.truth[changed.key] = head_object(s3, repository.bucket, changed.key)
                plan = read_what_the_plan_needs(s3, repository.bucket, plan_changes(plan.inputs))
                continue
            if not plan.changes:
                return SyncOutcome(fqrn=repository.fqrn, revision=None, plan=plan, report=report)
            result = txn.publish(
                description=f"sync: {len(report.added)} added or replaced, "
                f"{len(report.removed)} removed"
            )
        record_publish(report, time.monotonic() - started)
        return SyncOutcome(fqrn=repository.fqrn, revision=result.revision, plan=plan, report=report)
    raise Transient(
        f"{repository.bucket}: objects kept changing while {repository.fqrn} was published; "
        "the run is retried"
    )


@step("record refusals")
def record_refusals(settings: Settings, repository: Repository, plan: Plan) -> list[Refused]:
    """The repository's current refusals replace the stored ones (what the API shows);
    returns those that are new, for the dead-letter queue."""
    registry = RepositoryRegistry.open(settings)
    try:
        new = registry.replace_refusals(
            repository.fqrn,
            [
                SyncRefusal(
                    s3_key=r.key, reason=r.reason, other_key=r.other_key, kind=r.kind, etag=r.etag
                )
                for r in plan.refused
            ],
        )
    finally:
        registry.close()
    return [Refused(r.s3_key, r.reason, r.other_key, r.kind, r.etag) for r in new]


def record_publish(report: ApplyReport, duration_s: float) -> None:
    metrics = flow_metrics()
    metrics.publish_duration.labels("sync").observe(duration_s)
    metrics.publish_bytes.labels("sync").observe(sum(put.obj.size for put in report.added))
    metrics.publish_changes.labels("sync").observe(len(report.added) + len(report.removed))


@step("dead-letter refused uploads", retries=2)
def dead_letter_refusals(
    settings: Settings, repository: Repository, refusals: list[Refused]
) -> None:
    """What the bridge could not judge from the event (a tarball's content, a collision with
    other keys) is parked in the dead-letter queue with its reason, like the bridge's own
    refusals; only refusals that are new, so a reconcile does not park them again."""
    publisher = EventPublisher(settings.rabbitmq, BridgeConfig())
    try:
        for refused in refusals:
            body = RefusedUpload(
                repo=repository.fqrn,
                bucket=repository.bucket,
                key=refused.key,
                reason=refused.reason,
                other_key=refused.other_key,
            )
            publisher.dead_letter(
                f"sync.refused.{repository.fqrn}",
                body.model_dump_json().encode(),
                # AMQP short strings hold 255 bytes; keys hold up to 1024: name it by hash.
                message_id=f"refused-{repository.fqrn}-{key_digest(refused.key)}",
                reason=refused.reason,
            )
            flow_metrics().refused_uploads.inc()
    finally:
        publisher.close()


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]


class RefusedUpload(BaseModel):
    """The dead-letter message of an upload the sync refused."""

    repo: str
    bucket: str
    key: str
    reason: str
    other_key: str | None = None  # the key it collides with, for a refused pair


@step("record provenance")
def record_provenance(settings: Settings, outcome: SyncOutcome) -> None:
    assert outcome.revision is not None
    registry = RepositoryRegistry.open(settings)
    try:
        registry.record_sync(
            outcome.fqrn,
            published=[
                FileProvenance(
                    path=put.path,
                    s3_key=put.key,
                    etag=put.obj.etag,
                    version_id=put.obj.version_id,
                    size_bytes=put.obj.size,
                    revision=outcome.revision,
                )
                for put in outcome.report.added
            ],
            removed=[remove.path for remove in outcome.report.removed],
        )
        registry.record_publish(outcome.fqrn, outcome.revision)
    finally:
        registry.close()


@step("report changes", retries=1)
def report_changes(outcome: SyncOutcome, dry_run: bool) -> None:
    rows: list[dict[str, object]] = []
    for change in outcome.plan.changes:
        size = change.obj.size if isinstance(change, Put) else None
        action = ("unpack" if change.tarball else "add") if isinstance(change, Put) else "remove"
        rows.append({"action": action, "path": change.path, "key": change.key, "size": size})
    for refused in outcome.plan.refused:
        reason = refused.reason
        if refused.other_key is not None:
            reason = f"{reason} [with {refused.other_key!r}]"
        rows.append({"action": "refused", "path": "", "key": refused.key, "size": reason})
    rows += tarball_notes(outcome.report)
    create_table_artifact(
        key=f"sync-{outcome.fqrn.replace('.', '-')}",
        table=rows or [{"action": "none", "path": "", "key": "", "size": None}],
        description=change_summary(outcome.fqrn, outcome.plan, outcome.revision, dry_run),
    )


def change_summary(fqrn: str, plan: Plan, revision: int | None, dry_run: bool) -> str:
    """The artifact's one line, counts included: a dry run that read only '4 unchanged' hid
    the file it would add (seen on `./svc reconcile --dry-run`)."""
    puts = sum(1 for change in plan.changes if isinstance(change, Put))
    removes = len(plan.changes) - puts
    counts = f"{len(plan.refused)} refused, {plan.unchanged} unchanged"
    if dry_run:
        return f"{fqrn}: dry run, would add {puts} and remove {removes}; {counts}"
    published = f"revision {revision}" if revision else "nothing to publish"
    return f"{fqrn}: {published}; added {puts}, removed {removes}; {counts}"


def tarball_notes(report: ApplyReport) -> list[dict[str, object]]:
    """Artifact rows for what a published tarball's import left out or changed: special files
    skipped by `sync.skip_special`, files whose setuid/setgid bits were stripped."""
    rows: list[dict[str, object]] = []
    for key, stats in report.tarball_stats.items():
        for path in stats.skipped_special:
            rows.append({"action": "skipped special file", "path": path, "key": key, "size": None})
        for path in stats.stripped_modes:
            rows.append(
                {"action": "setuid/setgid stripped", "path": path, "key": key, "size": None}
            )
    return rows
