"""Unpack one resolved image into an unpacked repository, delete a tag, collect garbage.

Plain functions over a `RepositoryWriter` (each call is at most one publish); callers hold the
repository's publish lock. Nothing here knows about Prefect.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel

from cvmfs.errors import NotFoundError
from cvmfs.reader import RepositoryReader
from cvmfs.transaction import Transaction
from cvmfs.writer import RepositoryWriter
from images.apptainer import add_apptainer_files
from images.layers import LayerApplier, LayerPolicy, check_layer_descriptor
from images.layout import (
    CATALOG_MARKER,
    FLAT_DIR,
    GC_SCHEDULE,
    METADATA_DIR,
    ducc_manifest_json,
    flat_dir,
    flat_of_link_target,
    gc_schedule_json,
    link_target,
    metadata_dir,
    metadata_manifest,
    parse_gc_schedule,
    public_link,
)
from images.registry import RegistryClient, ResolvedImage

Clock = Callable[[], float]


class UnpackOutcome(BaseModel):
    """What `unpack_image` did: `unpacked` (new flat tree), `relinked` (only the link and
    metadata changed), `unchanged` (nothing published)."""

    image: str
    action: Literal["unpacked", "relinked", "unchanged"]
    config_digest: str
    manifest_digest: str
    platform: str | None
    flat_dir: str
    link: str
    revision: int
    layers: int = 0
    files: int = 0
    bytes: int = 0
    whiteouts: int = 0
    opaque_dirs: int = 0
    special_files: int = 0
    # Paths below the flat tree left out by policy (devices, FIFOs) or published without their
    # setuid/setgid bits: the run's artifact lists them.
    skipped_special: list[str] = []
    stripped_modes: list[str] = []


class TagDeleteOutcome(BaseModel):
    link: str
    deleted: bool
    revision: int
    scheduled_for_gc: list[str] = []


class GcOutcome(BaseModel):
    removed: list[str]
    scheduled: dict[str, int]
    revision: int


def state_reader(writer: RepositoryWriter) -> RepositoryReader:
    """The current revision of the repository this writer publishes (its own storage, so the
    signature chain is not re-verified)."""
    return RepositoryReader(writer.storage, writer.fqrn, [], verify_signatures=False)


def _read_optional(reader: RepositoryReader, path: str) -> bytes | None:
    try:
        return reader.read(path)
    except NotFoundError:
        return None


def _readlink_optional(reader: RepositoryReader, path: str) -> str | None:
    try:
        entry = reader.stat(path)
    except NotFoundError:
        return None
    return entry.symlink if entry.is_symlink else None


def public_links(reader: RepositoryReader) -> dict[str, str | None]:
    """Every public link the metadata records -> the flat dir it points at (None: dangling)."""
    links: dict[str, str | None] = {}
    if not reader.exists(METADATA_DIR):
        return links
    pending = [METADATA_DIR]
    while pending:
        directory = pending.pop()
        entries = reader.listdir(directory)
        if any(e.name == "manifest.json" and e.is_regular for e in entries):
            link = directory[len(METADATA_DIR) :]
            target = _readlink_optional(reader, link)
            links[link] = flat_of_link_target(link, target) if target else None
        pending.extend(e.path for e in entries if e.is_dir)
    return links


def flat_dirs(reader: RepositoryReader) -> list[str]:
    if not reader.exists(FLAT_DIR):
        return []
    found: list[str] = []
    for bucket in reader.listdir(FLAT_DIR):
        if bucket.is_dir:
            found.extend(e.path for e in reader.listdir(bucket.path) if e.is_dir)
    return sorted(found)


def _schedule_orphans(
    txn: Transaction,
    reader: RepositoryReader,
    links_after: dict[str, str | None],
    candidates: list[str],
    now: int,
) -> list[str]:
    """Record in the GC schedule the candidates no link points at any more; returns them."""
    referenced = {flat for flat in links_after.values() if flat}
    schedule = parse_gc_schedule(_read_optional(reader, GC_SCHEDULE))
    before = dict(schedule)
    orphans = [c for c in candidates if c not in referenced]
    for orphan in orphans:
        schedule.setdefault(orphan, now)
    for flat in referenced:
        schedule.pop(flat, None)
    if schedule != before:
        txn.add_file(GC_SCHEDULE, gc_schedule_json(schedule), mode=0o644, mtime=now)
    return orphans


def unpack_image(
    writer: RepositoryWriter,
    client: RegistryClient,
    image: ResolvedImage,
    *,
    policy: LayerPolicy | None = None,
    clock: Clock = time.time,
) -> UnpackOutcome:
    """Make `/<registry>/<repository>:<tag>` point at the image's flat tree, unpacking it if
    no tag unpacked it before; publishes once, or not at all if everything is in place."""
    manifest = image.manifest
    link = public_link(image.registry, image.repository, image.tag, image.reference_digest)
    flat = flat_dir(manifest.config.digest)
    target = link_target(link, flat)
    meta_path = metadata_manifest(
        image.registry, image.repository, image.tag, image.reference_digest
    )
    meta = ducc_manifest_json(manifest)
    outcome = UnpackOutcome(
        image=f"{image.registry}/{image.repository}:{image.tag or image.reference_digest}",
        action="unchanged",
        config_digest=manifest.config.digest,
        manifest_digest=manifest.digest,
        platform=image.platform,
        flat_dir=flat,
        link=link,
        revision=0,
    )
    with state_reader(writer) as reader:
        flat_exists = reader.exists(flat)
        old_target = _readlink_optional(reader, link)
        if flat_exists and old_target == target and _read_optional(reader, meta_path) == meta:
            return outcome.model_copy(update={"revision": reader.revision})
        links = public_links(reader)
        now = int(clock())
        with writer.transaction() as txn:
            if not flat_exists:
                outcome = _unpack_flat(txn, client, image, flat, policy, now, outcome)
            else:
                outcome = outcome.model_copy(update={"action": "relinked"})
            old_flat = flat_of_link_target(link, old_target) if old_target else None
            links[link] = flat
            _schedule_orphans(txn, reader, links, [old_flat] if old_flat else [], now)
            txn.symlink(link, target, mtime=now)  # replaces the old link: one publish
            txn.add_file(meta_path, meta, mode=0o644, mtime=now)
            result = txn.publish(description=f"unpack {outcome.image}")
    return outcome.model_copy(update={"revision": result.revision})


def _unpack_flat(
    txn: Transaction,
    client: RegistryClient,
    image: ResolvedImage,
    flat: str,
    policy: LayerPolicy | None,
    now: int,
    outcome: UnpackOutcome,
) -> UnpackOutcome:
    policy = policy or LayerPolicy()
    # Nested catalogs first, so the image's rows go straight into its own catalog (§6.1).
    txn.add_file(f"{FLAT_DIR}/{CATALOG_MARKER}", b"", mode=0o644, mtime=now)
    txn.mkdir(flat, mode=0o755, mtime=now)
    txn.add_file(f"{flat}/{CATALOG_MARKER}", b"", mode=0o644, mtime=now)
    layers = [layer for layer in image.manifest.layers if check_layer_descriptor(layer, policy)]
    config = client.fetch_config(image.repository, image.manifest.config)
    applier = LayerApplier(txn, flat, policy)
    for layer in layers:
        with client.open_blob(image.repository, layer) as blob:
            applier.apply(blob, layer.digest)
            blob.finish()
    add_apptainer_files(txn, applier.tree, config, mtime=now)
    stats = applier.stats
    return outcome.model_copy(
        update={
            "action": "unpacked",
            "layers": stats.layers,
            "files": stats.files,
            "bytes": stats.bytes,
            "whiteouts": stats.whiteouts,
            "opaque_dirs": stats.opaque_dirs,
            "special_files": stats.special_files,
            "skipped_special": stats.skipped_special,
            "stripped_modes": stats.stripped_modes,
        }
    )


def delete_tag(
    writer: RepositoryWriter,
    registry: str,
    repository: str,
    tag: str,
    *,
    clock: Clock = time.time,
) -> TagDeleteOutcome:
    """Remove the public link and metadata of one tag; its flat tree waits for GC."""
    link = public_link(registry, repository, tag)
    with state_reader(writer) as reader:
        target = _readlink_optional(reader, link)
        meta = metadata_dir(registry, repository, tag)
        if target is None and not reader.exists(meta):
            return TagDeleteOutcome(link=link, deleted=False, revision=reader.revision)
        links = public_links(reader)
        links.pop(link, None)
        now = int(clock())
        with writer.transaction() as txn:
            txn.remove(link, missing_ok=True)
            txn.remove(meta, missing_ok=True)
            old_flat = flat_of_link_target(link, target) if target else None
            orphans = _schedule_orphans(txn, reader, links, [old_flat] if old_flat else [], now)
            result = txn.publish(description=f"delete {registry}/{repository}:{tag}")
    return TagDeleteOutcome(
        link=link, deleted=True, revision=result.revision, scheduled_for_gc=orphans
    )


def collect_garbage(
    writer: RepositoryWriter, *, grace_s: int, clock: Clock = time.time
) -> GcOutcome:
    """Remove flat trees no public link has pointed at for `grace_s` seconds.

    A flat tree found unreferenced for the first time is put on the schedule now; the
    schedule is kept in the repository (`.metadata/gc-schedule.json`).
    """
    now = int(clock())
    with state_reader(writer) as reader:
        links = public_links(reader)
        referenced = {flat for flat in links.values() if flat}
        old = parse_gc_schedule(_read_optional(reader, GC_SCHEDULE))
        schedule = {f: old.get(f, now) for f in flat_dirs(reader) if f not in referenced}
        doomed = sorted(f for f, since in schedule.items() if now - since >= grace_s)
        for flat in doomed:
            del schedule[flat]
        if schedule == old and not doomed:
            return GcOutcome(removed=[], scheduled=schedule, revision=reader.revision)
        buckets = {posixpath.dirname(f) for f in doomed}
        with writer.transaction() as txn:
            for flat in doomed:
                txn.remove(flat)
            for bucket in sorted(buckets):
                remaining = [e for e in reader.listdir(bucket) if e.path not in doomed]
                if not remaining:
                    txn.remove(bucket)
            txn.add_file(GC_SCHEDULE, gc_schedule_json(schedule), mode=0o644, mtime=now)
            result = txn.publish(description=f"garbage collection: {len(doomed)} flat trees")
    return GcOutcome(removed=doomed, scheduled=schedule, revision=result.revision)
