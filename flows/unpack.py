"""Flows that keep an unpacked repository in step with a registry: `unpack` (one image),
`unpack-delete` (a deleted tag), `unpack-gc` (old flat trees) and `unpack-wishlist` (backfills).

Each flow reads the settings once and runs retried, idempotent tasks from `tasks.unpack`.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from flows.failure_hint import explain_failure
from images.unpacker import GcOutcome, TagDeleteOutcome, UnpackOutcome
from service.runtime import load_settings
from tasks.locks import ensure_publish_lock
from tasks.unpack import (
    FQRN_PATTERN,
    UnpackRequest,
    collect_flat_trees,
    delete_tag_link,
    expand_wishlist,
    resolve_image,
    target_fqrn,
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


@flow(
    name="unpack", flow_run_name="unpack-{req.repository}-{req.tag}", on_failure=[explain_failure]
)
def unpack(req: UnpackRequest) -> UnpackOutcome | TagDeleteOutcome | None:
    """Resolve the image, then unpack it (or only switch its tag link) and publish.

    The bridge's delete events arrive here too (`kind: image-deleted`): the tag's link goes.
    A digest-only delete changes nothing (the tags that still name it keep their links).
    """
    settings = load_settings()
    fqrn = target_fqrn(settings, req)
    ensure_publish_lock(fqrn)
    if req.kind == "image-deleted":
        if req.tag is None:
            get_run_logger().info(
                "digest-only delete of %s/%s@%s: links are removed per tag",
                req.registry,
                req.repository,
                req.digest,
            )
            return None
        return delete_tag_link(settings, req)
    image = resolve_image(settings, req)
    return unpack_into_repository(settings, req, image)


@flow(
    name="unpack-delete",
    flow_run_name="unpack-delete-{req.repository}-{req.tag}",
    on_failure=[explain_failure],
)
def unpack_delete(req: UnpackRequest) -> TagDeleteOutcome:
    """Remove the tag's public link and metadata; the flat tree is left to `unpack-gc`."""
    settings = load_settings()
    ensure_publish_lock(target_fqrn(settings, req))
    return delete_tag_link(settings, req)


@flow(name="unpack-gc", flow_run_name="unpack-gc-{req.fqrn}", on_failure=[explain_failure])
def unpack_gc(req: GcRequest) -> GcOutcome:
    """Remove flat trees no tag has pointed at for `grace_s` seconds."""
    settings = load_settings()
    ensure_publish_lock(req.fqrn)
    return collect_flat_trees(settings, req.fqrn, req.grace_s)


@flow(name="unpack-wishlist", on_failure=[explain_failure])
def unpack_wishlist(req: WishlistRequest) -> WishlistOutcome:
    """Unpack every image of a wish list; unchanged tags publish nothing, so a schedule on
    this flow re-checks the tags that moved. One image failing does not stop the others."""
    settings = load_settings()
    logger = get_run_logger()
    fqrn, images = expand_wishlist(settings, req.wishlist_yaml)
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
            platforms=req.platforms,
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
