"""How the pages word the API's texts and values (dashboard/wording.py), on literal inputs;
the pages that use it are tested in tests/test_dashboard_pages.py."""

from __future__ import annotations

from typing import get_args

from dashboard.wording import change_words, code_spans, entry_words, group_words
from service.api.browse import diff_trees
from service.api.models import Change, EntryType
from service.api.security import Caller
from service.identity import Identity


def test_commands_between_backticks_become_code_and_everything_else_is_escaped() -> None:
    assert code_spans("create it (e.g. `aws s3 mb s3://b`), then `ls`") == (
        "create it (e.g. <code>aws s3 mb s3://b</code>), then <code>ls</code>"
    )
    # Escaped first: markup in a message or in a key inside the backticks stays text.
    assert code_spans("key `<img src=x onerror=alert(1)>` & <b>x</b>") == (
        "key <code>&lt;img src=x onerror=alert(1)&gt;</code> &amp; &lt;b&gt;x&lt;/b&gt;"
    )
    # A backtick with no partner (on its line) is left as it is.
    assert code_spans("a ` b\nc ` d") == "a ` b\nc ` d"
    assert code_spans('it\'s `x` "y"') == "it&#39;s <code>x</code> &#34;y&#34;"
    assert code_spans(None) == ""


def test_every_change_and_entry_type_has_words() -> None:
    for entry_type in get_args(EntryType):
        assert "_" not in entry_words(entry_type)
    for kind in get_args(Change.model_fields["change"].annotation):
        words = change_words(Change(path="/a", change=kind, type="file"))
        assert "_" not in words and words.endswith("file"), (kind, words)
    assert entry_words("symlink") == "symbolic link"
    assert change_words(Change(path="/a", change="removed", type="directory")) == (
        "removed directory"
    )


def test_a_type_change_names_the_type_before_and_after() -> None:
    old = {"/a": ("file", 3, 0o100644, 1, "h1", ""), "/b": ("file", 1, 0o100644, 1, "h2", "")}
    new = {
        "/a": ("directory", 4096, 0o40755, 2, "", ""),
        "/a/x": ("file", 1, 0o100644, 2, "h3", ""),
        "/b": ("symlink", 1, 0o120777, 2, "", "a"),
    }
    changes, truncated = diff_trees(old, new)  # type: ignore[arg-type]
    assert not truncated
    assert [change_words(c) for c in changes] == [
        "changed from file to directory",
        "added file",
        "changed from file to symbolic link",
    ]


def _header_groups(groups: list[str], manager_subgroup: str) -> list[str]:
    caller = Caller(
        Identity(issuer="i", subject="s", username="u", groups=groups), "t", manager_subgroup
    )
    return group_words(caller.member_groups, caller.managed_groups)


def test_a_managers_role_is_worded_not_shown_as_a_group_path() -> None:
    assert _header_groups(["atlas/managers", "atlas"], "managers") == ["atlas (manager)"]
    assert _header_groups(["cms/managers"], "/managers/") == ["manager of cms"]
    assert _header_groups(["higgs", "cms/production", "cms"], "managers") == [
        "cms",
        "cms/production",
        "higgs",
    ]
