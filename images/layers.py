"""Apply image layers, in order, into one directory of a CVMFS transaction (OCI layer semantics).

Each layer is streamed (gzip, zstd or plain tar) through `cvmfs.tarball`'s checked reader.

Semantics (OCI image spec "Applying changesets", spec §6.4 last paragraph):
* `.wh.<name>` deletes `<name>` as left by the lower layers; `.wh..wh..opq` in directory D hides
  every lower child of D. Entries of the layer itself are never deleted by its own whiteouts,
  whatever their order in the tar (the layer's written paths are remembered while it streams).
  Other `.wh..wh.*` names (aufs bookkeeping) are dropped; whiteouts never reach the tree.
* A later entry replaces an earlier one: a file replaces a directory and vice versa.
* A path whose parent is a symlink left by a lower layer is written where the symlink leads,
  resolved inside the image root (as `umoci unpack` and Docker do); a symlink defined earlier
  in the same layer is refused by the tar reader.
* Hard links become `Transaction.link` (a group inside one directory; across directories an
  independent copy, the CVMFS rule of spec §7).

Refusals (`LayerRefusedError`, the whole image is then not published): member paths that are
absolute or contain `..`; a declared file size, layer size, image size or compressed layer size
above the policy limits, checked before any byte of it is read.
Character/block devices and FIFOs become CVMFS special files (flags 20, device number in
`size`), as DUCC's `mknod` into the overlay and the stock publisher store them: images built
from a root file system carry /dev nodes, and apptainer binds the host's /dev over them anyway.
`LayerPolicy.skip_special` drops them instead (listed in `UnpackStats.skipped_special`).
Kept as they are: symlink targets (absolute ones, and relative ones that climb above the image
root, which resolve to the root inside a container), uid/gid, mtimes and permission bits with
the sticky bit (setuid/setgid stripped by the writer and listed in `UnpackStats.stripped_modes`,
spec §7). Extended attributes are not carried.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import BinaryIO, cast

from pydantic import BaseModel, ConfigDict, Field

from cvmfs.chunking import ReadableStream
from cvmfs.errors import CvmfsError
from cvmfs.tarball import (
    EntryType,
    ImportStats,
    TarballError,
    TarEntry,
    TarPolicy,
    iter_tar_entries,
)
from cvmfs.transaction import Transaction
from images.errors import LayerRefusedError, UnsupportedImageError
from images.registry import Descriptor

GIB = 1 << 30
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# Layer media types we unpack; the compression is sniffed from the bytes anyway.
LAYER_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar",
    }
)
# Foreign / non-distributable layers are not in the registry (spec §6.3): skipped like DUCC.
FOREIGN_MEDIA_TYPES = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)
MAX_SYMLINK_HOPS = 40  # as the kernel's ELOOP limit


class LayerPolicy(BaseModel):
    """Limits for untrusted images; every limit is checked before the bytes are read."""

    model_config = ConfigDict(frozen=True)

    max_file_size: int = Field(default=16 * GIB, gt=0, description="largest file, bytes")
    max_layer_size: int = Field(default=64 * GIB, gt=0, description="uncompressed layer bytes")
    max_image_size: int = Field(default=128 * GIB, gt=0, description="all layers, bytes")
    max_compressed_layer_size: int = Field(default=32 * GIB, gt=0, description="layer blob bytes")
    max_entries: int = Field(default=5_000_000, gt=0, description="entries in one layer")
    skip_special: bool = Field(
        default=False, description="drop devices/FIFOs instead of publishing them"
    )


@dataclass
class UnpackStats:
    """What applying the layers did, for logs and the flow's result."""

    layers: int = 0
    entries: int = 0
    files: int = 0
    special_files: int = 0
    bytes: int = 0
    whiteouts: int = 0
    opaque_dirs: int = 0
    skipped_special: list[str] = field(default_factory=list)
    stripped_modes: list[str] = field(default_factory=list)


class FlatTree:
    """Kinds of the paths below the image root, as the layers applied so far left them.

    Lives in memory for one unpack (a path and a kind per entry), so that whiteouts, opaque
    directories and type changes are decided without querying the transaction's catalogs.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self._kinds: dict[str, EntryType] = {root: EntryType.DIRECTORY}
        self._children: dict[str, set[str]] = {root: set()}
        self._symlinks: dict[str, str] = {}

    def kind(self, path: str) -> EntryType | None:
        return self._kinds.get(path)

    def children(self, path: str) -> list[str]:
        return sorted(self._children.get(path, ()))

    def add(self, path: str, kind: EntryType, target: str = "") -> None:
        parent = posixpath.dirname(path)
        self._ensure_dir(parent)
        self._kinds[path] = kind
        self._children[parent].add(path)
        if kind is EntryType.DIRECTORY:
            self._children.setdefault(path, set())
        if kind is EntryType.SYMLINK:
            self._symlinks[path] = target
        else:
            self._symlinks.pop(path, None)

    def _ensure_dir(self, path: str) -> None:
        if self._kinds.get(path) is EntryType.DIRECTORY:
            return
        self.add(path, EntryType.DIRECTORY)

    def discard(self, path: str) -> None:
        """Forget `path` and everything below it."""
        if path not in self._kinds:
            return
        for child in list(self._children.get(path, ())):
            self.discard(child)
        self._children.pop(path, None)
        self._kinds.pop(path)
        self._symlinks.pop(path, None)
        self._children[posixpath.dirname(path)].discard(path)

    def resolve_parent(self, path: str) -> str:
        """`path` with every symlink among its parents followed, inside the image root."""
        relative = path[len(self.root) :].strip("/").split("/")
        resolved = self.root
        hops = 0
        pending = relative[:-1]
        while pending:
            part = pending.pop(0)
            candidate = f"{resolved}/{part}"
            target = self._symlinks.get(candidate)
            if target is None:
                resolved = candidate
                continue
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise LayerRefusedError(f"{path}: too many levels of symbolic links: refused")
            base = self.root if target.startswith("/") else resolved
            parts = [p for p in target.split("/") if p not in ("", ".")]
            pending = parts + pending
            resolved = base
            # '..' never climbs above the image root, as in a container's root file system.
            while pending and pending[0] == "..":
                pending.pop(0)
                if resolved != self.root:
                    resolved = posixpath.dirname(resolved)
        return f"{resolved}/{relative[-1]}"


def check_layer_descriptor(layer: Descriptor, policy: LayerPolicy) -> bool:
    """True if the layer is to be applied, False if it is skipped (foreign); refuses others."""
    if layer.media_type in FOREIGN_MEDIA_TYPES:
        return False
    if layer.media_type not in LAYER_MEDIA_TYPES:
        raise UnsupportedImageError(
            f"layer {layer.digest} has media type {layer.media_type!r}, not an image layer "
            f"({', '.join(sorted(LAYER_MEDIA_TYPES))})"
        )
    if layer.size > policy.max_compressed_layer_size:
        raise LayerRefusedError(
            f"layer {layer.digest} declares {layer.size} bytes, above the limit of "
            f"{policy.max_compressed_layer_size}: refused"
        )
    return True


class LayerApplier:
    """Applies the layers of one image, in order, below `root` in a transaction."""

    def __init__(self, txn: Transaction, root: str, policy: LayerPolicy | None = None) -> None:
        self.txn = txn
        self.root = root
        self.policy = policy or LayerPolicy()
        self.tree = FlatTree(root)
        self.stats = UnpackStats()
        self._written: set[str] = set()
        self._hardlink_paths: dict[str, str] = {}
        self._link_groups: dict[str, list[str]] = {}

    def apply(self, stream: ReadableStream, digest: str) -> None:
        """Apply one layer (the decompressed tar is streamed; nothing touches local disk)."""
        remaining = self.policy.max_image_size - self.stats.bytes
        tar_policy = TarPolicy(
            max_file_size=self.policy.max_file_size,
            max_total_size=max(1, min(self.policy.max_layer_size, remaining)),
            max_entries=self.policy.max_entries,
            skip_special=self.policy.skip_special,
            allow_escaping_symlinks=True,
        )
        tar_stats = ImportStats()
        self._written = set()
        self._hardlink_paths = {}
        self._link_groups = {}
        try:
            for entry in iter_tar_entries(stream, self.root, tar_policy, tar_stats):
                self._apply_entry(entry)
        except TarballError as error:
            raise LayerRefusedError(f"layer {digest} refused: {error}") from error
        except CvmfsError as error:
            raise LayerRefusedError(f"layer {digest} cannot be applied: {error}") from error
        self.stats.layers += 1
        self.stats.entries += tar_stats.entries
        self.stats.bytes += tar_stats.bytes
        self.stats.skipped_special += tar_stats.skipped_special
        self.stats.stripped_modes += tar_stats.stripped_modes

    # ------------------------------------------------------------------------ entries
    def _apply_entry(self, entry: TarEntry) -> None:
        name = posixpath.basename(entry.path)
        if name.startswith(WHITEOUT_PREFIX):
            self._apply_whiteout(entry, name)
            return
        path = self.tree.resolve_parent(entry.path)
        existing = self.tree.kind(path)
        if entry.type is EntryType.DIRECTORY:
            if existing is not None and existing is not EntryType.DIRECTORY:
                self._remove(path)
            self._ensure_parent(path)
            self.txn.mkdir(path, mode=entry.mode, mtime=entry.mtime, uid=entry.uid, gid=entry.gid)
            self.tree.add(path, EntryType.DIRECTORY)
        else:
            if existing is EntryType.DIRECTORY:
                self._remove(path)
            self._ensure_parent(path)
            self._write_leaf(entry, path)
        self._written.add(path)

    def _write_leaf(self, entry: TarEntry, path: str) -> None:
        if entry.type is EntryType.FILE:
            assert entry.content is not None
            self.txn.add_file(
                path,
                cast(BinaryIO, entry.content),
                mode=entry.mode,
                mtime=entry.mtime,
                uid=entry.uid,
                gid=entry.gid,
            )
            self.tree.add(path, EntryType.FILE)
            self.stats.files += 1
        elif entry.type is EntryType.SYMLINK:
            self.txn.symlink(
                path, entry.link_target, mtime=entry.mtime, uid=entry.uid, gid=entry.gid
            )
            self.tree.add(path, EntryType.SYMLINK, entry.link_target)
        elif entry.type is EntryType.SPECIAL:
            self.txn.add_special_file(
                path,
                entry.file_type | entry.mode,
                rdev=entry.rdev,
                mtime=entry.mtime,
                uid=entry.uid,
                gid=entry.gid,
            )
            self.tree.add(path, EntryType.SPECIAL)
            self.stats.special_files += 1
        else:
            source = self._hardlink_paths.get(entry.link_target, entry.link_target)
            if self.tree.kind(source) is not EntryType.FILE:
                raise LayerRefusedError(
                    f"hard link {entry.path} -> {entry.link_target}: the target is no longer a "
                    "regular file of this layer: refused"
                )
            # CVMFS groups hard links per directory (spec §7): link to a member of the group
            # in this directory if there is one, else to the original (stored as a copy).
            members = self._link_groups.setdefault(source, [source])
            same_dir = [
                m
                for m in members
                if posixpath.dirname(m) == posixpath.dirname(path)
                and self.tree.kind(m) is EntryType.FILE
            ]
            self.txn.link(same_dir[0] if same_dir else source, path)
            members.append(path)
            self.tree.add(path, EntryType.FILE)
        # Hard links name the tar path of their target; remember where that path landed.
        self._hardlink_paths[entry.path] = path

    def _ensure_parent(self, path: str) -> None:
        """Lower-layer non-directories standing where this entry needs a directory go away."""
        parent = posixpath.dirname(path)
        missing: list[str] = []
        while parent != self.root and self.tree.kind(parent) is not EntryType.DIRECTORY:
            missing.append(parent)
            parent = posixpath.dirname(parent)
        for directory in reversed(missing):
            if self.tree.kind(directory) is not None:
                self._remove(directory)
            self.tree.add(directory, EntryType.DIRECTORY)

    def _apply_whiteout(self, entry: TarEntry, name: str) -> None:
        directory = self.tree.resolve_parent(entry.path).rpartition("/")[0]
        if name == OPAQUE_MARKER:
            self.stats.opaque_dirs += 1
            if self.tree.kind(directory) is EntryType.DIRECTORY:
                self._hide_lower_children(directory)
            return
        if name.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # aufs bookkeeping (.wh..wh.plnk, ...): not content
        self.stats.whiteouts += 1
        target = f"{directory}/{name[len(WHITEOUT_PREFIX) :]}"
        if target not in self._written:
            self._remove(target)

    def _hide_lower_children(self, directory: str) -> None:
        for child in self.tree.children(directory):
            if child not in self._written:
                self._remove(child)
            elif self.tree.kind(child) is EntryType.DIRECTORY:
                self._hide_lower_children(child)

    def _remove(self, path: str) -> None:
        if self.tree.kind(path) is None:
            return
        self.txn.remove(path, missing_ok=True)
        self.tree.discard(path)
