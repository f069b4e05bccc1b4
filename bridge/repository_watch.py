"""The repository watcher: wires buckets created after their repository, resumes provisions
that failed part way or whose run died. A thread of the bridge process; every bridge runs one.

Why in the bridge and not a Prefect schedule: the checks are cheap (a HEAD per waiting bucket),
but a scheduled run every 10 s would fill the Prefect UI with thousands of empty runs a day;
here a run starts only when there is something to do (a `wire-bucket` run when a bucket
appears, a `provision` run to resume), so the UI shows exactly the work done. Several copies
on several hosts are safe: each start is claimed first with a conditional UPDATE in the
registry (one copy wins), and the run's idempotency key makes a race in the same minute one run.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from buckets.ownership import expected_owner, inspect_bucket, judge_bucket
from service.identity import Identity
from service.messages import AuthorizedProvisionRequest
from service.repositories import (
    BucketState,
    ProvisionRetry,
    Repository,
    RepositoryRegistry,
    utc_now,
)
from service.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from bridge.run_requests import FlowStarter

log = logging.getLogger("cvmfs.bridge.watch")

WIRE_DEPLOYMENT = "wire-bucket/wire-bucket"
PROVISION_DEPLOYMENT = "provision/provision"


def resumed_request(repository: Repository, request_id: str) -> AuthorizedProvisionRequest:
    """The provision request rebuilt from the registry: no token needed, since the identity
    was verified when the repository was first requested and the claim recorded it."""
    groups = frozenset({repository.group}) if repository.group else frozenset()
    return AuthorizedProvisionRequest(
        request_id=request_id,
        identity=Identity(
            issuer="registry",
            subject=repository.owner_subject,
            username=repository.owner_username,
            groups=groups,
        ),
        kind=repository.kind,
        group=repository.group,
        fqrn=repository.fqrn,
        bucket=repository.bucket,
        source="resume",
    )


class RepositoryWatcher:
    """`tick()` does one round of checks; `run(stop)` repeats it every watch_interval_s."""

    def __init__(
        self,
        settings: Settings,
        registry: RepositoryRegistry,
        starter: FlowStarter,
        s3: S3Client,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.settings = settings
        self.rules = settings.provisioning
        self.registry = registry
        self.starter = starter
        self.s3 = s3
        self.clock = clock

    def tick(self) -> None:
        for repository, state in self.registry.buckets_to_watch():
            try:
                self._check_bucket(repository, state)
            except Exception as error:  # RGW or Prefect unreachable: the next tick retries
                log.warning("event=bucket-check-failed repo=%s error=%r", repository.fqrn, error)
        stalled_after = dt.timedelta(seconds=self.rules.resume_stalled_after_s)
        for stalled in self.registry.schedule_stalled_provisions(stalled_after):
            log.warning(
                "event=provision-stalled repo=%s request=%s", stalled.fqrn, stalled.request_id
            )
        for repository, retry in self.registry.due_provision_retries(
            self.rules.resume_max_attempts
        ):
            try:
                self._resume(repository, retry)
            except Exception as error:
                log.warning("event=resume-failed repo=%s error=%r", repository.fqrn, error)

    def run(self, stop: threading.Event) -> None:
        log.info("event=watching interval_s=%.1f", self.rules.watch_interval_s)
        while not stop.wait(self.rules.watch_interval_s):
            try:
                self.tick()
            except Exception as error:  # the registry is unreachable: try again next time
                log.warning("event=watch-failed error=%r", error)

    def _check_bucket(self, repository: Repository, state: BucketState) -> None:
        wanted = expected_owner(self.rules, repository.owner_username, repository.owner_subject)
        check = inspect_bucket(self.s3, repository.bucket)
        verdict = judge_bucket(check, repository.bucket, wanted, self.settings.s3_public_url)
        if verdict.state != "wired":  # still waiting, or someone else's: say so, and when
            self.registry.record_bucket_state(
                repository.fqrn, repository.bucket, verdict.state, verdict.message, check.owner_id
            )
            return
        # It exists and is the requester's: wiring is a Prefect run, visible and retried.
        retry_after = dt.timedelta(seconds=self.rules.wire_retry_s)
        if not self.registry.claim_wiring(repository.fqrn, retry_after):
            return  # another copy started it, or a run started less than wire_retry_s ago
        key = f"wire-bucket-{repository.fqrn}-{self.clock():%Y%m%dT%H%M}"
        run_id = self.starter(WIRE_DEPLOYMENT, {"req": {"fqrn": repository.fqrn}}, key)
        log.info(
            "event=wire-started repo=%s bucket=%s run=%s",
            repository.fqrn,
            repository.bucket,
            run_id,
        )

    def _resume(self, repository: Repository, retry: ProvisionRetry) -> None:
        attempt = retry.attempts + 1
        delay_s = min(self.rules.resume_first_delay_s * 2**attempt, self.rules.resume_max_delay_s)
        if not self.registry.claim_provision_retry(retry, dt.timedelta(seconds=delay_s)):
            return  # another copy resumed it
        request = resumed_request(repository, retry.request_id)
        key = f"provision-resume-{repository.fqrn}-{attempt}"
        run_id = self.starter(
            PROVISION_DEPLOYMENT, {"request": request.model_dump(mode="json")}, key
        )
        log.info(
            "event=provision-resumed repo=%s attempt=%d run=%s last_error=%r",
            repository.fqrn,
            attempt,
            run_id,
            repository.last_error,
        )


def run_watcher(settings: Settings, stop: threading.Event) -> None:
    """The watcher thread's body: its own registry connection, S3 client and Prefect starter."""
    from bridge.flow_starter import PrefectFlowStarter  # imports prefect: ~1.5 s
    from buckets.s3_clients import bucket_agent_s3

    registry = RepositoryRegistry.open(settings)
    try:
        starter = PrefectFlowStarter(settings.prefect.api_url, tags=("bridge", "watcher"))
        RepositoryWatcher(settings, registry, starter, bucket_agent_s3(settings)).run(stop)
    finally:
        registry.close()
