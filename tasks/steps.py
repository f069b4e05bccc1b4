"""The one retry policy of the service's steps: backoff on transient faults only, never cached.

Bad input is refused once (service.faults decides the kind); a cached result would skip the
state check each idempotent step makes, so every run does the work or finds it done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from service.faults import retry_if_transient

P = ParamSpec("P")
R = TypeVar("R")
RETRY_DELAYS_S: list[float] = [2, 10, 30]


def step(name: str) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A named, retried step (the name is what operators see in the Prefect UI)."""
    return task(
        name=name,
        retries=len(RETRY_DELAYS_S),
        retry_delay_seconds=RETRY_DELAYS_S,
        retry_condition_fn=retry_if_transient,
        cache_policy=NO_CACHE,
    )
