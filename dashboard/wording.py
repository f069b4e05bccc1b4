"""How the pages word what the API says: its `commands` as code elements, its internal values
(history change kinds, entry types, bucket states, a manager's role) as words a user reads.

The API's texts are written for JSON and terminals, with commands between backticks; the
pages keep every text as it is and only change how it is shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from markupsafe import Markup, escape

from service.api.models import Change

# A pair of backticks on one line; an unpaired backtick stays as it is.
_CODE_SPAN = re.compile(r"`([^`\n]+)`")


def code_spans(text: object) -> Markup:
    """`text` escaped, then each `command` in it as <code>command</code>.

    Escaping first is what makes it safe: backticks survive escaping, and what is between
    them is already escaped when it is put into the element."""
    if text is None:
        return Markup("")
    return Markup(_CODE_SPAN.sub(r"<code>\1</code>", str(escape(text))))


# Every EntryType (service/api/models.py) in words.
_ENTRY_WORDS = {
    "file": "file",
    "directory": "directory",
    "symlink": "symbolic link",
    "special": "special file",
}


def entry_words(entry_type: str) -> str:
    return _ENTRY_WORDS.get(entry_type, entry_type)


def change_words(change: Change) -> str:
    """What happened to the path, before it is named: "added file", "removed directory",
    "modified symbolic link", "changed from file to directory" (every Change.change value)."""
    kind = entry_words(change.type)
    if change.change == "type_changed":
        if change.previous_type is None:
            return f"replaced by a {kind}"
        return f"changed from {entry_words(change.previous_type)} to {kind}"
    return f"{change.change} {kind}"


# Every BucketStatus.state but wired, as the status line says it; the bucket's own message
# (what to do about it) is shown beside the status, so this stays short.
_BUCKET_WORDS = {
    "unchecked": "its bucket is not checked yet",
    "waiting": "waiting for its bucket",
    "foreign": "its bucket belongs to another S3 account",
    "unreadable": "its bucket cannot be read",
}


def bucket_words(state: str) -> str | None:
    """A few words for a bucket state that needs the user's attention; None for `wired`."""
    return _BUCKET_WORDS.get(state)


def group_words(member_of: Iterable[str], managed: Iterable[str]) -> list[str]:
    """The caller's groups as the header names them, sorted: `atlas`, `atlas (manager)` for a
    member who also manages it, `manager of cms` for a manager only (`Caller.member_groups`
    and `Caller.managed_groups`: the role's own path, `atlas/managers`, is not shown)."""
    members, managers = set(member_of), set(managed)
    words = []
    for group in sorted(members | managers):
        if group not in managers:
            words.append(group)
        elif group in members:
            words.append(f"{group} (manager)")
        else:
            words.append(f"manager of {group}")
    return words
