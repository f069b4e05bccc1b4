"""S3Storage against the stack's Ceph RGW: the golden repository uploaded through it reads back
verified through S3, and anonymously over plain HTTP thanks to the public-read ACL.
"""

from __future__ import annotations

import io
import os
from typing import Any

import pytest

from cvmfs.errors import InvalidPathError, NotFoundError
from cvmfs.fsck import fsck
from cvmfs.reader import RepositoryReader
from cvmfs.storage import HttpStorage, LocalStorage, S3Storage
from service.settings import Settings
from tests.cvmfs_golden import FQRN, PINNED_NOW, PUBLIC_KEY, STRATUM0

pytest_plugins = ("tests.fixtures_s3",)
pytestmark = [pytest.mark.stack, pytest.mark.slow]


def test_s3_storage_round_trip_and_public_http(bucket: tuple[Any, str], ceph: Settings) -> None:
    client, name = bucket
    store = S3Storage(client, name, prefix=f"repos/{FQRN}")
    local = LocalStorage(STRATUM0)
    keys = list(local.list())
    for key in keys:
        if key.startswith("."):
            store.put_atomic(key, local.get(key))
        else:
            with local.open(key) as stream:
                store.put(key, stream)
    assert sorted(store.list()) == sorted(keys)
    assert store.exists(".cvmfspublished") and not store.exists("data/00/nothing")
    with pytest.raises(NotFoundError):
        store.get("data/00/nothing")
    with pytest.raises(InvalidPathError):
        store.get("../escape")

    # a large streamed object goes up as multipart and is not rewritten once present
    big = os.urandom(9 << 20)
    store.put("data/zz/big", io.BufferedReader(_Stream(big)))
    assert store.get("data/zz/big") == big
    store.put("data/zz/big", b"other")
    assert store.get("data/zz/big") == big
    store.delete("data/zz/big")
    assert not store.exists("data/zz/big")

    with RepositoryReader(store, FQRN, [PUBLIC_KEY], now=PINNED_NOW) as reader:
        assert fsck(reader).ok
        assert reader.read("hello.txt").startswith(b"Hello")

    # anonymous HTTP read of public-read objects: what a stratum 1 or client does
    url = f"{ceph.ceph.s3_endpoint}/{name}/repos/{FQRN}"
    with RepositoryReader(HttpStorage(url), FQRN, [PUBLIC_KEY], now=PINNED_NOW) as reader:
        assert len(reader.read("data/big-chunked.bin")) == 12587233


class _Stream(io.RawIOBase):
    """A non-seekable reader, like a pipe or an HTTP body."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n
