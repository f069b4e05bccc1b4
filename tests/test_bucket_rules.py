"""The bucket rules alone: each case of `buckets.bucket_rules` and the planner that applies them."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from buckets.bucket_rules import Refused, Target, key_verdict, resolve_collisions, target_of
from buckets.bucket_sync import BucketObject, Plan, PlanInputs, Put, Remove, plan_changes
from buckets.plan_scope import NFC_AMBIGUOUS_ASCII, chain_of, focus_of, scope_for
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


# ----------------------------------------------- the planner alone: batch == reconcile, many cases
NAMES = ["a", "b", unicodedata.normalize("NFC", "é"), unicodedata.normalize("NFD", "é")]
_keys = st.builds(
    lambda parts, suffix: "cvmfs/" + "/".join(parts) + suffix,
    st.lists(st.sampled_from(NAMES), min_size=1, max_size=3),
    st.sampled_from(["", "", "", ".cvmfs.tar", "/"]),
)
_states = st.dictionaries(_keys, st.sampled_from(["e1", "e2"]), max_size=6)


def _apply(published: dict[str, FileProvenance], plan: Plan) -> dict[str, FileProvenance]:
    """What record_provenance does with a published plan (removed paths, then added ones)."""
    after = dict(published)
    for change in plan.changes:
        if isinstance(change, Remove):
            after.pop(change.path, None)
    for change in plan.changes:
        if isinstance(change, Put):
            after[change.path] = record(change.key, change.path, change.obj.etag)
    return after


def _objects(state: dict[str, str], keys: Iterable[str]) -> dict[str, BucketObject | None]:
    return {k: obj(k, state[k], 0 if k.endswith("/") else 1) if k in state else None for k in keys}


def _decide(inputs: PlanInputs, state: dict[str, str]) -> Plan:
    """plan_changes, then again with the keys it needs read (read_what_the_plan_needs)."""
    plan = plan_changes(inputs)
    if plan.needs_head:
        inputs.truth.update(_objects(state, plan.needs_head))
        plan = plan_changes(inputs)
    assert not plan.needs_head
    return plan


def _scoped_decision(
    truth: dict[str, BucketObject | None],
    published: dict[str, FileProvenance],
    stored: dict[str, Refused],
    state: dict[str, str],
) -> Plan | None:
    """What plan_sync decides from the rows its scope reads (None: it reads every row)."""
    scope = scope_for(truth, stored)
    if scope is None:
        return None
    near = {path: r for path, r in published.items() if scope.contains(path)}
    inputs = PlanInputs(FQRN, dict(truth), near, stored)
    inputs.unchanged_elsewhere = len(published) - len(near)
    return _decide(inputs, state)


def _plan_checked_against_scope(
    truth: dict[str, BucketObject | None],
    published: dict[str, FileProvenance],
    stored: dict[str, Refused],
    state: dict[str, str],
) -> Plan:
    """The plan from every row; the plan from the batch's scope, when it has one, must equal it."""
    scoped = _scoped_decision(truth, published, stored, state)
    plan = _decide(PlanInputs(FQRN, dict(truth), published, stored), state)
    if scoped is not None:
        assert scoped.changes == plan.changes
        assert scoped.refused == plan.refused
        assert (scoped.unchanged, scoped.ignored) == (plan.unchanged, plan.ignored)
    return plan


@given(states=st.lists(_states, min_size=1, max_size=4))
@hypothesis_settings(max_examples=300, deadline=None, database=None)
def test_a_batch_plan_leaves_nothing_for_a_reconcile(states: list[dict[str, str]]) -> None:
    """Bucket states in sequence, each synced as the batch of keys that changed, with what the
    registry knows; a reconcile plan (every key listed) after each finds nothing to change
    and the same refusals. A batch planned from the rows its scope reads decides the same."""
    published: dict[str, FileProvenance] = {}
    stored: dict[str, Refused] = {}
    before: dict[str, str] = {}
    for state in states:
        changed = {k for k in before.keys() | state.keys() if before.get(k) != state.get(k)}
        truth = _objects(state, changed)
        plan = _plan_checked_against_scope(truth, published, stored, state)
        published = _apply(published, plan)
        stored = {r.key: r for r in plan.refused}
        listing = _objects(state, state)
        listing.update({r.s3_key: None for r in published.values() if r.s3_key not in state})
        check = plan_changes(PlanInputs(FQRN, listing, published, stored))
        assert check.changes == [] and check.needs_head == [], (state, check.changes)
        assert {r.key for r in check.refused} == set(stored)
        before = state


# Mostly names with one spelling, so most batches are planned from their scope, in a bucket
# that also holds names with two (NFC pairs, the Kelvin sign and 'K').
_SCOPED_NAMES = ["a", "b", "c", "K", "\u212a", unicodedata.normalize("NFD", "é")]
_scoped_keys = st.builds(
    lambda parts, suffix: "cvmfs/" + "/".join(parts) + suffix,
    st.lists(
        st.sampled_from(_SCOPED_NAMES[:3]) | st.sampled_from(_SCOPED_NAMES), min_size=1, max_size=4
    ),
    st.sampled_from(["", "", "", ".cvmfs.tar", ".cvmfs.tgz", "/"]),
)


@given(
    first=st.dictionaries(_scoped_keys, st.sampled_from(["e1", "e2"]), min_size=1, max_size=12),
    batches=st.lists(
        st.dictionaries(_scoped_keys, st.sampled_from(["e1", "e2", "gone"]), max_size=3),
        min_size=1,
        max_size=4,
    ),
)
@hypothesis_settings(max_examples=400, deadline=None, database=None)
def test_a_batch_planned_from_its_scope_decides_as_from_every_row(
    first: dict[str, str], batches: list[dict[str, str]]
) -> None:
    """A published bucket, then batches of a few keys added, replaced or deleted: the plan
    from the rows buckets/plan_scope.py reads equals the plan from every row, each time."""
    published: dict[str, FileProvenance] = {}
    stored: dict[str, Refused] = {}
    state: dict[str, str] = {}
    for batch in [first, *batches]:
        state = {k: v for k, v in (state | batch).items() if v != "gone"}
        truth = _objects(state, batch)
        plan = _plan_checked_against_scope(truth, published, stored, state)
        published = _apply(published, plan)
        stored = {r.key: r for r in plan.refused}


def test_only_these_ascii_characters_have_another_spelling_under_nfc() -> None:
    """NFC_AMBIGUOUS_ASCII is every ASCII character some other code point normalizes to (a
    string normalizes to ASCII only if each of its characters decomposes to ASCII)."""
    found = {
        unicodedata.normalize("NFD", chr(code))
        for code in range(0x80, 0x110000)
        if not 0xD800 <= code <= 0xDFFF and unicodedata.normalize("NFD", chr(code)).isascii()
    }
    assert found == set(NFC_AMBIGUOUS_ASCII)


@pytest.mark.parametrize(
    ("path", "focus"),
    [
        ("/a/b/c.txt", "/a/b/c.txt"),  # one spelling: the path and what is below it
        ("/a/\u00e9/c.txt", "/a"),  # é may be spelled e + U+0301: every sibling of it
        ("/a/Kconfig", "/a"),  # 'K' may be spelled U+212A
        ("/a/b;c/d", "/a"),
        ("/\u00e9/x", ""),  # at the top: every row
    ],
)
def test_the_scope_of_a_path_widens_at_its_first_name_with_another_spelling(
    path: str, focus: str
) -> None:
    assert focus_of(path) == focus
    scope = scope_for([f"cvmfs{path}"], {})
    if not focus:
        assert scope is None
    else:
        assert scope is not None and scope.focus == {focus}
        assert scope.exact == chain_of([focus])
        assert "/a" in scope.exact and not scope.contains("/b")


def test_a_runs_summary_counts_what_it_changes() -> None:
    """The artifact line a dry-run reconcile prints: '4 unchanged' alone hid the file it
    would add."""
    from tasks.sync import change_summary

    obj = BucketObject(key="cvmfs/new.txt", etag="e", size=1, last_modified=0)
    plan = Plan(
        changes=[
            Put(key="cvmfs/new.txt", path="/new.txt", tarball=False, obj=obj),
            Remove(key="cvmfs/old.txt", path="/old.txt", tarball=False),
        ],
        refused=[Refused(key="cvmfs/.cvmfs/x", reason="reserved")],
        unchanged=4,
    )
    assert change_summary("a.example.org", plan, None, dry_run=True) == (
        "a.example.org: dry run, would add 1 and remove 1; 1 refused, 4 unchanged"
    )
    assert change_summary("a.example.org", plan, 7, dry_run=False) == (
        "a.example.org: revision 7; added 1, removed 1; 1 refused, 4 unchanged"
    )
    assert change_summary("a.example.org", Plan(unchanged=4), None, dry_run=False) == (
        "a.example.org: nothing to publish; added 0, removed 0; 0 refused, 4 unchanged"
    )
