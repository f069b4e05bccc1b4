"""Who is asking: the identity established from a verified token or a trusted legacy message.

Group names are normalised here, once, so every caller compares groups the same way.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, field_validator

# What a subject or a group path segment may contain to be used in a Vault path and policy:
# no '/', no '..', nothing HCL quoting or Vault's policy globs ('*', '+') treat specially.
# IAM subjects are UUIDs, so this refuses nothing real.
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@=-]{0,254}$")


def is_path_segment(value: str) -> bool:
    """True when `value` can be one segment of a Vault path (see _PATH_SEGMENT)."""
    return bool(_PATH_SEGMENT.match(value)) and ".." not in value


def is_path_safe_group(group: str) -> bool:
    """True when every segment of a normalised group path is a safe path segment."""
    return all(is_path_segment(segment) for segment in group.split("/"))


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
