"""The DUCC layout of an unpacked repository (spec §6.1, §6.5): flat image directories, their
metadata, the public `<registry>/<repository>:<tag>` symlinks, and the garbage-collection schedule.

All paths are repository paths in catalog form ('/a/b'). Only `.flat` and `.metadata` are
written (no `.layers`/`.chains`/podman store: apptainer needs the flat tree only).
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from images.registry import ImageManifest

FLAT_DIR = "/.flat"
METADATA_DIR = "/.metadata"
CATALOG_MARKER = ".cvmfscatalog"  # spec §2.9
# Not a DUCC file: our record of flat trees that lost their last tag, and since when, so that
# garbage collection can honour a grace period (DUCC's remove-schedule.json lists manifests).
GC_SCHEDULE = f"{METADATA_DIR}/gc-schedule.json"


def config_hex(config_digest: str) -> str:
    algorithm, _, hex_digest = config_digest.partition(":")
    if algorithm != "sha256" or len(hex_digest) != 64:
        raise ValueError(f"{config_digest!r} is not a sha256 digest")
    return hex_digest


def flat_dir(config_digest: str) -> str:
    """`/.flat/<hex2>/<hex>` of an image, named by its config digest (the image ID)."""
    hex_digest = config_hex(config_digest)
    return f"{FLAT_DIR}/{hex_digest[:2]}/{hex_digest}"


def image_name(repository: str, tag: str | None, digest: str | None) -> str:
    """`<repository>:<tag>`, or `<repository>:<digest>` for a digest-only image (spec §6.1)."""
    reference = tag or digest
    if not reference:
        raise ValueError("an image needs a tag or a digest")
    return f"{repository}:{reference}"


def public_link(registry: str, repository: str, tag: str | None, digest: str | None = None) -> str:
    """The public entry point `/<registry>/<repository>:<tag>`."""
    return f"/{registry}/{image_name(repository, tag, digest)}"


def link_target(link_path: str, target_dir: str) -> str:
    """The relative target of a symlink at `link_path` to `target_dir` (as DUCC writes it)."""
    return posixpath.relpath(target_dir, posixpath.dirname(link_path))


def flat_of_link_target(link_path: str, target: str) -> str | None:
    """The flat directory a public link points at, or None if it points elsewhere."""
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(link_path), target))
    parts = resolved.split("/")
    if len(parts) == 4 and "/" + parts[1] == FLAT_DIR and parts[3].startswith(parts[2]):
        return resolved
    return None


def metadata_dir(registry: str, repository: str, tag: str | None, digest: str | None = None) -> str:
    return f"{METADATA_DIR}/{registry}/{image_name(repository, tag, digest)}"


def metadata_manifest(
    registry: str, repository: str, tag: str | None, digest: str | None = None
) -> str:
    """`/.metadata/<registry>/<repository>:<tag>/manifest.json`."""
    return f"{metadata_dir(registry, repository, tag, digest)}/manifest.json"


def ducc_manifest_json(manifest: ImageManifest) -> bytes:
    """The manifest as DUCC stores it: Go field names, no JSON tags (spec §6.5)."""

    def descriptor(d: Any) -> dict[str, Any]:
        return {"MediaType": d.media_type, "Size": d.size, "Digest": d.digest}

    document = {
        "SchemaVersion": manifest.schema_version,
        "MediaType": manifest.media_type,
        "Config": descriptor(manifest.config),
        "Layers": [descriptor(layer) for layer in manifest.layers],
    }
    return json.dumps(document, separators=(",", ":")).encode()


def parse_gc_schedule(data: bytes | None) -> dict[str, int]:
    """flat dir -> time (s) since when no public link points at it."""
    if not data:
        return {}
    parsed = json.loads(data)
    return {str(k): int(v) for k, v in parsed.get("unreferenced_since", {}).items()}


def gc_schedule_json(schedule: dict[str, int]) -> bytes:
    return json.dumps({"unreferenced_since": dict(sorted(schedule.items()))}, indent=1).encode()
