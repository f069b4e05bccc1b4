"""A bench's own stack on a test stack's ports: the lock of that offset, a temporary data
directory, the components started, their state removed after.

Two steps, so a bench can change the settings or the data directory before anything starts:

    with private_data_dir(offset, "bench-x") as (settings, data_dir):
        settings = settings.model_copy(update=...)        # optional
        with running(settings, ("openbao", "prefect")) as settings:
            ...
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from service.settings import Settings
from stack.locks import exclusive, lock_path_for_test_stack
from stack.manager import Stack
from stack.openbao import root_token


@contextmanager
def private_data_dir(offset: int, name: str) -> Iterator[tuple[Settings, Path]]:
    """Hold the test stack lock of `offset` (no test stack runs there meanwhile) and yield
    settings on its ports (OpenBao in dev mode, Prefect on its own SQLite) in a new temporary
    data directory, which is removed on exit."""
    with exclusive(lock_path_for_test_stack(offset), wait_s=900, what="The test stack"):
        data_dir = Path(tempfile.mkdtemp(prefix=f"cvmfs-svc-test-{name}-"))
        data_dir.chmod(0o755)  # RabbitMQ runs as its own user and must enter it
        try:
            base = Settings.load().with_port_offset(offset, data_dir)
            yield (
                base.model_copy(
                    update={
                        "vault": base.vault.model_copy(update={"mode": "dev", "token": None}),
                        "prefect": base.prefect.model_copy(update={"database_url": None}),
                    }
                ),
                data_dir,
            )
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def running(settings: Settings, components: Iterable[str] | None = None) -> Iterator[Settings]:
    """Start `components` (all when None) and stop them on exit; the settings yielded carry
    OpenBao's root token when OpenBao is among them."""
    chosen = None if components is None else tuple(components)
    stack = Stack(settings)
    try:
        stack.up(chosen)
        if chosen is None or "openbao" in chosen:
            vault = settings.vault.model_copy(update={"token": root_token(settings)})
            settings = settings.model_copy(update={"vault": vault})
        yield settings
    finally:
        stack.down(chosen)
