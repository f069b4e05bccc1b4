"""The one exception hierarchy of the `images` package.

Messages say what failed, for which image, and what to do next; they never carry credentials.
"""

from __future__ import annotations


class ImageError(Exception):
    """Base class of every error raised by the images package."""


class RegistryError(ImageError):
    """The registry could not be reached or answered with an error (often transient: retry)."""


class ImageNotFoundError(ImageError):
    """The repository, tag, digest or blob does not exist in the registry."""


class PlatformNotFoundError(ImageError):
    """An image index lists none of the wanted platforms."""


class UnsupportedImageError(ImageError):
    """A manifest or layer media type this service does not unpack."""


class IntegrityError(ImageError):
    """Bytes from the registry do not match the digest or size that names them."""


class LayerRefusedError(ImageError):
    """A layer holds something the unpack policy refuses (escaping path, device, absurd size)."""


class WishlistError(ImageError):
    """A wish list (DUCC recipe YAML v1) is malformed."""
