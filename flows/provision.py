"""Flow `provision`: an authorized repository request becomes a ready, mountable repository.

The bridge (or the user API) has already verified the requester's token; this flow receives
the established identity and derived names only, so no token is ever stored in Prefect.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from service.messages import AuthorizedProvisionRequest, ProvisionReply
from service.repositories import ClaimRefused
from service.runtime import load_settings
from tasks.locks import ensure_publish_lock
from tasks.provision import (
    claim_repository,
    create_stratum0,
    grant_publisher_access,
    mark_failed,
    mark_ready,
    publish_client_config,
    send_reply,
    store_keys,
    wire_repository_bucket,
)


@flow(name="provision", flow_run_name="provision-{request.fqrn}")
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
        wire_repository_bucket(settings, request)
        ensure_publish_lock(request.fqrn)
        bundle = publish_client_config(settings, request, public_key)
        mark_ready(settings, request, revision)
    except Exception as error:
        reason = f"{type(error).__name__}: {error}"
        logger.error("provision failed repo=%s reason=%s", request.fqrn, reason)
        mark_failed(settings, request, reason)
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
    logger.info("provisioned repo=%s revision=%d", request.fqrn, revision)
    return reply
