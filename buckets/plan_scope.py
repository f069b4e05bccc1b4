"""Which provenance rows a batch's plan needs: the paths on and below the keys it names.

`bucket_rules` settles collisions between keys whose paths are on one line (a file and a
directory at the same path, a tarball and what lies below it) or whose names are equal after
Unicode NFC normalization in one directory. The published tree is consistent (nothing is
published below a file; the rules settled it), so for a key at `/a/b/c` only the rows at `/a`,
`/a/b`, `/a/b/c` and below `/a/b/c` can collide with it, provided no name on its path can have
another spelling under NFC. When one can (`/a/b/é`), its siblings in every spelling can: then
the rows below its directory (`/a/b`) are read instead. Every other row is unchanged by the
batch, and the plan decided from the near rows gives the answer a plan from every row gives
(tests/test_bucket_rules.py compares the two on random buckets). A name at the top that may
have another spelling makes the plan read every row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from bridge.errors import RejectedMessage
from buckets.bucket_rules import Refused, target_of

# A batch naming more keys is planned from every row: a backfill or reconcile names every key of
# its prefix, one listing-sized read is cheaper than thousands of range queries, and seeing
# every row is what a reconcile is for.
MAX_SCOPED_KEYS = 2000

# The ASCII characters that another code point normalizes to under NFC: U+037E GREEK QUESTION
# MARK → ';', U+1FEF GREEK VARIA → '`', U+212A KELVIN SIGN → 'K' (every code point whose
# canonical decomposition is ASCII; tests/test_bucket_rules.py checks the list against the
# running Python's Unicode data). A name of other ASCII characters has one spelling only.
NFC_AMBIGUOUS_ASCII = frozenset(";`K")


def has_one_spelling(name: str) -> bool:
    """True when no other string is equal to `name` under NFC."""
    return name.isascii() and NFC_AMBIGUOUS_ASCII.isdisjoint(name)


def focus_of(path: str) -> str:
    """The directory whose subtree holds every row that can collide with `path`: the path
    itself, or the directory of its first name that may have another spelling (the root '')."""
    if has_one_spelling(path):
        return path
    parent = ""
    for name in path.split("/")[1:]:
        if not has_one_spelling(name):
            return parent
        parent = f"{parent}/{name}"
    return path


def focus_paths(keys: Iterable[str]) -> set[str] | None:
    """The directories whose subtrees a plan for `keys` reads (`focus_of` each key's path;
    keys without a path are left out), or None when one of them is the root: every row."""
    paths: set[str] = set()
    for key in keys:
        try:
            path = target_of(key)[0]
        except RejectedMessage:
            continue  # refused by its key alone: it collides with nothing
        focus = focus_of(path)
        if not focus:
            return None
        paths.add(focus)
    return paths


def chain_of(paths: Iterable[str]) -> set[str]:
    """Each path and every directory above it (not the root)."""
    chain: set[str] = set()
    for path in paths:
        cut = len(path)
        while cut > 0:
            prefix = path[:cut]
            if prefix in chain:
                break  # and so is every directory above it
            chain.add(prefix)
            cut = path.rfind("/", 0, cut)
    return chain


def is_near(path: str, focus: AbstractSet[str], chain: AbstractSet[str]) -> bool:
    """Whether a row at `path` is one a plan for `focus` reads (`chain` = chain_of(focus))."""
    if path in chain:
        return True
    cut = path.rfind("/")
    while cut > 0:
        if path[:cut] in focus:
            return True
        cut = path.rfind("/", 0, cut)
    return False


@dataclass(frozen=True)
class PlanScope:
    """The rows a plan reads: those at `exact` (each focus path, the directories above it,
    the paths of stored refusals) and those below each path of `focus`."""

    focus: frozenset[str]
    exact: frozenset[str]

    def contains(self, path: str) -> bool:
        return is_near(path, self.focus, self.exact)


def scope_for(keys: Iterable[str], stored: Mapping[str, Refused]) -> PlanScope | None:
    """The scope of a plan for the bucket `keys` a batch read, or None: read every row.

    A refusal for a pair of keys is decided again by every plan, so its key is a focus too;
    other stored refusals stay as they are, and only their own path is read (a refused key
    whose path is still published is removed).
    """
    named = set(keys)
    if len(named) > MAX_SCOPED_KEYS:
        return None
    focus = focus_paths([*named, *(key for key, r in stored.items() if r.kind == "pair")])
    if focus is None:
        return None
    exact = chain_of(focus)
    for key, refusal in stored.items():
        if refusal.kind != "pair":
            try:
                exact.add(target_of(key)[0])
            except RejectedMessage:
                continue
    return PlanScope(focus=frozenset(focus), exact=frozenset(exact))
