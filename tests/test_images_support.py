"""Helpers for the unpack tests: images built without Docker (umoci, skopeo), pushed to the test
registry, their merged file system computed independently (`umoci unpack` as root, then a
walk), and the unpacked tree read back from the repository in the same form.

No tests here; imported by tests/test_images_*.py and tests/test_unpack*.py.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zstandard

from cvmfs.paths import sanitize_mode
from cvmfs.reader import RepositoryReader

Tree = dict[str, tuple[Any, ...]]  # relative path -> (kind, mode, uid, gid, mtime, payload)


def run(*argv: str, cwd: Path | None = None) -> str:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


class OciLayout:
    """An OCI image layout directory built with umoci; `push` copies a tag with skopeo."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not (path / "index.json").exists():
            run("umoci", "init", "--layout", str(path))
        self._bundles = 0

    def image(self, tag: str) -> str:
        return f"{self.path}:{tag}"

    def new(self, tag: str, *, architecture: str = "amd64") -> None:
        run("umoci", "new", "--image", self.image(tag))
        if architecture != "amd64":
            run("umoci", "config", "--image", self.image(tag), "--architecture", architecture)

    def layer(self, tag: str, change: Callable[[Path], object]) -> None:
        """Unpack the image, let `change` edit its rootfs, repack: umoci writes the diff
        (deletions become `.wh.` whiteouts)."""
        self._bundles += 1
        bundle = self.path.parent / f"bundle-{self._bundles}"
        run("umoci", "unpack", "--image", self.image(tag), str(bundle))
        change(bundle / "rootfs")
        run("umoci", "repack", "--image", self.image(tag), str(bundle))

    def raw_layer(self, tag: str, tar_bytes: bytes) -> None:
        """Append a hand-made (uncompressed) layer tarball verbatim (umoci gzips it)."""
        self._bundles += 1
        tar_path = self.path.parent / f"raw-{self._bundles}.tar"
        tar_path.write_bytes(tar_bytes)
        run("umoci", "raw", "add-layer", "--image", self.image(tag), str(tar_path))

    def config(self, tag: str, *args: str) -> None:
        run("umoci", "config", "--image", self.image(tag), *args)

    def unpack_merged(self, tag: str, dest: Path) -> Path:
        """The image's merged root file system, by umoci (as root: owners kept)."""
        run("umoci", "unpack", "--image", self.image(tag), str(dest))
        return dest / "rootfs"

    def manifest_descriptor(self, tag: str) -> dict[str, Any]:
        index = json.loads((self.path / "index.json").read_text())
        for entry in index["manifests"]:
            if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
                return dict(entry)
        raise KeyError(tag)

    def blob(self, digest: str) -> bytes:
        return (self.path / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()

    def config_digest(self, tag: str) -> str:
        manifest = json.loads(self.blob(self.manifest_descriptor(tag)["digest"]))
        return str(manifest["config"]["digest"])

    def add_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (self.path / "blobs" / "sha256" / digest).write_bytes(data)
        return f"sha256:{digest}"

    def add_index(self, tag: str, members: dict[str, dict[str, str]]) -> str:
        """An OCI index tagged `tag` over existing tags, with their platforms."""
        manifests = []
        for member, platform in members.items():
            descriptor = self.manifest_descriptor(member)
            manifests.append(
                {
                    "mediaType": descriptor["mediaType"],
                    "digest": descriptor["digest"],
                    "size": descriptor["size"],
                    "platform": platform,
                }
            )
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": manifests,
            }
        ).encode()
        digest = self.add_blob(body)
        index_path = self.path / "index.json"
        index = json.loads(index_path.read_text())
        index["manifests"].append(
            {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": digest,
                "size": len(body),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        )
        index_path.write_text(json.dumps(index))
        return digest

    def add_handmade_image(self, tag: str, layers: list[bytes], *, zstd: bool = False) -> None:
        """An image whose gzipped (or zstd) layers are exactly `layers` (tarballs), bypassing
        umoci's checks, for layers umoci would refuse to build or cannot compress."""
        diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }
        ).encode()
        descriptors = []
        for layer in layers:
            blob = zstandard.ZstdCompressor().compress(layer) if zstd else gzip.compress(layer)
            descriptors.append(
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+"
                    + ("zstd" if zstd else "gzip"),
                    "digest": self.add_blob(blob),
                    "size": len(blob),
                }
            )
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": self.add_blob(config),
                    "size": len(config),
                },
                "layers": descriptors,
            }
        ).encode()
        digest = self.add_blob(manifest)
        index_path = self.path / "index.json"
        index = json.loads(index_path.read_text())
        index["manifests"] = index.get("manifests") or []  # null in a fresh `umoci init` layout
        index["manifests"].append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        )
        index_path.write_text(json.dumps(index))

    def push(self, tag: str, registry: str, repository: str, dest_tag: str, *options: str) -> None:
        run(
            "skopeo",
            "copy",
            "--all",
            "--dest-tls-verify=false",
            *options,
            f"oci:{self.path}:{tag}",
            f"docker://{registry}/{repository}:{dest_tag}",
        )


def tar_bytes(members: list[tuple[str, str, Any]]) -> bytes:
    """A tarball of (name, kind, payload): file (bytes), dir, symlink, chr, huge (size)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            if kind == "huge":
                info.size = int(payload)
                tar.addfile(info)
                continue
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            tar.addfile(info)
    return buffer.getvalue()


def _single_members_ungrouped(tree: Tree) -> Tree:
    """A hard-link group of one path is no group (CVMFS keeps groups per directory, spec §7:
    a link into another directory is published as an independent copy)."""
    sizes: dict[str, int] = {}
    for value in tree.values():
        if value[0] == "file" and value[5][1] is not None:
            sizes[value[5][1]] = sizes.get(value[5][1], 0) + 1
    for path, value in tree.items():
        if value[0] == "file" and value[5][1] is not None and sizes[value[5][1]] == 1:
            tree[path] = (*value[:5], (value[5][0], None))
    return tree


def local_tree(root: Path) -> Tree:
    """The merged file system as published: modes sanitized as the writer does (spec §7);
    hard links as a group id = first path of the group in the same directory."""
    tree: Tree = {}
    first_of_inode: dict[tuple[str, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            info = path.lstat()
            relative = "/" + str(path.relative_to(root))
            mode = sanitize_mode(info.st_mode)
            common = (mode, info.st_uid, info.st_gid, int(info.st_mtime))
            if stat.S_ISDIR(info.st_mode):
                tree[relative] = ("dir", *common, None)
            elif stat.S_ISLNK(info.st_mode):
                tree[relative] = ("symlink", *common, os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                group = None
                if info.st_nlink > 1:
                    group = first_of_inode.setdefault((dirpath, info.st_ino), relative)
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                tree[relative] = ("file", *common, (digest, group))
            else:
                tree[relative] = ("special", *common, None)
    return _single_members_ungrouped(tree)


def repository_tree(reader: RepositoryReader, top: str) -> Tree:
    """The same form for the published tree below `top` (nested catalogs followed)."""
    tree: Tree = {}
    first_of_group: dict[tuple[str, int], str] = {}
    for entry in reader.walk(top):
        relative = entry.path[len(top) :]
        if not relative:
            continue
        common = (stat.S_IMODE(entry.mode), entry.uid, entry.gid, entry.mtime)
        if entry.is_dir:
            tree[relative] = ("dir", *common, None)
        elif entry.is_symlink:
            tree[relative] = ("symlink", *common, entry.symlink)
        else:
            group = None
            if entry.hardlink_group:
                key = (relative.rpartition("/")[0], entry.hardlink_group)
                group = first_of_group.setdefault(key, relative)
            digest = hashlib.sha256(reader.read(entry.path)).hexdigest()
            tree[relative] = ("file", *common, (digest, group))
    return tree
