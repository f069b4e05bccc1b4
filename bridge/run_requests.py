"""What the bridge asks Prefect for: the `FlowStarter` seam and the parameters of each run.

The default parameter shapes are the flows' request models as JSON; replace a builder when a
flow's signature changes, not the consumer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, Protocol

from bridge.coalescer import InboundMessage, SyncBatch
from bridge.errors import RejectedMessage
from bridge.registry_events import ImageDeleted, ImagePushed

Parameters = dict[str, Any]


class FlowStarter(Protocol):
    def __call__(self, deployment: str, parameters: Parameters, idempotency_key: str) -> str:
        """Create a flow run (or return the one with this key) and return its id.

        Raises PermanentStartError when the run can never be created, TransientStartError
        (or any other exception) when it may work later.
        """
        ...


def sync_parameters(batch: SyncBatch) -> Parameters:
    """`sync(req: SyncRequest)` of tasks/sync.py: the flow reads each key's current state.

    `event_times` (the earliest S3 event time of each key) lets the run measure upload to
    visible; the idempotency key does not depend on it.
    """
    return {
        "req": {
            "repo": batch.target.fqrn,
            "bucket": batch.target.bucket,
            "changed_keys": batch.keys,
            "event_times": {
                key: moment.isoformat() for key, moment in batch.earliest_event_times.items()
            },
        }
    }


def reconcile_parameters(repo: str | None = None, *, dry_run: bool = False) -> Parameters:
    """`reconcile(req: ReconcileRequest)` of flows/sync.py; every ready repository if no repo."""
    return {"req": {"repo": repo, "dry_run": dry_run}}


def backfill_parameters(repo: str, prefix: str, *, dry_run: bool = False) -> Parameters:
    """`sync(req: SyncRequest)` of every key under `cvmfs/<prefix>` (an operator's backfill);
    the flow reads the repository's bucket from the registry."""
    return {"req": {"repo": repo, "prefix": prefix, "dry_run": dry_run}}


def unpack_parameters(event: ImagePushed | ImageDeleted) -> Parameters:
    """`unpack(req: UnpackRequest)` of tasks/unpack.py, which accepts the event's fields."""
    return {"req": event.model_dump(mode="json")}


def repository_request_parameters(message: InboundMessage) -> Parameters:
    """The request goes to the provision flow as is: the flow validates and authorizes it.

    JSON objects become `{"req": <object>}`; anything else (the legacy CSV line) is passed as
    `{"raw": <text>}` for the flow to map.
    """
    try:
        text = message.body.decode()
    except UnicodeDecodeError as error:
        raise RejectedMessage(f"repository request is not UTF-8: {error}") from error
    if not text.strip():
        raise RejectedMessage("repository request is empty")
    if text.lstrip().startswith("{"):
        try:
            document = json.loads(text)
        except ValueError as error:
            raise RejectedMessage(f"repository request is not valid JSON: {error}") from error
        if not isinstance(document, dict):
            raise RejectedMessage("repository request is not a JSON object")
        return {"req": document}
    return {"raw": text.strip()}


def message_idempotency_key(prefix: str, message: InboundMessage) -> str:
    """The producer's message id when it set one, else a hash of the body."""
    if message.message_id:
        return f"{prefix}-{message.message_id}"
    return f"{prefix}-{hashlib.sha256(message.body).hexdigest()[:32]}"


SyncParameters = Callable[[SyncBatch], Parameters]
UnpackParameters = Callable[[ImagePushed | ImageDeleted], Parameters]
RequestParameters = Callable[[InboundMessage], Parameters]
