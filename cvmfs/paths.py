"""Validation of what a writer is asked to publish: repository paths, names, symlink targets, modes.

Convention: a repository path is absolute in catalog form, '/a/b' ('' is the root), as str whose
non-UTF-8 bytes ride through `surrogateescape` (spec §7: names are raw bytes, never normalised).
"""

from __future__ import annotations

import re
import stat

from cvmfs.errors import InvalidPathError

ROOT = ""  # the repository root in catalog form (spec §2.4: its path hash is MD5 of "")
MAX_NAME_BYTES = 255  # NAME_MAX of every Linux file system; the client cannot show longer names
MAX_SYMLINK_TARGET_BYTES = 4095  # PATH_MAX - 1: the kernel refuses longer link targets
RESERVED_TOP_LEVEL = ".cvmfs"  # spec §7: upstream refuses user content under /.cvmfs
# Spec §7: `is_valid_repo_name`: at most 60 characters, alphanumeric first.
_REPOSITORY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,59}")
# Setuid and setgid bits are stripped, never published (the stock publisher keeps them). Clients
# mount `nosuid` (spec §7) so the bits could never take effect on a client; they would only make
# the tree look privileged and become live again wherever someone copies it out with `cp -a` or
# `rsync -p` as root. Importers report the paths that lost them. The sticky bit is kept, as the
# stock publisher keeps it: it grants nothing, and an image's /tmp (01777) needs it.
SETID_BITS = stat.S_ISUID | stat.S_ISGID


def raw_bytes(text: str) -> bytes:
    """The bytes a name or path stands for (spec §7: raw bytes; surrogateescape round trip)."""
    return text.encode("utf-8", "surrogateescape")


def validate_name(name: str, *, context: str | None = None) -> str:
    """One path component: not empty, not '.' or '..', no '/' or NUL, at most 255 bytes."""
    where = f" in {context!r}" if context is not None else ""
    if name == "":
        raise InvalidPathError(f"empty name{where}: remove the doubled or trailing '/'")
    if name in (".", ".."):
        raise InvalidPathError(
            f"name {name!r}{where} is not allowed: write the path without '.' and '..'"
        )
    if "\0" in name:
        raise InvalidPathError(f"name {name!r}{where} contains a NUL byte")
    if "/" in name:
        raise InvalidPathError(f"name {name!r}{where} contains '/': pass it as a path instead")
    length = len(raw_bytes(name))
    if length > MAX_NAME_BYTES:
        raise InvalidPathError(
            f"name {name[:40]!r}...{where} is {length} bytes long; "
            f"the limit is {MAX_NAME_BYTES} bytes"
        )
    return name


def _components(path: str, original: str) -> list[str]:
    if "\0" in original:
        raise InvalidPathError(f"path {original!r} contains a NUL byte")
    return [validate_name(part, context=original) for part in path.split("/")]


def _refuse_reserved(path: str, original: str) -> None:
    if path == "/" + RESERVED_TOP_LEVEL or path.startswith(f"/{RESERVED_TOP_LEVEL}/"):
        raise InvalidPathError(
            f"path {original!r} is under /{RESERVED_TOP_LEVEL}, which CVMFS reserves for itself "
            "(spec §7): publish it elsewhere"
        )


def repository_path(path: str) -> str:
    """Validate an absolute repository path and return it in catalog form ('/a/b', '' = root).

    '/' and '' both mean the root. Refused: relative paths, empty components ('//', a trailing
    '/'), '.', '..', NUL, names over 255 bytes and anything under '/.cvmfs'.
    """
    if path in ("", "/"):
        return ROOT
    if not path.startswith("/"):
        raise InvalidPathError(
            f"path {path!r} is relative; repository paths are absolute: write '/{path}'"
        )
    _components(path[1:], path)
    _refuse_reserved(path, path)
    return path


def relative_parts(path: str) -> tuple[str, ...]:
    """Validate a path relative to some directory and return its components ('' = itself).

    Refused: absolute paths, empty components, '.', '..', NUL and names over 255 bytes.
    """
    if path == "":
        return ()
    if path.startswith("/"):
        raise InvalidPathError(
            f"path {path!r} is absolute where a relative path is expected: "
            f"write {path.lstrip('/')!r}"
        )
    return tuple(_components(path, path))


def join(prefix: str, relative: str | tuple[str, ...]) -> str:
    """`relative` (a relative path or its components) below the repository path `prefix`."""
    base = repository_path(prefix)
    parts = relative_parts(relative) if isinstance(relative, str) else relative
    for part in parts:
        validate_name(part, context="/".join(parts))
    joined = base + "".join("/" + part for part in parts)
    _refuse_reserved(joined, joined)
    return joined


def split_parent(path: str) -> tuple[str, str]:
    """(parent, name) of a catalog-form path; the root has no parent and is refused."""
    if path == ROOT:
        raise InvalidPathError("the repository root has no parent directory")
    parent, _, name = path.rpartition("/")
    return parent, name


def parent_of(path: str) -> str:
    """The parent directory of a catalog-form path ('' for '/a')."""
    return split_parent(path)[0]


def ancestors(path: str) -> list[str]:
    """Every directory above `path`, root first: '/a/b/c' -> ['', '/a', '/a/b']."""
    result: list[str] = []
    while path != ROOT:
        path = parent_of(path)
        result.append(path)
    result.reverse()
    return result


def is_within(path: str, ancestor: str) -> bool:
    """True if `path` is `ancestor` or below it, component-wise ('/ab' is not within '/a')."""
    return ancestor == ROOT or path == ancestor or path.startswith(ancestor + "/")


def validate_symlink_target(target: str, *, allow_variables: bool = False) -> str:
    """A symlink target as published: not empty, no NUL, at most 4095 bytes.

    `$(` is refused unless `allow_variables`: the client expands `$(VAR)` in link targets (spec
    §7, variant symlinks), so an imported target containing it would silently point elsewhere.
    """
    if target == "":
        raise InvalidPathError("empty symlink target: a symlink must point somewhere")
    if "\0" in target:
        raise InvalidPathError(f"symlink target {target!r} contains a NUL byte")
    length = len(raw_bytes(target))
    if length > MAX_SYMLINK_TARGET_BYTES:
        raise InvalidPathError(
            f"symlink target is {length} bytes long; the limit is {MAX_SYMLINK_TARGET_BYTES}"
        )
    if not allow_variables and "$(" in target:
        raise InvalidPathError(
            f"symlink target {target!r} contains '$(' which CVMFS clients expand as a variable "
            "(variant symlink); pass allow_variables=True if that is intended"
        )
    return target


def resolve_symlink(link_path: str, target: str) -> str | None:
    """Where a symlink at `link_path` points inside the repository, lexically.

    Returns the catalog-form path, or None if the target climbs above the root or is absolute
    (an absolute target refers to the client's file system, not to the repository).
    """
    if target.startswith("/"):
        return None
    parts = parent_of(link_path).split("/")[1:] if parent_of(link_path) else []
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "".join("/" + part for part in parts)


def sanitize_mode(mode: int) -> int:
    """Permission bits to publish: `mode & 0o1777`; setuid and setgid are stripped.

    Accepts a full `st_mode` or bare permission bits; the file type is not part of the result.
    """
    return stat.S_IMODE(mode) & ~SETID_BITS


def has_setid_bits(mode: int) -> bool:
    """True if `mode` carries setuid or setgid bits that `sanitize_mode` strips."""
    return bool(mode & SETID_BITS)


def validate_repository_name(fqrn: str) -> str:
    """A repository name (spec §7): at most 60 characters of [A-Za-z0-9._-], alphanumeric first."""
    if not _REPOSITORY_NAME.fullmatch(fqrn):
        raise InvalidPathError(
            f"repository name {fqrn!r} is invalid: use at most 60 letters, digits, '.', '-' "
            "or '_', starting with a letter or digit (e.g. 'software.example.org')"
        )
    return fqrn
