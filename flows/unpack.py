"""Flows that keep an unpacked repository in step with a registry: `unpack` (one image),
`unpack-delete` (a deleted tag), `unpack-gc` (old flat trees) and `unpack-wishlist` (backfills).

Each flow reads the settings once and runs retried, idempotent tasks from `tasks.unpack`.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from images.unpacker import GcOutcome, TagDeleteOutcome, UnpackOutcome
from service.settings import Settings
from tasks.locks import ensure_publish_lock
from tasks.unpack import (
    FQRN_PATTERN,
    UnpackRequest,
    collect_flat_trees,
    delete_tag_link,
    expand_wishlist,
    resolve_image,
    unpack_into_repository,
)

DEFAULT_GC_GRACE_S = 24 * 3600


class GcRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    fqrn: str = Field(pattern=FQRN_PATTERN)
    grace_s: int = Field(default=DEFAULT_GC_GRACE_S, ge=0, description="seconds unreferenced")


class WishlistRequest(BaseModel):
    """A DUCC recipe (YAML v1) as text; its `cvmfs_repo` is the target repository."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    wishlist_yaml: str = Field(min_length=1)
    platforms: list[str] | None = None


class WishlistOutcome(BaseModel):
    fqrn: str
    outcomes: list[UnpackOutcome]
    failures: dict[str, str]


@flow(name="unpack", flow_run_name="unpack-{request.repository}-{request.tag}")
def unpack(request: UnpackRequest) -> UnpackOutcome:
    """Resolve the image, then unpack it (or only switch its tag link) and publish."""
    settings = Settings.load()
    ensure_publish_lock(request.fqrn)
    image = resolve_image(settings, request)
    return unpack_into_repository(settings, request, image)


@flow(name="unpack-delete", flow_run_name="unpack-delete-{request.repository}-{request.tag}")
def unpack_delete(request: UnpackRequest) -> TagDeleteOutcome:
    """Remove the tag's public link and metadata; the flat tree is left to `unpack-gc`."""
    settings = Settings.load()
    ensure_publish_lock(request.fqrn)
    return delete_tag_link(settings, request)


@flow(name="unpack-gc", flow_run_name="unpack-gc-{request.fqrn}")
def unpack_gc(request: GcRequest) -> GcOutcome:
    """Remove flat trees no tag has pointed at for `grace_s` seconds."""
    settings = Settings.load()
    ensure_publish_lock(request.fqrn)
    return collect_flat_trees(settings, request.fqrn, request.grace_s)


@flow(name="unpack-wishlist")
def unpack_wishlist(request: WishlistRequest) -> WishlistOutcome:
    """Unpack every image of a wish list; unchanged tags publish nothing, so a schedule on
    this flow re-checks the tags that moved. One image failing does not stop the others."""
    settings = Settings.load()
    logger = get_run_logger()
    fqrn, images = expand_wishlist(settings, request.wishlist_yaml)
    ensure_publish_lock(fqrn)
    outcomes: list[UnpackOutcome] = []
    failures: dict[str, str] = {}
    for image in images:
        item = UnpackRequest(
            registry=image.registry,
            repository=image.repository,
            tag=image.tag,
            digest=image.digest,
            fqrn=fqrn,
            platforms=request.platforms,
        )
        resolved = resolve_image(settings, item, return_state=True)
        if not resolved.is_completed():
            failures[str(image)] = str(resolved.message or resolved.name)
            logger.warning("image=%s failed: %s", image, failures[str(image)])
            continue
        unpacked = unpack_into_repository(settings, item, resolved.result(), return_state=True)
        if unpacked.is_completed():
            outcomes.append(unpacked.result())
        else:
            failures[str(image)] = str(unpacked.message or unpacked.name)
            logger.warning("image=%s failed: %s", image, failures[str(image)])
    return WishlistOutcome(fqrn=fqrn, outcomes=outcomes, failures=failures)
