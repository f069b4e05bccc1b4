"""What a bucket can hold that a repository cannot, and the one rule that settles each case.

A bucket is a flat set of keys; a repository is a POSIX tree. Before any transaction the sync
plan asks `key_verdict` about every key alone, then `resolve_collisions` about the keys that
passed, together. Both are pure functions of the keys present in the bucket (and, for the
per-key rules, of the object's size), so `sync` (a batch of keys plus what the registry knows
of the rest) and `reconcile` (a listing) give the same answer and a second reconcile publishes
nothing. What loses is refused with its reason; a refusal caused by a pair of keys names both.

Per key (`key_verdict`), first match wins:

| case                                                   | rule                               |
|--------------------------------------------------------|------------------------------------|
| key not valid UTF-8 (lone surrogates)                  | refused                            |
| control character in the key (U+0000-001F, 007F-009F)  | refused                            |
| key ending in `/` ("folder" object a console made),    | ignored: creates nothing (S3 has   |
| `cvmfs/` itself included, zero bytes                   | no directories; a path's keys do)  |
| key ending in `/` with content                         | refused (a folder holds no bytes)  |
| `//`, `.` or `..` component, leading `/`, name over    | refused                            |
| 255 bytes (NAME_MAX)                                   |                                    |
| `/cvmfs/<fqrn>/<path>` of 4096 bytes or more (the      | refused                            |
| kernel's PATH_MAX, NUL included, on every client)      |                                    |
| path under `/.cvmfs` (reserved by CVMFS, spec §7)      | refused                            |
| a component `.cvmfsautocatalog`, or `.cvmfscatalog`    | refused (the publisher's own       |
| other than as a plain file's name                      | markers); a `.cvmfscatalog` file   |
|                                                        | makes a nested catalog, as stock   |
| object above `sync.max_object_bytes`                   | refused                            |

Between keys (`resolve_collisions`), in this order, each on the keys the previous ones kept:

| case                                                   | winner                             |
|--------------------------------------------------------|------------------------------------|
| names equal after Unicode NFC normalization in one     | the name already in NFC, else the  |
| directory (`é` as U+00E9 and as e + U+0301)            | smallest; every key below the      |
|                                                        | other name is refused              |
| a tarball `cvmfs/<d>.cvmfs.tar*` and any other key at  | the tarball: it owns `/<d>` and    |
| `/<d>` or below (plain keys, other tarballs for the    | all below; of two tarballs the     |
| same or a nested directory)                            | outer one, then the smallest key   |
| the same path as file and as directory                 | the directory: the file key is     |
| (`cvmfs/a` and `cvmfs/a/b`, or `cvmfs/a` and a         | refused, naming a key below it     |
| tarball unpacked into `/a/...`)                        |                                    |
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from bridge.errors import RejectedMessage
from bridge.s3_events import repository_path_for_key

TARBALL_SUFFIXES = (".cvmfs.tar", ".cvmfs.tar.gz", ".cvmfs.tgz", ".cvmfs.tar.xz", ".cvmfs.tar.zst")
CATALOG_MARKER = ".cvmfscatalog"
AUTO_CATALOG_MARKER = ".cvmfsautocatalog"
RESERVED_TOP_LEVEL = ".cvmfs"
CLIENT_MOUNT = "/cvmfs/"
# Linux PATH_MAX counts the terminating NUL: a client resolves /cvmfs/<fqrn>/<path> in full.
CLIENT_PATH_MAX_BYTES = 4096

RefusalKind = Literal["key", "pair", "content"]


@dataclass(frozen=True)
class Refused:
    """A key that is not published, and why. `kind`: the key alone (`key`), a collision with
    `other_key` (`pair`), or what the object holds (`content`, e.g. a tarball that escapes)."""

    key: str
    reason: str
    other_key: str | None = None
    kind: RefusalKind = "key"
    etag: str | None = None  # the object version a `content` refusal judged


@dataclass(frozen=True)
class Target:
    """A key that passed the per-key rules: where it goes and whether it is a tarball."""

    key: str
    path: str
    tarball: bool


def tarball_directory(path: str) -> str | None:
    """`/sw/gcc.cvmfs.tar.gz` → `/sw/gcc`; None when `path` is not a tarball by convention
    (`/sw/.cvmfs.tar`, with no name before the suffix, is a plain file)."""
    for suffix in TARBALL_SUFFIXES:
        if path.endswith(suffix):
            directory = path[: -len(suffix)]
            if directory and not directory.endswith("/"):
                return directory
    return None


def target_of(key: str) -> tuple[str, bool]:
    """Repository path of a key and whether it is an unpacked tarball; RejectedMessage if unsafe."""
    path = repository_path_for_key(key)
    directory = tarball_directory(path)
    return (directory, True) if directory is not None else (path, False)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # exactly Unicode category Cc


def _control_character(key: str) -> str | None:
    found = _CONTROL.search(key)
    return found.group() if found else None


def key_verdict(
    key: str, size: int, *, fqrn: str, max_object_bytes: int | None = None
) -> Target | Refused | None:
    """The per-key rules (module docstring): a Target, a refusal, or None (ignored folder)."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return Refused(key, "the key is not valid UTF-8: rename the object")
    char = _control_character(key)
    if char is not None:
        return Refused(key, f"the key contains the control character {char!r}: rename the object")
    if key.endswith("/"):
        if size == 0:
            return None
        return Refused(
            key,
            f"a key ending in '/' is a folder and cannot hold content ({size} bytes): "
            "upload the content under a file name",
        )
    try:
        path, tarball = target_of(key)
    except RejectedMessage as refusal:
        return Refused(key, refusal.reason)
    full = len((CLIENT_MOUNT + fqrn + path).encode("utf-8"))
    if full >= CLIENT_PATH_MAX_BYTES:
        return Refused(
            key,
            f"/cvmfs/{fqrn}{path[:40]}... is {full} bytes; clients cannot open paths of "
            f"{CLIENT_PATH_MAX_BYTES} bytes or more (PATH_MAX): use a shorter path",
        )
    parts = path.split("/")[1:]
    if parts[0] == RESERVED_TOP_LEVEL:
        return Refused(
            key, f"/{RESERVED_TOP_LEVEL} is reserved by CVMFS for itself: publish elsewhere"
        )
    for index, part in enumerate(parts):
        is_file_name = index == len(parts) - 1 and not tarball
        if part == AUTO_CATALOG_MARKER or (part == CATALOG_MARKER and not is_file_name):
            return Refused(
                key,
                f"{part!r} is the name of the publisher's catalog marker; only a file named "
                f"{CATALOG_MARKER!r} may be uploaded (it makes its directory a nested catalog)",
            )
    if max_object_bytes is not None and size > max_object_bytes:
        return Refused(
            key,
            f"object is {size} bytes, above the limit of {max_object_bytes} "
            "(settings sync.max_object_bytes): split it or ask the operators",
        )
    return Target(key=key, path=path, tarball=tarball)


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _normalization_losers(targets: list[Target]) -> dict[str, Refused]:
    """Rule 1: in each directory, names equal under NFC keep one spelling.

    One pass over every (directory, name) the keys imply; groups of more than one spelling
    are settled outermost first (a key below a losing spelling is refused for that one)."""
    if all(t.path.isascii() for t in targets):
        return {}  # distinct ASCII names never normalize to each other
    # (parent path as spelled, NFC name) -> {spelling: keys below it}
    spellings: dict[tuple[str, str], dict[str, list[str]]] = {}
    for target in targets:
        parent = ""
        for name in target.path.split("/")[1:]:
            normal = name if name.isascii() else _nfc(name)
            group = spellings.setdefault((parent, normal), {})
            group.setdefault(name, []).append(target.key)
            parent = f"{parent}/{name}"
    refused: dict[str, Refused] = {}
    collisions = [(k, names) for k, names in spellings.items() if len(names) > 1]
    for (parent, normal), names in sorted(collisions, key=lambda c: c[0][0].count("/")):
        winner = normal if normal in names else min(names)
        witness = min(names[winner])
        for name, keys in names.items():
            if name == winner:
                continue
            for key in keys:
                refused.setdefault(
                    key,
                    Refused(
                        key,
                        f"{parent}/{name!r} and {parent}/{winner!r} differ only by Unicode "
                        f"normalization (as in {witness!r}); clients would show two entries "
                        "that look the same: the NFC spelling is kept, rename this key",
                        other_key=witness,
                        kind="pair",
                    ),
                )
    return refused


def _outermost_owner(path: str, owners: dict[str, Target]) -> Target | None:
    """The owning tarball at `path` or above it, outermost first."""
    if not owners:
        return None
    prefix = ""
    for name in path.split("/")[1:]:
        prefix = f"{prefix}/{name}"
        owner = owners.get(prefix)
        if owner is not None:
            return owner
    return None


def _tarball_losers(targets: list[Target]) -> dict[str, Refused]:
    """Rule 2: a tarball owns its directory and everything below it."""
    owners: dict[str, Target] = {}
    refused: dict[str, Refused] = {}

    def refuse(target: Target, owner: Target) -> None:
        refused[target.key] = Refused(
            target.key,
            f"{target.path} is inside {owner.path}, which the tarball {owner.key!r} fills: "
            "put the content into the tarball, or delete one of the two",
            other_key=owner.key,
            kind="pair",
        )

    tarballs = sorted((t for t in targets if t.tarball), key=lambda t: (t.path.count("/"), t.key))
    for tarball in tarballs:
        owner = _outermost_owner(tarball.path, owners)
        if owner is None:
            owners[tarball.path] = tarball
        else:
            refuse(tarball, owner)
    for target in targets:
        if not target.tarball:
            owner = _outermost_owner(target.path, owners)
            if owner is not None:
                refuse(target, owner)
    return refused


def directories_of(paths: Iterable[str]) -> set[str]:
    """Every directory above the given paths (not the root '')."""
    directories: set[str] = set()
    for path in paths:
        cut = path.rfind("/")
        while cut > 0:
            parent = path[:cut]
            if parent in directories:
                break  # and so are all above it
            directories.add(parent)
            cut = path.rfind("/", 0, cut)
    return directories


def _file_directory_losers(targets: list[Target]) -> dict[str, Refused]:
    """Rule 3: a path that is a directory for some key is not a file for another."""
    below: dict[str, str] = {}  # directory path -> smallest key that needs it
    for target in sorted(targets, key=lambda t: t.key):
        cut = target.path.rfind("/")
        while cut > 0:
            parent = target.path[:cut]
            if parent in below:
                break  # a smaller key needs it, and all above it
            below[parent] = target.key
            cut = target.path.rfind("/", 0, cut)
    refused: dict[str, Refused] = {}
    for target in targets:
        if target.tarball or target.path not in below:
            continue
        other = below[target.path]
        refused[target.key] = Refused(
            target.key,
            f"{target.path} is a directory because of {other!r}, so {target.key!r} cannot "
            "be a file there: rename or delete one of the two",
            other_key=other,
            kind="pair",
        )
    return refused


def resolve_collisions(targets: Iterable[Target]) -> tuple[list[Target], list[Refused]]:
    """The rules between keys (module docstring): (kept targets, refusals), by key order."""
    remaining = sorted(targets, key=lambda t: t.key)
    refusals: list[Refused] = []
    for rule in (_normalization_losers, _tarball_losers, _file_directory_losers):
        losers = rule(remaining)
        refusals.extend(losers.values())
        remaining = [t for t in remaining if t.key not in losers]
    return remaining, sorted(refusals, key=lambda r: r.key)
