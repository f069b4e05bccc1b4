"""Repository names (fqrn) and bucket names: derivation from users and groups, and validation.

Rules (why each exists is next to it):

* fqrn = ``<name>.<repository_domain>``; ``<name>`` is one DNS label: lowercase ``a-z``,
  ``0-9`` and ``-``, 1..63 characters, no leading/trailing ``-``, and the whole fqrn is at most
  ``fqrn_max_length`` (60) characters, the limit upstream's ``cvmfs_server mkfs`` enforces.
* Usernames and group names are *mapped* to a label: Unicode is folded to ASCII (``é`` → ``e``),
  uppercase → lowercase, every other character (``_``, ``.``, ``@``, space, ...) → ``-``, runs of
  ``-`` collapse to one, leading/trailing ``-`` are dropped (``John.Doe_2`` → ``john-doe-2``).
  A short name chosen by the user is *not* mapped, only lowercased: it must already be a label.
* Personal repository: ``<user>[-<short>]-personal``; group repository: ``<group>[-<short>]``
  where ``<group>`` is the last path component of the group (``cms/production`` →
  ``production``). Group-derived names may not end in ``-personal``, so a personal name and a
  group name can never be equal: user ``atlas`` gets ``atlas-personal``, group ``atlas`` gets
  ``atlas``, and neither can take the other's name. Two owners whose names map to the same
  label (user ``a-b`` vs user ``a`` with short name ``b``, or ``cms/production`` vs
  ``atlas/production``) are settled by the registry: first come, first served; the second
  request is refused with a reason asking for a short name.
* Reserved names (``unpacked``, ``cvmfs-config``, ``www``, ``admin``, ... configurable) are
  refused whatever their origin.
* Bucket: the user's existing bucket named in the request; if none is named, the bucket whose
  name is the repository's name label (``alice-personal``). Either way it must be a valid S3
  bucket name, and the service's own buckets are refused.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable

from service.settings import ProvisioningSettings, Settings

MAX_LABEL_LENGTH = 63
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class NamingError(ValueError):
    """A name was refused; `reason` says why and what to do, and is safe to show the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidName(NamingError):
    """Not a valid DNS label, fqrn or bucket name (or nothing usable is left after mapping)."""


class ReservedName(NamingError):
    """The name is reserved for the service itself."""


class NameTooLong(NamingError):
    """The resulting fqrn would exceed the length limit."""


def to_label(raw: str) -> str:
    """Map a username or group name to a DNS label (may return "" when nothing is left)."""
    ascii_text = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode()
    mapped = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower())
    return mapped.strip("-")[:MAX_LABEL_LENGTH].strip("-")


def is_label(text: str) -> bool:
    """True for a DNS label by the rules above; `--` is refused too (it marks IDN labels)."""
    return bool(_LABEL.match(text)) and "--" not in text


def group_component(group: str) -> str:
    """The last path component of a group (`/cms/production` → `production`)."""
    return group.strip().strip("/").rsplit("/", 1)[-1]


class RepositoryNamer:
    """Derives and validates repository names for one repository domain."""

    def __init__(self, domain: str, rules: ProvisioningSettings) -> None:
        domain = domain.lower().strip(".")
        if not domain or not all(is_label(part) for part in domain.split(".")):
            raise InvalidName(f"repository_domain {domain!r} is not a valid DNS domain")
        self.domain = domain
        self._rules = rules
        self._reserved = frozenset(name.lower() for name in rules.reserved_names)
        self._personal_suffix = rules.personal_suffix.lower()
        if not is_label(self._personal_suffix):
            raise InvalidName(f"personal_suffix {rules.personal_suffix!r} is not a DNS label")

    @classmethod
    def from_settings(cls, settings: Settings) -> RepositoryNamer:
        return cls(settings.repository_domain, settings.provisioning)

    @property
    def max_name_length(self) -> int:
        return min(MAX_LABEL_LENGTH, self._rules.fqrn_max_length - len(self.domain) - 1)

    def personal(self, username: str, short_name: str | None = None) -> str:
        """The fqrn of a personal repository of `username`."""
        user = to_label(username)
        if not user:
            raise InvalidName(
                f"username {username!r} has no letters or digits to build a repository name from"
            )
        parts = [user, *self._short(short_name), self._personal_suffix]
        return self._fqrn("-".join(parts), short_name)

    def group(self, group: str, short_name: str | None = None) -> str:
        """The fqrn of a repository of `group` (its last path component names it)."""
        label = to_label(group_component(group))
        if not label:
            raise InvalidName(
                f"group {group!r} has no letters or digits to build a repository name from"
            )
        name = "-".join([label, *self._short(short_name)])
        suffix = self._personal_suffix
        if name == suffix or name.endswith("-" + suffix):
            raise ReservedName(
                f"group repository names may not end in '-{suffix}' (kept for personal "
                f"repositories); choose another short name"
            )
        return self._fqrn(name, short_name)

    def validate_fqrn(self, fqrn: str) -> str:
        """Check a complete fqrn (e.g. from a legacy message); returns it lowercased."""
        fqrn = fqrn.strip().lower()
        name, dot, domain = fqrn.partition(".")
        if not dot or domain != self.domain:
            raise InvalidName(f"repository {fqrn!r} is not in the service's domain {self.domain!r}")
        if not is_label(name):
            raise InvalidName(
                f"repository name {name!r} is not a DNS label (a-z, 0-9 and '-', 1-63 "
                f"characters, no leading, trailing or double '-')"
            )
        return self._fqrn(name, None)

    def name_of(self, fqrn: str) -> str:
        """The name label of an fqrn of this domain."""
        return self.validate_fqrn(fqrn).partition(".")[0]

    def _short(self, short_name: str | None) -> list[str]:
        if short_name is None:
            return []
        short = short_name.strip().lower()
        if not is_label(short):
            raise InvalidName(
                f"short name {short_name!r} must be a DNS label: a-z, 0-9 and '-', no leading, "
                f"trailing or double '-'"
            )
        return [short]

    def _fqrn(self, name: str, short_name: str | None) -> str:
        if name in self._reserved:
            raise ReservedName(f"repository name {name!r} is reserved; choose a short name")
        if len(name) > self.max_name_length:
            hint = "a shorter short name" if short_name else "ask an operator for a shorter name"
            raise NameTooLong(
                f"repository name {name!r} is longer than {self.max_name_length} characters "
                f"(the fqrn may have at most {self._rules.fqrn_max_length}); {hint}"
            )
        if not is_label(name):
            raise InvalidName(f"repository name {name!r} is not a DNS label")
        return f"{name}.{self.domain}"


def validate_bucket_name(bucket: str, reserved: Iterable[str] = ()) -> str:
    """Check an S3 bucket name (AWS/RGW DNS-compatible rules); returns it unchanged."""
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise InvalidName(
            f"bucket {bucket!r} is not a valid S3 bucket name (3-63 characters: a-z, 0-9, '.', "
            f"'-'; starting and ending with a letter or digit)"
        )
    try:
        ipaddress.ip_address(bucket)
    except ValueError:
        pass
    else:
        raise InvalidName(f"bucket {bucket!r} must not look like an IP address")
    if bucket.startswith(("xn--", "sthree-")) or bucket.endswith(("-s3alias", "--ol-s3")):
        raise InvalidName(f"bucket {bucket!r} uses a prefix or suffix S3 reserves")
    if bucket in set(reserved):
        raise ReservedName(f"bucket {bucket!r} belongs to the service; name your own bucket")
    return bucket


def bucket_for(fqrn: str, requested: str | None, reserved: Iterable[str] = ()) -> str:
    """The bucket wired to a repository: the requested one, or the fqrn's name label."""
    if requested is not None:
        return validate_bucket_name(requested.strip(), reserved)
    name = fqrn.partition(".")[0]
    try:
        return validate_bucket_name(name, reserved)
    except NamingError as error:
        raise InvalidName(
            f"no bucket named and {name!r} cannot be a bucket name ({error.reason}); "
            f"name the bucket in the request"
        ) from error
