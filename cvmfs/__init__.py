"""Pure-Python CernVM-FS repository library: format primitives, storage, reader and writer.

The names below are the public surface; the submodules hold the rest. They are imported on first
use (PEP 562), so `import cvmfs.writer` or a CLI command loads only the modules it needs (the
reader, fsck, httpx and numpy stay out of a one-file publish).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cvmfs.catalog import Catalog, Chunk, DirectoryEntry, NestedCatalogRef, md5path_pair
    from cvmfs.errors import (
        ConflictError,
        CvmfsError,
        FormatError,
        IntegrityError,
        InvalidPathError,
        KeyFileError,
        NotFoundError,
        RepositoryNameMismatchError,
        SignatureError,
        StorageError,
        VerificationError,
        WhitelistExpiredError,
    )
    from cvmfs.fsck import FsckReport, Problem, fsck
    from cvmfs.history import HistoryDb, Tag
    from cvmfs.keys import KeySet, generate_keyset, load_keyset, write_keyset
    from cvmfs.manifest import Manifest, SignedManifest, sign_manifest
    from cvmfs.objects import ContentHash, HashAlgorithm, ObjectSuffix, object_path
    from cvmfs.reader import CatalogInfo, RepositoryReader
    from cvmfs.reflog import Ref, ReflogDb, RefType
    from cvmfs.storage import HttpStorage, LocalStorage, S3Storage, Storage
    from cvmfs.transaction import Transaction
    from cvmfs.whitelist import SignedWhitelist, Whitelist, build_whitelist, sign_whitelist
    from cvmfs.writer import (
        PublishResult,
        RepositoryWriter,
        WriterOptions,
        create_repository,
        resign_whitelist,
    )

_MODULE_OF = {
    "Catalog": "cvmfs.catalog",
    "CatalogInfo": "cvmfs.reader",
    "Chunk": "cvmfs.catalog",
    "ConflictError": "cvmfs.errors",
    "ContentHash": "cvmfs.objects",
    "CvmfsError": "cvmfs.errors",
    "DirectoryEntry": "cvmfs.catalog",
    "FormatError": "cvmfs.errors",
    "FsckReport": "cvmfs.fsck",
    "HashAlgorithm": "cvmfs.objects",
    "HistoryDb": "cvmfs.history",
    "HttpStorage": "cvmfs.storage",
    "IntegrityError": "cvmfs.errors",
    "InvalidPathError": "cvmfs.errors",
    "KeyFileError": "cvmfs.errors",
    "KeySet": "cvmfs.keys",
    "LocalStorage": "cvmfs.storage",
    "Manifest": "cvmfs.manifest",
    "NestedCatalogRef": "cvmfs.catalog",
    "NotFoundError": "cvmfs.errors",
    "ObjectSuffix": "cvmfs.objects",
    "Problem": "cvmfs.fsck",
    "PublishResult": "cvmfs.writer",
    "Ref": "cvmfs.reflog",
    "RefType": "cvmfs.reflog",
    "ReflogDb": "cvmfs.reflog",
    "RepositoryNameMismatchError": "cvmfs.errors",
    "RepositoryReader": "cvmfs.reader",
    "RepositoryWriter": "cvmfs.writer",
    "S3Storage": "cvmfs.storage",
    "SignatureError": "cvmfs.errors",
    "SignedManifest": "cvmfs.manifest",
    "SignedWhitelist": "cvmfs.whitelist",
    "Storage": "cvmfs.storage",
    "StorageError": "cvmfs.errors",
    "Tag": "cvmfs.history",
    "Transaction": "cvmfs.transaction",
    "VerificationError": "cvmfs.errors",
    "Whitelist": "cvmfs.whitelist",
    "WhitelistExpiredError": "cvmfs.errors",
    "WriterOptions": "cvmfs.writer",
    "build_whitelist": "cvmfs.whitelist",
    "create_repository": "cvmfs.writer",
    "fsck": "cvmfs.fsck",
    "generate_keyset": "cvmfs.keys",
    "load_keyset": "cvmfs.keys",
    "md5path_pair": "cvmfs.catalog",
    "object_path": "cvmfs.objects",
    "resign_whitelist": "cvmfs.writer",
    "sign_manifest": "cvmfs.manifest",
    "sign_whitelist": "cvmfs.whitelist",
    "write_keyset": "cvmfs.keys",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'cvmfs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])


__all__ = [
    "Catalog",
    "CatalogInfo",
    "Chunk",
    "ConflictError",
    "ContentHash",
    "CvmfsError",
    "DirectoryEntry",
    "FormatError",
    "FsckReport",
    "HashAlgorithm",
    "HistoryDb",
    "HttpStorage",
    "IntegrityError",
    "InvalidPathError",
    "KeyFileError",
    "KeySet",
    "LocalStorage",
    "Manifest",
    "NestedCatalogRef",
    "NotFoundError",
    "ObjectSuffix",
    "Problem",
    "PublishResult",
    "Ref",
    "RefType",
    "ReflogDb",
    "RepositoryNameMismatchError",
    "RepositoryReader",
    "RepositoryWriter",
    "S3Storage",
    "SignatureError",
    "SignedManifest",
    "SignedWhitelist",
    "Storage",
    "StorageError",
    "Tag",
    "Transaction",
    "VerificationError",
    "Whitelist",
    "WhitelistExpiredError",
    "WriterOptions",
    "build_whitelist",
    "create_repository",
    "fsck",
    "generate_keyset",
    "load_keyset",
    "md5path_pair",
    "object_path",
    "resign_whitelist",
    "sign_manifest",
    "sign_whitelist",
    "write_keyset",
]
