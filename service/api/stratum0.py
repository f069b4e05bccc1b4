"""Where a repository's content and keys live, for the API's reader and the rollback flow.

Storage is decided by `tasks.storage` (shared with the publishing flows); keys by their owner.
"""

from __future__ import annotations

import tasks.storage
from cvmfs.storage import Storage
from cvmfs.writer import RepositoryWriter
from service.keystore import KeyOwner, KeyStore
from service.repositories import Repository
from service.settings import Settings


def key_owner(repository: Repository) -> KeyOwner:
    """Whose Vault path holds the keys: the group's for a group repository, else the owner's."""
    return KeyOwner.for_repository(repository.kind, repository.owner_subject, repository.group)


def repository_storage(settings: Settings, fqrn: str) -> Storage:
    """The storage of `fqrn`, as the publishing flows see it (tasks.storage decides)."""
    return tasks.storage.repository_storage(settings, fqrn)


def open_writer(settings: Settings, repository: Repository) -> RepositoryWriter:
    """The writer of `repository`: its stratum-0 storage with its keys from Vault."""
    keys = KeyStore.from_settings(settings.vault).read(key_owner(repository), repository.fqrn)
    return RepositoryWriter.open(
        repository_storage(settings, repository.fqrn), repository.fqrn, keys
    )
