"""Pure-Python CernVM-FS repository library: format primitives, storage, reader and writer.

The names below are the public surface; the submodules hold the rest.
"""

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
