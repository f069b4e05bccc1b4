"""Flow `provision`: an authorized repository request becomes a ready, mountable repository.

The bridge (or the user API) has already verified the requester's token; this flow receives
the established identity and derived names only, so no token is ever stored in Prefect.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from flows.failure_hint import explain_failure, explain_resumed_failure
from flows.sync import sync
from service.faults import kind_of
from service.messages import AuthorizedProvisionRequest, ProvisionReply
from service.repositories import BucketState, ClaimRefused
from service.runtime import load_settings
from service.settings import Settings
from tasks.locks import ensure_publish_lock
from tasks.provision import (
    bucket_holds_objects,
    claim_repository,
    connect_bucket,
    create_stratum0,
    grant_publisher_access,
    mark_failed,
    mark_ready,
    publish_client_config,
    send_reply,
    store_keys,
)
from tasks.sync import SyncRequest


@flow(
    name="provision",
    flow_run_name="provision-{request.fqrn}",
    on_failure=[explain_resumed_failure],
)
def provision(request: AuthorizedProvisionRequest) -> ProvisionReply:
    settings = load_settings()
    logger = get_run_logger()
    try:
        claim_repository(settings, request)
    except ClaimRefused as refusal:
        reply = ProvisionReply(
            request_id=request.request_id, status="refused", fqrn=request.fqrn, reason=str(refusal)
        )
        send_reply(settings, reply)
        return reply
    try:
        public_key = store_keys(settings, request)
        revision = create_stratum0(settings, request)
        grant_publisher_access(settings, request)
        ensure_publish_lock(request.fqrn)  # before wiring: the first event's sync takes it
        bucket = connect_bucket(settings, request.fqrn)  # or waits for it: not a failure
        bundle = publish_client_config(settings, request, public_key)
        mark_ready(settings, request, revision)
    except Exception as error:
        # Bad input fails the same way every time; anything else (an outage that outlasted
        # the step's retries, a defect fixed meanwhile) is resumed, every step being idempotent.
        resumable = kind_of(error) != "bad-input"
        reason = f"{type(error).__name__}: {error}"
        if resumable:
            reason += " (the service resumes provisioning from this step on its own)"
        logger.error("provision failed repo=%s reason=%s", request.fqrn, reason)
        mark_failed(settings, request, reason, resumable)
        send_reply(
            settings,
            ProvisionReply(
                request_id=request.request_id, status="failed", fqrn=request.fqrn, reason=reason
            ),
        )
        raise
    reply = ProvisionReply(
        request_id=request.request_id,
        status="ok",
        fqrn=request.fqrn,
        client_config=f"/repositories/{request.fqrn}/client-config ({bundle.server_url})",
    )
    send_reply(settings, reply)
    logger.info("provisioned repo=%s revision=%d bucket=%s", request.fqrn, revision, bucket.state)
    publish_what_the_bucket_holds(settings, request.fqrn, bucket)
    return reply


class WireBucketRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fqrn: str = Field(description="a ready repository whose bucket is not wired yet")


@flow(name="wire-bucket", flow_run_name="wire-bucket-{req.fqrn}", on_failure=[explain_failure])
def wire_waiting_bucket(req: WireBucketRequest) -> BucketState:
    """Connect a repository's bucket that appeared after provisioning (started by the
    bridge's repository watcher, or by hand from the UI); safe to repeat."""
    settings = load_settings()
    state = connect_bucket(settings, req.fqrn)
    get_run_logger().info("wire-bucket repo=%s state=%s", req.fqrn, state.state)
    publish_what_the_bucket_holds(settings, req.fqrn, state)
    return state


def publish_what_the_bucket_holds(settings: Settings, fqrn: str, bucket: BucketState) -> None:
    """A backfill `sync` of a just-wired bucket that already holds objects: those put before
    its notification existed made no event (seen by hand: a user who created the bucket and
    uploaded at once waited for the 30-minute reconcile). An empty bucket costs one listing.
    A failed backfill fails nothing here: the scheduled reconcile repairs it."""
    if bucket.state != "wired" or not bucket_holds_objects(settings, fqrn):
        return
    state = sync(SyncRequest(repo=fqrn), return_state=True)
    if not state.is_completed():
        get_run_logger().warning(
            "backfill of the new bucket failed repo=%s state=%s; the scheduled reconcile "
            "publishes what it holds",
            fqrn,
            state.name,
        )
