"""Who is asking: the identity established from a verified token or a trusted legacy message.

Group names are normalised here, once, so every caller compares groups the same way.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator


def normalise_group(raw: str) -> str:
    """The canonical form of a group name: the path without leading or trailing slashes.

    INDIGO IAM puts `cms/production` in the `groups` claim; the WLCG profile puts
    `/cms/production` in `wlcg.groups`. Both mean the same group, so both become
    `cms/production`. Case is kept: IAM group names are case-sensitive. Returns "" for a
    value that names no group (e.g. "/" or whitespace).
    """
    return raw.strip().strip("/")


class Identity(BaseModel):
    """An authenticated requester. Groups are normalised paths (see normalise_group)."""

    model_config = ConfigDict(frozen=True)

    issuer: str
    subject: str
    username: str
    groups: frozenset[str] = frozenset()

    @field_validator("groups", mode="before")
    @classmethod
    def _normalise_groups(cls, value: object) -> object:
        if isinstance(value, list | tuple | set | frozenset):
            names = (normalise_group(g) if isinstance(g, str) else g for g in value)
            return frozenset(n for n in names if n != "")
        return value

    def is_member(self, group: str) -> bool:
        """True when the identity belongs to `group` (in either `/g` or `g` form)."""
        return normalise_group(group) in self.groups
