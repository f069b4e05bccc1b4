"""DUCC wish lists ("recipes", YAML version 1, spec §6.2): which images to unpack, for backfills.

Tags may hold `*` wildcards, expanded against the registry's tag list (full match, `*` = `.*`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from images.errors import WishlistError
from images.registry import ImageReference

SUPPORTED_VERSION = 1


class WishlistEntry(BaseModel):
    """One `input` line: `[scheme://]REGISTRY/REPOSITORY[:TAG][@DIGEST]`."""

    model_config = ConfigDict(frozen=True)

    scheme: str = "https"
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def is_wildcard(self) -> bool:
        return self.tag is not None and "*" in self.tag

    def matches(self, tag: str) -> bool:
        assert self.tag is not None
        pattern = ".*".join(re.escape(part) for part in self.tag.split("*"))
        return re.fullmatch(pattern, tag) is not None

    def reference(self, tag: str | None = None) -> ImageReference:
        return ImageReference(
            registry=self.registry,
            repository=self.repository,
            tag=tag or self.tag,
            digest=self.digest,
        )


class Wishlist(BaseModel):
    """A parsed recipe; `output_format` and `user` are kept but unused (no thin images)."""

    model_config = ConfigDict(frozen=True)

    version: int
    cvmfs_repo: str
    user: str | None = None
    output_format: str | None = None
    input: list[WishlistEntry] = Field(default_factory=list)


def parse_image_line(line: str) -> WishlistEntry:
    """DUCC's image syntax; no scheme means https; at most 2 ':' after the registry."""
    text = line.strip()
    scheme = "https"
    if "://" in text:
        scheme, text = text.split("://", 1)
    registry, _, path = text.partition("/")
    if not registry or not path:
        raise WishlistError(f"wish list input {line!r} is not REGISTRY/REPOSITORY[:TAG][@DIGEST]")
    if path.count(":") > 2:
        raise WishlistError(f"wish list input {line!r} has more than two ':' in its path")
    digest = None
    if "@" in path:
        path, digest = path.split("@", 1)
    tag = None
    if ":" in path:
        path, tag = path.rsplit(":", 1)
    if tag is None and digest is None:
        tag = "latest"
    try:
        return WishlistEntry(
            scheme=scheme, registry=registry, repository=path, tag=tag, digest=digest
        )
    except ValidationError as error:
        raise WishlistError(f"wish list input {line!r}: {error}") from error


def parse_wishlist(text: str) -> Wishlist:
    """Parse recipe YAML v1; refuses other versions and malformed inputs with a reason."""
    try:
        document: Any = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise WishlistError(f"the wish list is not valid YAML: {error}") from error
    if not isinstance(document, dict):
        raise WishlistError("the wish list must be a YAML mapping with version, cvmfs_repo, input")
    if document.get("version") != SUPPORTED_VERSION:
        raise WishlistError(
            f"wish list version {document.get('version')!r} is not supported: use version: 1"
        )
    if not document.get("cvmfs_repo"):
        raise WishlistError("the wish list names no cvmfs_repo")
    inputs = document.get("input") or []
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        raise WishlistError("wish list `input` must be a list of image strings")
    return Wishlist(
        version=SUPPORTED_VERSION,
        cvmfs_repo=str(document["cvmfs_repo"]),
        user=document.get("user"),
        output_format=document.get("output_format"),
        input=[parse_image_line(line) for line in inputs],
    )


def expand(
    wishlist: Wishlist, list_tags: Callable[[WishlistEntry], list[str]]
) -> list[ImageReference]:
    """Every image the wish list names now: wildcard tags expanded with `list_tags`."""
    images: list[ImageReference] = []
    seen: set[str] = set()
    for entry in wishlist.input:
        if entry.is_wildcard:
            found = [entry.reference(tag) for tag in sorted(list_tags(entry)) if entry.matches(tag)]
        else:
            found = [entry.reference()]
        for image in found:
            if str(image) not in seen:
                seen.add(str(image))
                images.append(image)
    return images
