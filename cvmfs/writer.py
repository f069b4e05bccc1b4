"""Create CVMFS repositories and publish new revisions into stratum-0 storage (spec §2.11, §3, §4).

`create_repository` = `cvmfs_server mkfs`; `RepositoryWriter` opens transactions, tags, rolls back.

Publish order (spec §7): content objects (uploaded while files are added), catalogs bottom-up,
history, reflog, one `storage.sync()` that makes all of them durable, and the signed manifest
LAST (`put_atomic`), so a crash at any point leaves the previous manifest pointing at a complete
previous revision. Revisions strictly increase and
manifest timestamps never go backwards. A publish re-reads the current manifest right before
writing its own; if it is no longer the transaction's base, it raises `ConflictError` and writes
no manifest. (On S3 the final check-then-PUT is not atomic: two writers racing within that
window can still both succeed; serialize publishers with the service's repository lock.)

Decisions where we knowingly differ from, or choose among, upstream behaviours:
* mkfs writes no `new_repository` file: revision 1 is the bare root directory.
* Hard links: a group within one directory (spec §7); a link to another directory is stored
  as an independent copy (same content object). The stock overlayfs publisher breaks every
  hard link up, so a fixture-identical tree needs plain copies (tests do that).
* setuid and setgid bits are stripped, the sticky bit is kept (`cvmfs.paths.sanitize_mode`).
* The reflog lists root catalogs, histories, the certificate and meta-info, not nested
  catalogs, as the stock 2.11 publisher does (fixture). A crash between the reflog write and
  the manifest write leaves a reflog "ahead" of the manifest's `Y`; fsck accepts that.
* Rollback keeps every tag (upstream deletes the tags newer than the target).
* Catalogs are rewritten at schema 2.5 revision 7; an opened revision-6 catalog gets the
  `mtimens` column when it is rewritten; untouched catalogs are left as they are.
* Publishing refuses an expired whitelist, or one not listing the signing certificate.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cvmfs.catalog import DEFAULT_TTL_S, DIRECTORY_SIZE, FLAG_DIR
from cvmfs.catalog_writer import CatalogWriter, Row
from cvmfs.chunking import ChunkingParams
from cvmfs.codecs import (
    CATALOG_COMPRESSION,
    Compression,
    compression_from_metainfo,
    metainfo_with_compression,
)
from cvmfs.errors import ConflictError, CvmfsError, NotFoundError
from cvmfs.history import (
    TAG_TRUNK,
    TAG_TRUNK_PREVIOUS,
    TRUNK_DESCRIPTION,
    TRUNK_PREVIOUS_DESCRIPTION,
    HistoryDb,
    Tag,
    create_history_db,
    generic_tag_name,
)
from cvmfs.keys import KeySet, certificate_fingerprint
from cvmfs.manifest import Manifest, SignedManifest, sign_manifest
from cvmfs.objects import (
    ContentHash,
    HashAlgorithm,
    ObjectSuffix,
    compress_and_hash,
    decode_verified,
    hash_bytes,
    object_path,
)
from cvmfs.paths import validate_repository_name
from cvmfs.reflog import REFLOG_KEY, ReflogDb, RefType, create_reflog_db
from cvmfs.scratch import make_scratch_dir, scratch_dir, sweep_scratch_dirs
from cvmfs.storage import Storage
from cvmfs.transaction import FinalizedCatalog, IngestOptions, Transaction
from cvmfs.whitelist import DEFAULT_VALIDITY, SignedWhitelist, Whitelist, sign_whitelist

MANIFEST_KEY = ".cvmfspublished"  # spec §1.1
WHITELIST_KEY = ".cvmfswhitelist"  # spec §1.1
MASTER_REPLICA_KEY = ".cvmfs_master_replica"  # spec §1.1
MASTER_REPLICA_TEXT = b"This file marks the repository as replicatable to stratum 1 servers\n"
DEFAULT_MAX_CATALOG_ENTRIES = 100_000  # spec §2.9: keep well below ~200k rows per catalog
ROOT_DIR_MODE = 0o040755  # spec §2.5: upstream's fresh root entry


@dataclass(frozen=True)
class WriterOptions:
    """How a writer stores content and lays out catalogs (defaults = `cvmfs_server mkfs`)."""

    hash_algorithm: HashAlgorithm = HashAlgorithm.SHA1
    compress: bool = True
    # None: what the repository's meta info asks for (stock zlib unless it says `isal`).
    # `create_repository` records a non-stock choice in the meta info, so later writers agree.
    compression: Compression | None = None
    # None switches chunking off; defaults 4/8/16 MiB (spec §1.5)
    chunking: ChunkingParams | None = field(default_factory=ChunkingParams)
    workers: int = field(default_factory=lambda: os.cpu_count() or 2)  # see IngestOptions
    max_bytes_in_flight: int = 64 << 20
    # Automatic nested catalogs (`.cvmfsautocatalog`) above this many rows; None = off.
    max_catalog_entries: int | None = DEFAULT_MAX_CATALOG_ENTRIES
    ttl_s: int = DEFAULT_TTL_S
    default_uid: int = 0
    default_gid: int = 0
    auto_tag: bool = True  # a `generic-<time>` tag per publish, as upstream's default
    work_dir: str | None = None  # where catalog working copies go (default: system temp)

    def ingest(self, compression: Compression) -> IngestOptions:
        return IngestOptions(
            hash_algorithm=self.hash_algorithm,
            compress=self.compress,
            compression=compression,
            chunking=self.chunking,
            workers=self.workers,
            max_bytes_in_flight=self.max_bytes_in_flight,
        )


@dataclass(frozen=True)
class PublishResult:
    """What a publish (or tag/rollback) wrote."""

    revision: int
    root_hash: ContentHash
    root_size: int
    timestamp: int
    catalogs_written: tuple[FinalizedCatalog, ...]
    history_hash: ContentHash | None
    manifest: Manifest
    files_added: int = 0
    objects_uploaded: int = 0
    bytes_uploaded: int = 0

    @property
    def catalogs_rewritten(self) -> list[str]:
        """Mount points of the rewritten catalogs ('' = root), bottom-up."""
        return [c.mountpoint for c in self.catalogs_written]


def _now() -> int:
    return int(time.time())


def validate_tag_name(name: str) -> str:
    """Tag names are shown and typed by operators: no whitespace, '/' or NUL, not empty."""
    if not name or len(name) > 255 or any(c.isspace() or c in "/\0" for c in name):
        raise CvmfsError(
            f"invalid tag name {name!r}: use 1-255 characters without spaces or '/' (e.g. v1.2)"
        )
    return name


class RepositoryWriter:
    """Write access to one repository in `storage`, signing with `keys`.

    `keys` needs the repository key and certificate; the master key only for whitelists.

        writer = RepositoryWriter.open(S3Storage(client, bucket, fqrn), fqrn, keys)
        with writer.transaction() as txn:          # base = the current revision
            txn.add_file("/sw/v1/bin/tool", stream, mode=0o755, mtime=mtime)
            txn.symlink("/sw/latest", "v1")
            txn.remove("/sw/v0", missing_ok=True)
            result = txn.publish(description="v1")  # ConflictError if someone published since
        writer.tag("v1.0"); writer.rollback("v1.0")

    A `ConflictError` writes no manifest: open a new transaction and apply the change again.
    """

    def __init__(
        self,
        storage: Storage,
        fqrn: str,
        keys: KeySet,
        options: WriterOptions | None = None,
        *,
        clock: Callable[[], int] = _now,
    ) -> None:
        self.storage = storage
        self.fqrn = validate_repository_name(fqrn)
        self.keys = keys
        self.options = options or WriterOptions()
        self.clock = clock
        keys.require_repository_key()

    @classmethod
    def open(
        cls,
        storage: Storage,
        fqrn: str,
        keys: KeySet,
        options: WriterOptions | None = None,
        *,
        clock: Callable[[], int] = _now,
    ) -> RepositoryWriter:
        """Open an existing repository; its manifest must name `fqrn` and verify."""
        writer = cls(storage, fqrn, keys, options, clock=clock)
        signed = writer._read_signed_manifest()
        if signed is None:
            raise NotFoundError(
                f"{storage!r} has no {MANIFEST_KEY}: create the repository first (create)"
            )
        if signed.manifest.repository_name not in (None, fqrn):
            raise CvmfsError(
                f"{storage!r} holds repository {signed.manifest.repository_name!r}, not {fqrn!r}"
            )
        signed.verify(writer._certificate_of(signed.manifest))
        return writer

    # ------------------------------------------------------------------------ reading state
    def _read_signed_manifest(self) -> SignedManifest | None:
        try:
            data = self.storage.get(MANIFEST_KEY)
        except NotFoundError:
            return None
        return SignedManifest.parse(data)

    def current_manifest(self) -> Manifest:
        signed = self._read_signed_manifest()
        if signed is None:
            raise NotFoundError(f"{self.storage!r} has no {MANIFEST_KEY}")
        return signed.manifest

    def _get_object(self, content_hash: ContentHash, suffix: ObjectSuffix) -> bytes:
        key = object_path(content_hash, suffix)
        return decode_verified(self.storage.get(key), content_hash, what=key)

    def _certificate_of(self, manifest: Manifest) -> bytes:
        if manifest.certificate_hash is None:
            return self.keys.certificate_pem.encode()
        return self._get_object(manifest.certificate_hash, ObjectSuffix.CERTIFICATE)

    def _put_object(self, data: bytes, suffix: ObjectSuffix) -> ContentHash:
        compression = CATALOG_COMPRESSION if suffix is ObjectSuffix.CATALOG else Compression.ZLIB
        stored, content_hash = compress_and_hash(data, self.options.hash_algorithm, compression)
        key = object_path(content_hash, suffix)
        if not self.storage.exists(key):
            self.storage.put(key, stored)
        return content_hash

    def tags(self) -> list[Tag]:
        manifest = self.current_manifest()
        if manifest.history_hash is None:
            return []
        with scratch_dir("meta", self.options.work_dir) as tmp:
            path = Path(tmp) / "history.sqlite"
            path.write_bytes(self._get_object(manifest.history_hash, ObjectSuffix.HISTORY))
            with HistoryDb(path) as history:
                return history.tags()

    # ---------------------------------------------------------------------- transactions
    def transaction(self) -> Transaction:
        """A transaction against the current revision (the base checked again at publish).

        Working catalogs left by writers on this host that were killed are removed first.
        """
        sweep_scratch_dirs(self.options.work_dir)
        manifest = self.current_manifest()
        return self._transaction_from(manifest, manifest.root_catalog_hash)

    def _transaction_from(self, base: Manifest | None, root_hash: ContentHash) -> Transaction:
        txn = Transaction(
            self,
            base_root_hash=root_hash,
            base_revision=base.revision if base else 0,
            base_timestamp=(base.publish_timestamp or 0) if base else 0,
            options=self.options.ingest(self.compression(base)),
            max_catalog_entries=self.options.max_catalog_entries,
            default_uid=self.options.default_uid,
            default_gid=self.options.default_gid,
            work_dir=self.options.work_dir,
        )
        txn.base_manifest = base
        return txn

    def compression(self, manifest: Manifest | None) -> Compression:
        """How this writer deflates content: its options, else the meta info `manifest` names."""
        if self.options.compression is not None:
            return self.options.compression
        if manifest is None or manifest.metainfo_hash is None:
            return Compression.ZLIB
        return compression_from_metainfo(
            self._get_object(manifest.metainfo_hash, ObjectSuffix.METAINFO)
        )

    def _check_base(self, base: Manifest | None) -> None:
        current = self._read_signed_manifest()
        if base is None:
            if current is not None:
                raise ConflictError(
                    f"{self.storage!r} already holds a repository (revision "
                    f"{current.manifest.revision}); open it instead of creating it"
                )
            return
        if current is None:
            raise ConflictError(f"the manifest of {self.fqrn} disappeared during the publish")
        now = current.manifest
        if (
            now.revision != base.revision
            or now.root_catalog_hash != base.root_catalog_hash
            or now.publish_timestamp != base.publish_timestamp
        ):
            raise ConflictError(
                f"{self.fqrn} moved from revision {base.revision} to {now.revision} while this "
                "transaction was open; nothing was published: start a new transaction and "
                "apply the changes again"
            )

    def check_whitelist(self, at: int | None = None) -> Whitelist:
        """Refuse to publish what clients would reject: the whitelist must name this
        repository, be unexpired now (as `cvmfs_server publish` requires) and list the
        certificate of these keys."""
        try:
            whitelist = SignedWhitelist.parse(self.storage.get(WHITELIST_KEY)).whitelist
        except NotFoundError:
            raise CvmfsError(
                f"{self.storage!r} has no {WHITELIST_KEY}: sign one with resign_whitelist"
            ) from None
        whitelist.check_repository_name(self.fqrn)
        moment = self.clock() if at is None else at
        whitelist.check_not_expired(dt.datetime.fromtimestamp(moment, dt.UTC))
        whitelist.check_certificate(self.keys.certificate_pem)
        return whitelist

    def _publish_transaction(
        self, txn: Transaction, *, tag: str | None, description: str, auto_tag: bool | None
    ) -> PublishResult:
        base = txn.base_manifest
        if tag is not None and validate_tag_name(tag) in (TAG_TRUNK, TAG_TRUNK_PREVIOUS):
            raise CvmfsError(f"{tag!r} is maintained automatically; choose another tag name")
        self._check_base(base)  # fail early, before writing catalogs
        timestamp = self._next_timestamp(base)
        self.check_whitelist(timestamp)
        catalogs = txn.finalize_catalogs(last_modified=timestamp)
        root = catalogs[-1]
        return self._commit(
            base,
            root_hash=root.content_hash,
            root_size=root.size,
            revision=root.revision,
            timestamp=timestamp,
            catalogs=tuple(catalogs),
            tag=tag,
            description=description,
            auto_tag=self.options.auto_tag if auto_tag is None else auto_tag,
            move_trunk=True,
            files_added=txn.files_added,
            objects_uploaded=txn.objects_uploaded,
            bytes_uploaded=txn.bytes_uploaded,
        )

    def _next_timestamp(self, base: Manifest | None) -> int:
        # spec §3.6: T never goes backwards (a client refuses an older manifest).
        return max(self.clock(), (base.publish_timestamp or 0) if base else 0)

    def _commit(
        self,
        base: Manifest | None,
        *,
        root_hash: ContentHash,
        root_size: int,
        revision: int,
        timestamp: int,
        catalogs: tuple[FinalizedCatalog, ...],
        tag: str | None,
        description: str,
        auto_tag: bool,
        move_trunk: bool,
        metainfo_hash: ContentHash | None = None,
        files_added: int = 0,
        objects_uploaded: int = 0,
        bytes_uploaded: int = 0,
    ) -> PublishResult:
        """History, reflog, then the signed manifest (the root catalog is already stored)."""
        certificate_hash = self._put_object(
            self.keys.certificate_pem.encode(), ObjectSuffix.CERTIFICATE
        )
        if metainfo_hash is None and base is not None:
            metainfo_hash = base.metainfo_hash
        new_tags: list[Tag] = []
        if auto_tag:
            new_tags.append(
                Tag(
                    generic_tag_name(timestamp),
                    root_hash,
                    revision,
                    timestamp,
                    description,
                    root_size,
                )
            )
        if tag:
            new_tags.append(Tag(tag, root_hash, revision, timestamp, description, root_size))
        history_hash = self._write_history(
            base,
            new_tags,
            trunk=Tag(TAG_TRUNK, root_hash, revision, timestamp, TRUNK_DESCRIPTION, root_size)
            if move_trunk
            else None,
        )
        refs: list[tuple[ContentHash, RefType]] = [(root_hash, RefType.CATALOG)]
        if history_hash is not None:
            refs.append((history_hash, RefType.HISTORY))
        refs.append((certificate_hash, RefType.CERTIFICATE))
        if metainfo_hash is not None:
            refs.append((metainfo_hash, RefType.METAINFO))
        self._check_base(base)
        reflog_hash = self._write_reflog(refs, timestamp)
        manifest = Manifest(
            root_catalog_hash=root_hash,
            revision=revision,
            ttl_seconds=self.options.ttl_s,
            root_catalog_size=root_size,
            repository_name=self.fqrn,
            certificate_hash=certificate_hash,
            history_hash=history_hash,
            publish_timestamp=timestamp,
            metainfo_hash=metainfo_hash,
            reflog_hash=reflog_hash,
        )
        self._check_base(base)
        self._write_manifest(manifest)
        return PublishResult(
            revision=revision,
            root_hash=root_hash,
            root_size=root_size,
            timestamp=timestamp,
            catalogs_written=catalogs,
            history_hash=history_hash,
            manifest=manifest,
            files_added=files_added,
            objects_uploaded=objects_uploaded,
            bytes_uploaded=bytes_uploaded,
        )

    def _write_manifest(self, manifest: Manifest) -> None:
        """Sign and write the manifest, after making every object it may name durable.

        Objects, catalogs and the history are `put` without fsync; this one `sync()` per
        publish is the only point where they become durable, and it comes before the manifest.
        """
        signed = sign_manifest(manifest, self.keys.require_repository_key())
        self.storage.sync()
        self.storage.put_atomic(MANIFEST_KEY, signed)

    def _write_history(
        self, base: Manifest | None, new_tags: list[Tag], trunk: Tag | None
    ) -> ContentHash | None:
        with scratch_dir("meta", self.options.work_dir) as tmp:
            path = Path(tmp) / "history.sqlite"
            previous = base.history_hash if base else None
            if previous is None:
                create_history_db(path, self.fqrn, ContentHash(bytes(20), HashAlgorithm.SHA1))
            else:
                path.write_bytes(self._get_object(previous, ObjectSuffix.HISTORY))
            with HistoryDb(path, writable=True) as history:
                if previous is not None:
                    history.set_previous_revision(previous)
                for tag in new_tags:
                    name = tag.name
                    serial = 1
                    while tag.name.startswith("generic-") and history.find(name) is not None:
                        serial += 1  # two publishes within one second
                        name = f"{tag.name}.{serial}"
                    history.put(
                        Tag(
                            name,
                            tag.root_hash,
                            tag.revision,
                            tag.timestamp,
                            tag.description,
                            tag.size,
                        )
                    )
                if trunk is not None:
                    old_trunk = history.find(TAG_TRUNK)
                    if old_trunk is not None:
                        history.put(
                            Tag(
                                TAG_TRUNK_PREVIOUS,
                                old_trunk.root_hash,
                                old_trunk.revision,
                                old_trunk.timestamp,
                                TRUNK_PREVIOUS_DESCRIPTION,
                                old_trunk.size,
                            )
                        )
                    history.put(trunk)
            return self._put_object(path.read_bytes(), ObjectSuffix.HISTORY)

    def _write_reflog(self, refs: list[tuple[ContentHash, RefType]], timestamp: int) -> ContentHash:
        with scratch_dir("meta", self.options.work_dir) as tmp:
            path = Path(tmp) / "reflog.sqlite"
            try:
                path.write_bytes(self.storage.get(REFLOG_KEY))
            except NotFoundError:
                create_reflog_db(path, self.fqrn)
            with ReflogDb(path, writable=True) as reflog:
                for content_hash, ref_type in refs:
                    reflog.add(content_hash, ref_type, timestamp)
            data = path.read_bytes()
        # spec §4.2: stored uncompressed; manifest Y = hash of the raw file
        self.storage.put_atomic(REFLOG_KEY, data)
        return hash_bytes(data, self.options.hash_algorithm)

    # ------------------------------------------------------------------ tags and rollback
    def tag(
        self, name: str, *, description: str = "", revision: int | None = None
    ) -> PublishResult:
        """Add (or move) a named tag, like `cvmfs_server tag -a`: same revision, new manifest.

        Without `revision` the tag names the current revision; otherwise an earlier revision
        that an existing tag already records (e.g. a `generic-…` auto tag).
        """
        if validate_tag_name(name) in (TAG_TRUNK, TAG_TRUNK_PREVIOUS):
            raise CvmfsError(f"{name!r} is maintained automatically; choose another tag name")
        base = self.current_manifest()
        known = self.tags()
        # A tag carries the time its revision was published (as upstream's `tag -a` does).
        current = [t for t in known if t.root_hash == base.root_catalog_hash]
        target = Tag(
            name,
            base.root_catalog_hash,
            base.revision,
            current[0].timestamp if current else base.publish_timestamp or 0,
            description,
            base.root_catalog_size or 0,
        )
        if revision is not None and revision != base.revision:
            matches = [t for t in known if t.revision == revision]
            if not matches:
                raise NotFoundError(f"no tag records revision {revision}: cannot tag it")
            old = matches[0]
            target = Tag(name, old.root_hash, revision, old.timestamp, description, old.size)
        timestamp = self._next_timestamp(base)
        self.check_whitelist(timestamp)
        history_hash = self._write_history(base, [target], trunk=None)
        return self._resign_manifest(base, timestamp=timestamp, history_hash=history_hash)

    def _resign_manifest(
        self, base: Manifest, *, timestamp: int, history_hash: ContentHash | None
    ) -> PublishResult:
        # as upstream's `tag`: the root catalog and the new history are (re-)recorded
        refs: list[tuple[ContentHash, RefType]] = [(base.root_catalog_hash, RefType.CATALOG)]
        if history_hash is not None:
            refs.append((history_hash, RefType.HISTORY))
        self._check_base(base)
        reflog_hash = self._write_reflog(refs, timestamp)
        manifest = base.evolve(
            history_hash=history_hash, publish_timestamp=timestamp, reflog_hash=reflog_hash
        )
        self._check_base(base)
        self._write_manifest(manifest)
        return PublishResult(
            revision=manifest.revision,
            root_hash=manifest.root_catalog_hash,
            root_size=manifest.root_catalog_size or 0,
            timestamp=timestamp,
            catalogs_written=(),
            history_hash=history_hash,
            manifest=manifest,
        )

    def rollback(self, tag_name: str, *, description: str | None = None) -> PublishResult:
        """Publish a new revision whose root catalog content equals the tagged one.

        Only the root catalog's revision properties change (revision, last_modified,
        previous_revision); nested catalogs are the tagged revision's objects. Tags are kept.
        """
        base = self.current_manifest()
        matches = [t for t in self.tags() if t.name == tag_name]
        if not matches:
            raise NotFoundError(f"no tag named {tag_name!r}: list the tags first")
        target = matches[0]
        revision = base.revision + 1
        timestamp = self._next_timestamp(base)
        self.check_whitelist(timestamp)
        with scratch_dir("meta", self.options.work_dir) as tmp:
            path = Path(tmp) / "root.sqlite"
            path.write_bytes(self._get_object(target.root_hash, ObjectSuffix.CATALOG))
            writer = CatalogWriter.open(path, "")
            subtree = writer.read_counters("subtree")
            writer.finalize(
                revision=revision,
                last_modified=timestamp,
                previous_revision=base.root_catalog_hash.hex,
                subtree=subtree,
            )
            data = path.read_bytes()
        root_hash = self._put_object(data, ObjectSuffix.CATALOG)
        self._check_base(base)
        return self._commit(
            base,
            root_hash=root_hash,
            root_size=len(data),
            revision=revision,
            timestamp=timestamp,
            catalogs=(FinalizedCatalog("", root_hash, len(data), revision),),
            tag=None,
            description=description or f"rollback to {tag_name}",
            auto_tag=self.options.auto_tag,
            move_trunk=True,
        )


# ------------------------------------------------------------------------------ mkfs
def create_repository(
    storage: Storage,
    fqrn: str,
    keys: KeySet,
    options: WriterOptions | None = None,
    *,
    meta_info: Mapping[str, object] | str | None = None,
    whitelist_validity: dt.timedelta = DEFAULT_VALIDITY,
    replicable: bool = True,
    clock: Callable[[], int] = _now,
) -> tuple[RepositoryWriter, PublishResult]:
    """What `cvmfs_server mkfs` leaves in storage, as revision 1.

    Writes: certificate object (X), optional meta-info (M), an empty revision-0 root catalog
    (recorded in the reflog, the `previous_revision` of revision 1), revision 1 = the root
    directory only, history (H) with `trunk` and a `generic-…` tag, `.cvmfsreflog`, the
    whitelist signed with the master key (30 days), `.cvmfs_master_replica` (unless
    `replicable=False`) and, last, the signed manifest. Unlike upstream no `new_repository`
    file is created: revision 1 is an empty root, so a first import needs no clean-up.
    """
    writer = RepositoryWriter(storage, fqrn, keys, options, clock=clock)
    writer._check_base(None)
    master_key = keys.require_master_key()
    timestamp = clock()  # revision 0 (and the root directory's mtime) and the whitelist
    opts = writer.options
    if opts.compression not in (None, Compression.ZLIB):
        if isinstance(meta_info, str):
            raise CvmfsError(
                "a non-stock compression is recorded in JSON meta info: pass meta_info as a "
                "mapping, not text"
            )
        meta_info = metainfo_with_compression(dict(meta_info or {}), opts.compression)
    work = make_scratch_dir("mkfs", opts.work_dir)
    try:
        db_path = work / "rev0.sqlite"
        root = Row(
            path="",
            mode=ROOT_DIR_MODE,
            mtime=timestamp,
            flags=FLAG_DIR,
            size=DIRECTORY_SIZE,
            uid=opts.default_uid,
            gid=opts.default_gid,
            linkcount=2,
        )
        catalog = CatalogWriter.create(db_path, root, ttl_s=opts.ttl_s)
        catalog.finalize(revision=0, last_modified=timestamp, previous_revision=None, subtree={})
        rev0_hash = writer._put_object(db_path.read_bytes(), ObjectSuffix.CATALOG)
        writer._write_reflog([(rev0_hash, RefType.CATALOG)], timestamp)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    metainfo_hash: ContentHash | None = None
    if meta_info is not None:
        text = meta_info if isinstance(meta_info, str) else json.dumps(meta_info, indent=2)
        metainfo_hash = writer._put_object(text.encode(), ObjectSuffix.METAINFO)
    whitelist = Whitelist(
        created=dt.datetime.fromtimestamp(timestamp, dt.UTC),
        expires=dt.datetime.fromtimestamp(timestamp, dt.UTC) + whitelist_validity,
        repository_name=writer.fqrn,
        certificate_fingerprints=(
            certificate_fingerprint(keys.certificate_pem, opts.hash_algorithm),
        ),
    )
    storage.put_atomic(WHITELIST_KEY, sign_whitelist(whitelist, master_key, opts.hash_algorithm))
    if replicable:
        storage.put_atomic(MASTER_REPLICA_KEY, MASTER_REPLICA_TEXT)
    txn = writer._transaction_from(None, rev0_hash)
    timestamp = max(clock(), timestamp)  # revision 1, a moment later as upstream's mkfs
    try:
        catalogs = txn.finalize_catalogs(last_modified=timestamp)
        root_catalog = catalogs[-1]
        result = writer._commit(
            None,
            root_hash=root_catalog.content_hash,
            root_size=root_catalog.size,
            revision=1,
            timestamp=timestamp,
            catalogs=tuple(catalogs),
            tag=None,
            description="",
            auto_tag=opts.auto_tag,
            move_trunk=True,
            metainfo_hash=metainfo_hash,
        )
    finally:
        txn.abort()
    return writer, result


# -------------------------------------------------------------------- whitelist re-signing
def resign_whitelist(
    storage: Storage,
    fqrn: str,
    master_private_pem: str,
    *,
    validity: dt.timedelta = DEFAULT_VALIDITY,
    now: dt.datetime | None = None,
    hash_algorithm: HashAlgorithm = HashAlgorithm.SHA1,
) -> Whitelist:
    """Sign a fresh `.cvmfswhitelist` with the master key alone (no repository key needed).

    Lists the certificate the current manifest points at, plus the fingerprints of the old
    whitelist (so a certificate being rotated in stays valid).
    """
    moment = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(microsecond=0)
    manifest = SignedManifest.parse(storage.get(MANIFEST_KEY)).manifest
    if manifest.repository_name not in (None, fqrn):
        raise CvmfsError(f"storage holds {manifest.repository_name!r}, not {fqrn!r}")
    fingerprints: list[str] = []
    if manifest.certificate_hash is not None:
        key = object_path(manifest.certificate_hash, ObjectSuffix.CERTIFICATE)
        pem = decode_verified(storage.get(key), manifest.certificate_hash, what=key)
        fingerprints.append(certificate_fingerprint(pem, hash_algorithm))
    try:
        old = SignedWhitelist.parse(storage.get(WHITELIST_KEY)).whitelist
        fingerprints += [f for f in old.certificate_fingerprints if f not in fingerprints]
    except NotFoundError:
        pass
    if not fingerprints:
        raise CvmfsError("no certificate to list: the manifest names no certificate (X)")
    whitelist = Whitelist(
        created=moment,
        expires=moment + validity,
        repository_name=fqrn,
        certificate_fingerprints=tuple(fingerprints),
    )
    storage.put_atomic(WHITELIST_KEY, sign_whitelist(whitelist, master_private_pem, hash_algorithm))
    return whitelist
