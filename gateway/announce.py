"""How a `gateway-commit` run tells the gateway's waiting handler that it has published.

The handler (gateway/commit_runner.py) puts a future in a context variable that the run's
thread inherits; the flow calls `announce_published` right after the publish. Neither a flow
parameter (the UI shows those) nor state shared between runs; outside the gateway (a run
started elsewhere) there is no future and the call does nothing.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import Future

_published: contextvars.ContextVar[Future[int] | None] = contextvars.ContextVar(
    "gateway_commit_published", default=None
)


def listen_for_publish(published: Future[int]) -> None:
    """In the run's thread, before the flow starts: `published` gets the revision."""
    _published.set(published)


def announce_published(revision: int) -> None:
    """Called by the flow once the new revision is on stratum-0: its caller may reply now."""
    published = _published.get()
    if published is not None and not published.done():
        published.set_result(revision)
