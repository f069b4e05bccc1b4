"""Where a repository's content and keys live, for the API's reader and the rollback flow.

`repository_storage` is the one function to swap for `tasks.storage` once that lands.
"""

from __future__ import annotations

from cvmfs.storage import LocalStorage, S3Storage, Storage
from service.keystore import KeyOwner
from service.repositories import Repository
from service.settings import Settings


def key_owner(repository: Repository) -> KeyOwner:
    """Whose Vault path holds the keys: the group's for a group repository, else the owner's."""
    if repository.kind == "group":
        assert repository.group is not None
        return KeyOwner.of_group(repository.group)
    return KeyOwner.personal(repository.owner_subject)


def repository_storage(settings: Settings, fqrn: str) -> Storage:
    """The storage of `fqrn`: `<data_dir>/stratum0/<fqrn>`, or `<bucket>/<fqrn>/` on S3."""
    if settings.stratum0.backend == "s3":
        import boto3  # only the S3 backend needs it (slow import)

        ceph = settings.ceph
        client = boto3.client(
            "s3",
            endpoint_url=ceph.s3_endpoint,
            aws_access_key_id=ceph.service_access_key,
            aws_secret_access_key=ceph.service_secret_key.get_secret_value(),
            region_name=ceph.region,
        )
        return S3Storage(client, settings.stratum0.bucket, prefix=fqrn)
    return LocalStorage(settings.absolute_data_dir / "stratum0" / fqrn)
