"""Flow `gateway-commit`: a stock publisher's commit through the gateway, as one run.

The gateway process runs it when `POST /api/v1/leases/<token>` arrives, so every commit shows
in the Prefect UI with its repository, path, publisher host, key id and hashes, and answers
the waiting publisher as soon as the revision is published (gateway/commit_runner.py); the
change summary and the run's final state follow.

Not a deployment, so the Prefect UI offers no Retry for a failed run, on purpose: the
publisher is waiting for the reply, and a failed commit tells it why and keeps its lease and the
objects it sent, so the publisher's own `cvmfs_server publish` again is the retry. A retry from
the UI would publish outside that lease (expired, cancelled, or already re-published by the
publisher) and through a runner's queue, not the waiting request. A failed run says so in its
artifact (`explain_failed_commit`). Transient faults are retried inside the run (the task's
retries), so a stratum-0 hiccup does not fail the commit.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger

from gateway.announce import announce_published
from service.runtime import load_settings
from tasks.gateway_commit import (
    GatewayCommitRequest,
    commit_failure_reason,
    explain_failed_commit,
    merge_and_publish,
    report_commit,
)
from tasks.locks import repository_lease


@flow(name="gateway-commit", flow_run_name="gateway-commit-{req.repo}")
def gateway_commit(req: GatewayCommitRequest) -> int:
    """Apply the publisher's changes under its leased path to the current revision; publish.

    Not retried from the UI: a failed run is retried by its publisher (`cvmfs_server publish`
    again), and its artifact says so."""
    started = time.perf_counter()
    settings = load_settings()
    # The same lease every writer of the repository takes (bucket sync, rollback, unpack):
    # the merge starts from the current revision and nothing publishes beside it.
    try:
        with repository_lease(req.repo):
            locked = time.perf_counter()
            outcome = merge_and_publish(settings, req)
            announce_published(outcome.revision)
    except Exception as error:  # re-raised: the run fails with it, the publisher is told
        # return_state: a failure to explain never hides `error`
        explain_failed_commit(req, commit_failure_reason(error), return_state=True)
        raise
    merged = time.perf_counter()
    report_commit(req, outcome)
    get_run_logger().info(
        "gateway commit repo=%s path=%s key_id=%s host=%s revision=%d→%d changes=%s "
        "lock_s=%.3f task_s=%.3f",
        req.repo,
        req.path,
        req.key_id,
        req.hostname,
        outcome.old_revision,
        outcome.revision,
        outcome.plan.counts(),
        locked - started,
        merged - locked,
    )
    return outcome.revision
