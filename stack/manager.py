"""The local stack as a whole: its components in start order, and up, down, status, install.

Each component gets `<data_dir>/<name>/` as its own directory; down runs in reverse order.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from service.settings import Settings
from stack import locks, packages, procs
from stack.ceph import Ceph
from stack.component import Component, Health
from stack.errors import StackError
from stack.idp import IdentityProvider
from stack.openbao import OpenBao
from stack.postgres import Postgres
from stack.prefect_server import PrefectServer
from stack.rabbitmq import RabbitMQ
from stack.registry import Registry
from stack.stratum0_http import Stratum0Http

# A cold start of the whole stack takes about a minute on a busy 2-core machine.
LOCK_WAIT_S = 600.0


def component_classes() -> list[type[Component]]:
    """Every component class the stack always runs, in start order."""
    return [RabbitMQ, Ceph, OpenBao, Registry, PrefectServer, Stratum0Http, IdentityProvider]


def stack_component_classes(settings: Settings) -> list[type[Component]]:
    """The stack's components for these settings, in start order.

    PostgreSQL comes first (Prefect's server needs it) when postgres.enabled, and also when
    one started earlier still has its pid file, so that `down` stops it after the setting
    changed.
    """
    postgres_pid_file = settings.absolute_data_dir / Postgres.name / f"{Postgres.name}.pid"
    if settings.postgres.enabled or postgres_pid_file.exists():
        return [Postgres, *component_classes()]
    return component_classes()


class Stack:
    """The components of one stack (one data directory, one set of ports)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        base = settings.absolute_data_dir
        self.components: list[Component] = [
            cls(settings, base / cls.name) for cls in stack_component_classes(settings)
        ]

    @property
    def names(self) -> list[str]:
        return [component.name for component in self.components]

    def select(self, names: Iterable[str] | None = None) -> list[Component]:
        """The named components in start order (all of them when `names` is None)."""
        if names is None:
            return list(self.components)
        wanted = set(names)
        unknown = wanted - set(self.names)
        if unknown:
            raise StackError(
                f"Unknown component(s) {', '.join(sorted(unknown))}; "
                f"the stack has {', '.join(self.names)}."
            )
        return [c for c in self.components if c.name in wanted]

    def up(
        self,
        names: Iterable[str] | None = None,
        progress: Callable[[str, float], None] | None = None,
    ) -> list[Health]:
        """Start the components (already running ones are left alone); their health after.

        `progress(name, seconds)` is called after each component is up.
        """
        chosen = self.select(names)
        with self._exclusive():
            for component in chosen:
                began = time.monotonic()
                component.start()
                if progress is not None:
                    progress(component.name, time.monotonic() - began)
        return self.status(names)

    def down(self, names: Iterable[str] | None = None) -> None:
        """Stop the components in reverse start order; each stops only what it recorded."""
        chosen = self.select(names)
        with self._exclusive():
            for component in reversed(chosen):
                component.stop()

    def _exclusive(self) -> contextlib.AbstractContextManager[None]:
        """One `up` or `down` at a time per data directory (two terminals, one checkout)."""
        data_dir = self.settings.absolute_data_dir
        return locks.exclusive(
            data_dir / ".stack.lock", wait_s=LOCK_WAIT_S, what=f"`stack up/down` on {data_dir}"
        )

    def status(self, names: Iterable[str] | None = None) -> list[Health]:
        return [component.health() for component in self.select(names)]

    def missing_packages(self, for_tests: bool = False) -> list[str]:
        """What the components need and lack; `for_tests` adds the test suite's packages."""
        missing: list[str] = []
        for component in self.components:
            missing += [p for p in component.missing_packages() if p not in missing]
        if for_tests:
            missing += packages.missing_debian(packages.TEST_PACKAGES)
        return missing

    def install(
        self, for_tests: bool = False, notify: Callable[[str], None] | None = None
    ) -> list[str]:
        """Install the packages the components (and, `for_tests`, the tests) miss; returns
        what was installed. `notify` hears about waits (another package manager holding the
        dpkg lock)."""
        missing = self.missing_packages(for_tests)
        if not missing:
            return []
        return packages.install(missing, notify) if notify else packages.install(missing)

    def component_dir(self, component: Component) -> Path:
        return self.settings.absolute_data_dir / component.name

    def recorded_pids(self, component: Component) -> list[int]:
        """Live pids in the pid files under the component's directory, with descendants."""
        found: list[int] = []
        for pid_file in sorted(self.component_dir(component).rglob("*.pid")):
            pid = procs.read_pid(pid_file)
            if pid is not None and procs.is_alive(pid) and pid not in found:
                found.append(pid)
        for pid in list(found):
            found += [child for child in procs.descendants(pid) if child not in found]
        return found

    def rss_bytes(self, component: Component) -> int:
        return sum(procs.rss_bytes(pid) for pid in self.recorded_pids(component))
