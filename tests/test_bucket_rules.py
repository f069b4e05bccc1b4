"""The bucket rules alone: each case of `service.bucket_rules` and the planner that applies them."""

from __future__ import annotations

import unicodedata

import pytest

from service.bucket_rules import Refused, Target, key_verdict, resolve_collisions, target_of
from service.bucket_sync import BucketObject, PlanInputs, Put, Remove, plan_changes
from service.repositories import FileProvenance

FQRN = "rules.example.org"


def verdict(key: str, size: int = 1) -> Target | Refused | None:
    return key_verdict(key, size, fqrn=FQRN, max_object_bytes=100)


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("cvmfs/a\x01b", "control character"),
        ("cvmfs/line\nbreak", "control character"),
        ("cvmfs/c1\x85", "control character"),
        ("cvmfs/bad\udcff", "not valid UTF-8"),
        ("cvmfs/a//x", "empty"),
        ("cvmfs/./x", "'.'"),
        ("cvmfs/a/../x", "'..'"),
        ("cvmfs/" + "n" * 256, "longer than 255"),
        ("cvmfs/.cvmfs/x", "reserved"),
        ("cvmfs/x/.cvmfsautocatalog", "catalog marker"),
        ("cvmfs/x/.cvmfscatalog/y", "catalog marker"),
        ("cvmfs/x/.cvmfscatalog.cvmfs.tar", "catalog marker"),
        ("cvmfs/big", "above the limit of 100"),
    ],
)
def test_keys_refused_alone(key: str, words: str) -> None:
    result = verdict(key, 101 if key.endswith("big") else 1)
    assert isinstance(result, Refused) and words in result.reason, result
    assert result.other_key is None


def test_folder_objects_are_ignored_unless_they_hold_bytes() -> None:
    assert verdict("cvmfs/dir/", 0) is None
    assert verdict("cvmfs/", 0) is None
    held = verdict("cvmfs/dir/", 5)
    assert isinstance(held, Refused) and "folder" in held.reason


def test_client_path_limit_counts_the_mount_point() -> None:
    deep = "cvmfs/" + "/".join(["d" * 200] * 20) + "/" + "f" * 60
    assert len(deep) < 4096  # the key alone would do; /cvmfs/<fqrn> on top would not
    result = verdict(deep)
    assert isinstance(result, Refused) and "PATH_MAX" in result.reason
    assert isinstance(verdict("cvmfs/" + "/".join(["d" * 200] * 5)), Target)


def test_plain_and_odd_but_fine_names() -> None:
    assert verdict("cvmfs/x/.cvmfscatalog") == Target(
        "cvmfs/x/.cvmfscatalog", "/x/.cvmfscatalog", False
    )
    assert verdict("cvmfs/a/.cvmfs.tar") == Target("cvmfs/a/.cvmfs.tar", "/a/.cvmfs.tar", False)
    assert verdict("cvmfs/sw.cvmfs.tgz") == Target("cvmfs/sw.cvmfs.tgz", "/sw", True)
    assert target_of("cvmfs/a/b.cvmfs.tar.zst") == ("/a/b", True)


def targets(*keys: str) -> list[Target]:
    found = [verdict(key) for key in keys]
    assert all(isinstance(t, Target) for t in found)
    return [t for t in found if isinstance(t, Target)]


def losers(*keys: str) -> dict[str, str | None]:
    _kept, refused = resolve_collisions(targets(*keys))
    return {r.key: r.other_key for r in refused}


def test_file_and_directory_at_one_path_the_directory_wins() -> None:
    assert losers("cvmfs/adv/conflict", "cvmfs/adv/conflict/child.txt", "cvmfs/ok") == {
        "cvmfs/adv/conflict": "cvmfs/adv/conflict/child.txt"
    }
    assert losers("cvmfs/a", "cvmfs/a/b/c", "cvmfs/a/b") == {
        "cvmfs/a": "cvmfs/a/b",
        "cvmfs/a/b": "cvmfs/a/b/c",
    }
    assert losers("cvmfs/x", "cvmfs/x/t.cvmfs.tar") == {"cvmfs/x": "cvmfs/x/t.cvmfs.tar"}


def test_a_tarball_owns_its_directory() -> None:
    assert losers("cvmfs/sw.cvmfs.tar", "cvmfs/sw/readme", "cvmfs/sw") == {
        "cvmfs/sw/readme": "cvmfs/sw.cvmfs.tar",
        "cvmfs/sw": "cvmfs/sw.cvmfs.tar",
    }
    assert losers("cvmfs/sw.cvmfs.tgz", "cvmfs/sw.cvmfs.tar", "cvmfs/sw/in.cvmfs.tar") == {
        "cvmfs/sw.cvmfs.tgz": "cvmfs/sw.cvmfs.tar",
        "cvmfs/sw/in.cvmfs.tar": "cvmfs/sw.cvmfs.tar",
    }


def test_names_equal_under_nfc_keep_the_nfc_spelling() -> None:
    nfc = unicodedata.normalize("NFC", "é")
    nfd = unicodedata.normalize("NFD", "é")
    assert nfc != nfd
    result = losers(f"cvmfs/{nfd}/x", f"cvmfs/{nfc}/y", f"cvmfs/{nfd}/z", "cvmfs/e/w")
    assert result == {f"cvmfs/{nfd}/x": f"cvmfs/{nfc}/y", f"cvmfs/{nfd}/z": f"cvmfs/{nfc}/y"}


def obj(key: str, etag: str = "e1", size: int = 1) -> BucketObject:
    return BucketObject(key=key, etag=etag, size=size, last_modified=0, headed=True)


def record(key: str, path: str, etag: str = "e1") -> FileProvenance:
    return FileProvenance(
        path=path, s3_key=key, etag=etag, version_id=None, size_bytes=1, revision=2
    )


def test_a_batch_decides_with_what_the_registry_knows() -> None:
    """`cvmfs/a` was published; a batch brings `cvmfs/a/b`: /a goes, /a/b comes, /a is refused
    naming the pair; when `cvmfs/a/b` goes again, `cvmfs/a` is read and published again."""
    plan = plan_changes(
        PlanInputs(
            fqrn=FQRN,
            truth={"cvmfs/a/b": obj("cvmfs/a/b")},
            published={"/a": record("cvmfs/a", "/a")},
        )
    )
    assert [(type(c), c.path) for c in plan.changes] == [(Put, "/a/b"), (Remove, "/a")]
    assert [(r.key, r.other_key) for r in plan.refused] == [("cvmfs/a", "cvmfs/a/b")]

    later = plan_changes(
        PlanInputs(
            fqrn=FQRN,
            truth={"cvmfs/a/b": None},
            published={"/a/b": record("cvmfs/a/b", "/a/b")},
            stored={r.key: r for r in plan.refused},
        )
    )
    assert [(type(c), c.path) for c in later.changes] == [(Remove, "/a/b")]
    assert later.needs_head == ["cvmfs/a"] and later.refused == []


def test_an_absent_key_never_removes_a_directory_others_need() -> None:
    plan = plan_changes(
        PlanInputs(
            fqrn=FQRN,
            truth={"cvmfs/a": None, "cvmfs/a/": None},
            published={"/a/b": record("cvmfs/a/b", "/a/b")},
        )
    )
    assert plan.changes == [] and plan.unchanged == 1
