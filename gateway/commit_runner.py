"""Runs `gateway-commit` flows and answers the publisher as soon as the revision is published.

A commit is a whole Prefect run, but the publisher waits only for the publish: the run's
bookkeeping after it (the publish lock's release, the change-summary artifact, the final state,
and the flow engine's heartbeat thread, which checks its stop flag once a second and so held
every reply ~0.5 s; bench/README.md, gateway) goes on in the run's thread after the reply.
The run reaches the waiting handler through gateway/announce.py.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from prefect.client.schemas.objects import State

from flows.gateway_commit import gateway_commit
from gateway.announce import listen_for_publish
from tasks.gateway_commit import GatewayCommitRequest

# Commits of different repositories run in parallel (one repository's wait on its publish
# lock); as many as the HTTP server's own thread pool admits (anyio's default is 40).
MAX_PARALLEL_COMMITS = 40


class CommitFailed(Exception):
    """The run ended without publishing; `state` is its final Prefect state."""

    def __init__(self, state: State[int]) -> None:
        super().__init__(state.message or state.name)
        self.state = state


class CommitRunner:
    """One thread per running commit; `close()` lets the runs in progress finish."""

    def __init__(self, max_parallel: int = MAX_PARALLEL_COMMITS) -> None:
        self._pool = ThreadPoolExecutor(max_parallel, thread_name_prefix="gateway-commit")

    def commit(self, req: GatewayCommitRequest) -> int:
        """The published revision, as soon as it is published; `CommitFailed` if the run
        ended without publishing (nothing was published then)."""
        published: Future[int] = Future()
        context = contextvars.copy_context()  # Prefect's settings context, as the caller's

        def run() -> State[int]:
            listen_for_publish(published)
            return gateway_commit(req, return_state=True)

        finished = self._pool.submit(context.run, run)
        pending: list[Future[Any]] = [published, finished]
        wait(pending, return_when=FIRST_COMPLETED)
        if published.done():
            return published.result()
        state = finished.result()
        if published.done():  # published in the last instant before the run ended
            return published.result()
        if state.is_completed():
            return int(state.result())
        raise CommitFailed(state)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
