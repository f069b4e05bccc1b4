"""Property tests: random transactions through the writer, checked with the reader and fsck.

After each publish the reader sees exactly the model tree, fsck passes, and every earlier
revision still reads back as it was. Tarballs with one bad member are refused and publish nothing.
"""

from __future__ import annotations

import functools
import io
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvmfs.chunking import ChunkingParams
from cvmfs.fsck import fsck
from cvmfs.keys import KeySet, generate_keyset
from cvmfs.reader import RepositoryReader
from cvmfs.storage import LocalStorage
from cvmfs.tarball import TarballError, import_tarball
from cvmfs.transaction import Transaction
from cvmfs.writer import RepositoryWriter, WriterOptions, create_repository

FQRN = "props.example.org"
NAMES = ["a", "b", "ü", "x y"]
# Small chunks (files over 64 bytes are chunked) and tiny catalogs (automatic nested catalogs
# after 6 entries) so a few operations exercise chunking and catalog splitting and merging.
OPTIONS = WriterOptions(chunking=ChunkingParams(64, 128, 256), max_catalog_entries=6)
PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# A tree model: path -> ("dir", mode, b"") | ("file", mode, content) | ("symlink", 0o777, target)
Tree = dict[str, tuple[str, int, bytes | str]]


@functools.cache
def _shared_keys() -> KeySet:
    """One key set for every example (a module function, so hypothesis never prints it)."""
    return generate_keyset(FQRN)


def new_repository(directory: str, keys: KeySet) -> tuple[RepositoryWriter, LocalStorage]:
    storage = LocalStorage(Path(directory) / "stratum0")
    writer, _ = create_repository(storage, FQRN, keys, OPTIONS)
    return writer, storage


def read_tree(reader: RepositoryReader, model: Tree | None = None) -> Tree:
    """The reader's tree in model form. Marker files the writer's automatic catalog policy
    created (`.cvmfsautocatalog` and its `.cvmfscatalog`, spec §2.9) are left out unless the
    model has them."""
    tree: Tree = {}
    for entry in reader.walk():
        if entry.path == "":
            continue
        permissions = stat.S_IMODE(entry.mode)
        if entry.is_dir:
            tree[entry.path] = ("dir", permissions, b"")
        elif entry.is_symlink:
            tree[entry.path] = ("symlink", permissions, entry.symlink)
        else:
            tree[entry.path] = ("file", permissions, reader.read(entry.path))
    model = model if model is not None else {}
    for path in [p for p in tree if p.endswith("/.cvmfsautocatalog")]:
        directory = path.rpartition("/")[0]
        for marker in (path, directory + "/.cvmfscatalog"):
            if marker not in model:
                tree.pop(marker, None)
    return tree


# -- operations --------------------------------------------------------------------------------

paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(lambda p: "/" + "/".join(p))
contents = st.one_of(
    st.binary(max_size=40),
    st.binary(min_size=65, max_size=700),  # chunked with the small chunking parameters
    st.sampled_from([b"", b"same content\n"]),  # deduplicated objects
)


@dataclass(frozen=True)
class Op:
    kind: str
    path: str
    data: bytes = b""
    mode: int = 0o644
    other: str = ""


operations = st.one_of(
    st.builds(
        Op,
        st.just("file"),
        paths,
        contents,
        st.sampled_from([0o644, 0o755, 0o600, 0o4755, 0o2711]),
    ),
    st.builds(Op, st.just("mkdir"), paths, st.just(b""), st.sampled_from([0o755, 0o750])),
    st.builds(
        Op,
        st.just("symlink"),
        paths,
        st.just(b""),
        st.just(0o777),
        st.sampled_from(["a", "../b", "/cvmfs/elsewhere/x", "ü/x y"]),
    ),
    st.builds(Op, st.just("remove"), paths),
    st.builds(Op, st.just("marker"), paths),
    st.builds(Op, st.just("unmark"), paths),
    st.builds(Op, st.just("link"), paths, other=paths),
)


def _parents(path: str) -> list[str]:
    parts = path.split("/")[1:]
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def _leaf_allowed(tree: Tree, path: str) -> bool:
    """The writer's rules: parents must be (or become) directories; a leaf never replaces a dir."""
    if any(tree.get(parent, ("dir",))[0] != "dir" for parent in _parents(path)):
        return False
    return tree.get(path, ("none",))[0] != "dir"


def _imply_parents(tree: Tree, path: str) -> None:
    for parent in _parents(path):
        tree.setdefault(parent, ("dir", 0o755, b""))


def apply(op: Op, tree: Tree, transaction: Transaction) -> None:
    """Apply `op` to the model and, if the model accepts it, to the transaction."""
    if op.kind == "file" and _leaf_allowed(tree, op.path):
        _imply_parents(tree, op.path)
        tree[op.path] = ("file", op.mode & 0o777, op.data)  # setuid/setgid are stripped
        transaction.add_file(op.path, op.data, mode=op.mode)
    elif op.kind == "mkdir" and _leaf_allowed(tree, op.path + "/x"):
        _imply_parents(tree, op.path)
        tree[op.path] = ("dir", op.mode, b"")
        transaction.mkdir(op.path, mode=op.mode)
    elif op.kind == "symlink" and _leaf_allowed(tree, op.path):
        _imply_parents(tree, op.path)
        tree[op.path] = ("symlink", 0o777, op.other)
        transaction.symlink(op.path, op.other)
    elif op.kind == "remove" and op.path in tree:
        for path in [p for p in tree if p == op.path or p.startswith(op.path + "/")]:
            del tree[path]
        transaction.remove(op.path)
    elif op.kind == "marker" and _leaf_allowed(tree, op.path + "/.cvmfscatalog"):
        _imply_parents(tree, op.path + "/.cvmfscatalog")
        tree[op.path + "/.cvmfscatalog"] = ("file", 0o644, b"")
        transaction.add_file(op.path + "/.cvmfscatalog", b"")
    elif op.kind == "unmark" and tree.get(op.path + "/.cvmfscatalog", ("",))[0] == "file":
        del tree[op.path + "/.cvmfscatalog"]
        transaction.remove(op.path + "/.cvmfscatalog")
    elif (
        op.kind == "link"
        and tree.get(op.other, ("",))[0] == "file"
        and op.other != op.path
        and _leaf_allowed(tree, op.path)
    ):
        _imply_parents(tree, op.path)
        tree[op.path] = tree[op.other]
        transaction.link(op.other, op.path)


@settings(PROPERTY_SETTINGS, max_examples=40)
@given(st.lists(st.lists(operations, min_size=1, max_size=8), min_size=1, max_size=4))
def test_random_transactions_read_back_exactly(batches: list[list[Op]]) -> None:
    keys = _shared_keys()
    with tempfile.TemporaryDirectory() as directory:
        writer, storage = new_repository(directory, keys)
        tree: Tree = {}
        snapshots: dict[int, Tree] = {1: {}}
        for batch in batches:
            with writer.transaction() as transaction:
                for op in batch:
                    apply(op, tree, transaction)
                result = transaction.publish()
            snapshots[result.revision] = dict(tree)
            reader = RepositoryReader(storage, FQRN, [keys.master_public_pem])
            assert reader.revision == result.revision
            assert read_tree(reader, tree) == tree
            report = fsck(reader)
            assert report.ok, [str(p) for p in report.problems]
        reader = RepositoryReader(storage, FQRN, [keys.master_public_pem])
        for revision, snapshot in snapshots.items():
            view = reader.at_revision(revision)
            assert read_tree(view, snapshot) == snapshot, f"revision {revision}"
        report = fsck(reader, all_revisions=True)
        assert report.ok, [str(p) for p in report.problems]


# -- tarballs: a random valid tree round-trips; one bad member anywhere publishes nothing -------


def _tar_member(path: str, kind: str, mode: int, payload: bytes | str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path.lstrip("/"))
    info.mtime = 1704067200
    info.mode = mode
    if kind == "dir":
        info.type = tarfile.DIRTYPE
    elif kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = str(payload)
    else:
        info.size = len(payload)
    return info


def _tarball(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _valid_members(tree: Tree) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for path in sorted(tree):  # parents sort before their children
        kind, mode, payload = tree[path]
        data = payload if kind == "file" and isinstance(payload, bytes) else None
        members.append((_tar_member(path, kind, mode, payload), data))
    return members


def _bad_member(kind: str) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    if kind == "dotdot":
        return [(_tar_member("/../escape", "file", 0o644, b"x"), b"x")]
    if kind == "absolute":
        info = _tar_member("/x", "file", 0o644, b"x")
        info.name = "/etc/evil"
        return [(info, b"x")]
    if kind == "through-symlink":
        return [
            (_tar_member("/zz-link", "symlink", 0o777, "/tmp"), None),
            (_tar_member("/zz-link/evil", "file", 0o644, b"x"), b"x"),
        ]
    # a device node is published as a special file, but nothing may be written below one
    device = _tar_member("/zz-device", "file", 0o644, b"")
    device.type = tarfile.CHRTYPE
    return [(device, None), (_tar_member("/zz-device/evil", "file", 0o644, b"x"), b"x")]


def _random_tree(draw: st.DrawFn) -> Tree:
    tree: Tree = {}
    for path in draw(st.lists(paths, max_size=8, unique=True)):
        if not _leaf_allowed(tree, path):
            continue
        _imply_parents(tree, path)
        if draw(st.booleans()):
            tree[path] = ("file", draw(st.sampled_from([0o644, 0o755])), draw(contents))
        else:
            tree[path] = ("symlink", 0o777, draw(st.sampled_from(["a", "b/x y"])))
    return tree


@st.composite
def trees_with_bad_member(draw: st.DrawFn) -> tuple[Tree, str, int]:
    tree = _random_tree(draw)
    bad = draw(st.sampled_from(["dotdot", "absolute", "through-symlink", "below-device"]))
    position = draw(st.integers(0, len(tree)))
    return tree, bad, position


@PROPERTY_SETTINGS
@given(trees_with_bad_member())
def test_tarball_with_one_bad_member_publishes_nothing(case: tuple[Tree, str, int]) -> None:
    keys = _shared_keys()
    tree, bad, position = case
    members = _valid_members(tree)
    poisoned = members[:position] + _bad_member(bad) + members[position:]
    with tempfile.TemporaryDirectory() as directory:
        writer, storage = new_repository(directory, keys)
        manifest = storage.get(".cvmfspublished")
        with pytest.raises(TarballError), writer.transaction() as transaction:
            import_tarball(transaction, io.BytesIO(_tarball(poisoned)))
            transaction.publish()
        assert storage.get(".cvmfspublished") == manifest
        # The same tree without the bad member imports and reads back exactly.
        with writer.transaction() as transaction:
            import_tarball(transaction, io.BytesIO(_tarball(members)))
            transaction.publish()
        reader = RepositoryReader(storage, FQRN, [keys.master_public_pem])
        assert read_tree(reader, tree) == tree
        assert fsck(reader).ok
