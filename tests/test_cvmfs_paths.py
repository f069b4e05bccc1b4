"""Tests of repository path, name, symlink-target and mode validation (cvmfs/paths.py)."""

from __future__ import annotations

import stat

import pytest

from cvmfs.errors import CvmfsError, InvalidPathError
from cvmfs.paths import (
    ROOT,
    ancestors,
    has_setid_bits,
    is_within,
    join,
    parent_of,
    relative_parts,
    repository_path,
    resolve_symlink,
    sanitize_mode,
    split_parent,
    validate_name,
    validate_repository_name,
    validate_symlink_target,
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("", ""),
        ("/", ""),
        ("/a", "/a"),
        ("/a/b/c.txt", "/a/b/c.txt"),
        ("/names/file with spaces.txt", "/names/file with spaces.txt"),
        ("/names/ünïcødé-ファイル.txt", "/names/ünïcødé-ファイル.txt"),
        ("/.cvmfscatalog", "/.cvmfscatalog"),
        ("/a/.cvmfs", "/a/.cvmfs"),  # only the top-level /.cvmfs is reserved
        ("/.cvmfsx", "/.cvmfsx"),
        ("/a/" + "x" * 255, "/a/" + "x" * 255),
        ("/bad-utf8-\udcff", "/bad-utf8-\udcff"),  # raw byte 0xff via surrogateescape
    ],
)
def test_valid_repository_paths(given: str, expected: str) -> None:
    assert repository_path(given) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("a/b", "relative"),
        ("//a", "empty name"),
        ("/a//b", "empty name"),
        ("/a/", "empty name"),
        ("/a/./b", "'.'"),
        ("/a/../b", "'..'"),
        ("/..", "'..'"),
        ("/a\0b", "NUL"),
        ("/" + "x" * 256, "256 bytes long"),
        ("/" + "é" * 128, "256 bytes long"),  # 128 characters, 256 bytes
        ("/.cvmfs", "reserves"),
        ("/.cvmfs/x", "reserves"),
    ],
)
def test_invalid_repository_paths_say_what_is_wrong(given: str, message: str) -> None:
    with pytest.raises(InvalidPathError, match=message):
        repository_path(given)


def test_invalid_path_error_is_in_the_package_hierarchy() -> None:
    with pytest.raises(CvmfsError):
        repository_path("relative")


@pytest.mark.parametrize("given", ["", ".", "..", "a/b", "a\0", "x" * 256])
def test_invalid_names(given: str) -> None:
    with pytest.raises(InvalidPathError):
        validate_name(given)


def test_relative_parts() -> None:
    assert relative_parts("") == ()
    assert relative_parts("a/b/c") == ("a", "b", "c")
    with pytest.raises(InvalidPathError, match="absolute where a relative"):
        relative_parts("/a/b")
    for bad in ("a/../b", "./a", "a//b", "a/"):
        with pytest.raises(InvalidPathError):
            relative_parts(bad)


def test_join() -> None:
    assert join("", "a/b") == "/a/b"
    assert join("/", "a") == "/a"
    assert join("/sw/pkg", ("bin", "tool")) == "/sw/pkg/bin/tool"
    assert join("/sw", "") == "/sw"
    with pytest.raises(InvalidPathError):
        join("/sw", "../etc")
    with pytest.raises(InvalidPathError):
        join("/sw", ("a", ".."))
    with pytest.raises(InvalidPathError, match="reserves"):
        join("", ".cvmfs/x")
    with pytest.raises(InvalidPathError, match="relative"):
        join("sw", "a")


def test_parents() -> None:
    assert split_parent("/a/b/c") == ("/a/b", "c")
    assert split_parent("/a") == ("", "a")
    assert parent_of("/a/b") == "/a"
    assert ancestors("/a/b/c") == ["", "/a", "/a/b"]
    assert ancestors("/a") == [""]
    assert ancestors(ROOT) == []
    with pytest.raises(InvalidPathError, match="root has no parent"):
        split_parent(ROOT)


def test_is_within_is_component_wise() -> None:
    assert is_within("/a/b", "/a")
    assert is_within("/a", "/a")
    assert is_within("/a", ROOT)
    assert not is_within("/ab", "/a")
    assert not is_within("/a", "/a/b")


@pytest.mark.parametrize(
    ("link", "target", "expected"),
    [
        ("/links/relative", "../hello.txt", "/hello.txt"),
        ("/links/to-dir", "../a/b", "/a/b"),
        ("/links/dangling", "does-not-exist", "/links/does-not-exist"),
        ("/a/b/link", "./c/../d", "/a/b/d"),
        ("/top", "..", None),
        ("/a/link", "../../etc/passwd", None),
        ("/links/absolute", "/cvmfs/golden.example.org/hello.txt", None),
        ("/a/link", "..", ""),
    ],
)
def test_resolve_symlink(link: str, target: str, expected: str | None) -> None:
    assert resolve_symlink(link, target) == expected


def test_symlink_targets() -> None:
    assert validate_symlink_target("../hello.txt") == "../hello.txt"
    assert validate_symlink_target("/abs") == "/abs"
    assert validate_symlink_target("$(ARCH)/lib", allow_variables=True) == "$(ARCH)/lib"
    with pytest.raises(InvalidPathError, match="expand"):
        validate_symlink_target("$(ARCH)/lib")
    with pytest.raises(InvalidPathError, match="empty"):
        validate_symlink_target("")
    with pytest.raises(InvalidPathError, match="NUL"):
        validate_symlink_target("a\0b")
    with pytest.raises(InvalidPathError, match="4095"):
        validate_symlink_target("x" * 4096)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (0o644, 0o644),
        (0o755, 0o755),
        (0o4755, 0o755),  # setuid
        (0o2755, 0o755),  # setgid
        (0o1777, 0o1777),  # sticky: kept, as the stock publisher keeps it (/tmp)
        (0o7777, 0o1777),
        (stat.S_IFREG | 0o4711, 0o711),  # a full st_mode: the type is dropped too
        (stat.S_IFDIR | 0o2775, 0o775),
        (stat.S_IFDIR | 0o1777, 0o1777),
    ],
)
def test_sanitize_mode_strips_setuid_setgid_and_keeps_sticky(mode: int, expected: int) -> None:
    assert sanitize_mode(mode) == expected
    assert has_setid_bits(mode) == (mode & 0o6000 != 0)


@pytest.mark.parametrize("name", ["golden.example.org", "a", "sft.cern.ch", "x_y-z", "a" * 60])
def test_valid_repository_names(name: str) -> None:
    assert validate_repository_name(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a/b", "a b", "a" * 61, "ä.org"])
def test_invalid_repository_names(name: str) -> None:
    with pytest.raises(InvalidPathError, match="repository name"):
        validate_repository_name(name)
