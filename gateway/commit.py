"""One commit as a plain function: check the hashes, plan the merge, apply it, publish.

The caller holds the repository's publish lock (tasks/locks.py), so the current revision the
transaction starts from cannot move under it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from cvmfs.errors import CvmfsError, FormatError
from cvmfs.keys import KeySet
from cvmfs.objects import ContentHash, ObjectSuffix
from cvmfs.reader import RepositoryReader
from cvmfs.storage import Storage
from cvmfs.writer import RepositoryWriter
from gateway.errors import GatewayError
from gateway.merge import MergePlan, apply_plan, check_objects_present, plan_merge
from gateway.paths import LeasePath
from service.faults import is_transient

log = logging.getLogger("cvmfs.gateway")


@dataclass(frozen=True)
class CommitOutcome:
    revision: int
    old_revision: int
    root_hash: str
    plan: MergePlan


def _content_hash(text: str, what: str) -> ContentHash:
    """A root catalog's hash as the publisher sends it: shash::Any::ToString(true), i.e. with
    the catalog suffix `C` (swissknife_sync.cc; the stock receiver parses it suffixed). The bare
    form is taken too."""
    bare = text.removesuffix(ObjectSuffix.CATALOG)
    try:
        return ContentHash.from_hex(bare)
    except FormatError:
        raise GatewayError(f"commit refused: {what} {text[:80]!r} is not a root hash") from None


def commit_merge(
    storage: Storage,
    keys: KeySet,
    lease_path: LeasePath,
    *,
    old_root_hash: str,
    new_root_hash: str,
    lease_base_root_hash: str,
    tag_name: str = "",
    tag_description: str = "",
) -> CommitOutcome:
    """Publish what changed from `old_root_hash` to `new_root_hash` under `lease_path` on top
    of the repository's current revision; refusals raise `GatewayError` and publish nothing."""
    started = time.perf_counter()
    old_hash = _content_hash(old_root_hash, "old_root_hash")
    new_hash = _content_hash(new_root_hash, "new_root_hash")
    writer = RepositoryWriter.open(storage, lease_path.fqrn, keys)
    current = writer.current_manifest()
    if old_hash.hex not in (lease_base_root_hash, current.root_catalog_hash.hex):
        raise GatewayError(
            f"commit refused: old root hash {old_hash.hex} is not the revision the lease was "
            f"taken on ({lease_base_root_hash}): abort and publish again"
        )
    reader = RepositoryReader(storage, lease_path.fqrn, [], verify_signatures=False)
    try:
        try:
            old_view = reader.at_root_hash(old_hash)
            new_view = reader.at_root_hash(new_hash)
        except CvmfsError as error:
            if is_transient(error):
                raise  # stratum-0 could not be read: retried, then reported as a failure
            raise GatewayError(
                f"commit refused: a catalog of the publisher's revision cannot be read ({error}): "
                "its payload never arrived; publish again"
            ) from error
        plan = plan_merge(old_view, new_view, lease_path)
        check_objects_present(plan, storage)
        with writer.transaction() as txn:
            apply_plan(txn, plan)
            try:
                result = txn.publish(
                    tag=tag_name or None,
                    description=tag_description or f"gateway commit of {lease_path}",
                )
            except CvmfsError as error:
                # A conflict (another writer won) or a stratum-0 fault is transient: the task
                # retries, and if it keeps failing the publisher is told to publish again.
                # Anything else (a bad tag name, an expired whitelist) is a refusal.
                if is_transient(error):
                    raise
                raise GatewayError(f"commit refused: {error}") from error
    finally:
        reader.close()
    log.info(
        "event=gateway_commit repo=%s path=%s revision=%d changes=%s merge_s=%.3f",
        lease_path.fqrn,
        lease_path.path,
        result.revision,
        plan.counts(),
        time.perf_counter() - started,
    )
    return CommitOutcome(
        revision=result.revision,
        old_revision=current.revision,
        root_hash=result.root_hash.hex,
        plan=plan,
    )
