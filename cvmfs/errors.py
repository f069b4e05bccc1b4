"""The one exception hierarchy of the `cvmfs` package.

Every error raised by the library is a `CvmfsError`; messages say what failed and what to do.
"""

from __future__ import annotations


class CvmfsError(Exception):
    """Base class of every error raised by the cvmfs library."""


class FormatError(CvmfsError):
    """A file or object does not follow the CVMFS format (manifest, whitelist, catalog...)."""


class VerificationError(CvmfsError):
    """Base class of every failed trust or integrity check."""


class SignatureError(VerificationError):
    """A manifest or whitelist signature, or a certificate fingerprint, does not verify."""


class WhitelistExpiredError(VerificationError):
    """The whitelist expiry date has passed: re-sign it with the master key."""


class RepositoryNameMismatchError(VerificationError):
    """The manifest or whitelist names another repository than the one expected."""


class IntegrityError(VerificationError):
    """An object's content does not match its hash, or its inflated size is wrong."""


class NotFoundError(CvmfsError):
    """An object, path, tag or storage key does not exist."""


class ConflictError(CvmfsError):
    """Another writer changed the repository since this transaction started."""


class InvalidPathError(CvmfsError, ValueError):
    """A repository path is malformed (`..`, NUL, empty component, too long...)."""


class StorageError(CvmfsError):
    """A storage back end failed or refused an operation."""


class KeyFileError(CvmfsError):
    """A key or certificate file is missing or cannot be parsed."""
