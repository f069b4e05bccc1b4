"""What every locally run service of the stack looks like to `stack up | down | status`.

Each component owns one directory under the stack's data directory, records the pids it
started there, and never touches a process it did not start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from service.settings import Settings


@dataclass(frozen=True)
class Health:
    name: str
    healthy: bool
    url: str
    detail: str = ""


class Component(Protocol):
    """One service of the local stack (RabbitMQ, Ceph, OpenBao, registry, Prefect, HTTP)."""

    name: str

    def __init__(self, settings: Settings, base_dir: Path) -> None: ...

    def missing_packages(self) -> list[str]:
        """Debian or Python packages this component needs and that are not installed."""
        ...

    def start(self) -> None:
        """Start the service and wait until it is healthy; a no-op when it already runs."""
        ...

    def stop(self) -> None:
        """Stop exactly the processes this component started (by pid file)."""
        ...

    def health(self) -> Health: ...
