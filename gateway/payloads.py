"""Store the objects of one payload in the repository's stratum-0, each verified first.

Upstream: cvmfs/receiver/payload_processor.cc (objects are uploaded as the pack is consumed,
each one checked against its name). An object that fails stops the payload; the objects
stored before it stay, unreferenced and content-addressed, as after any interrupted publish.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cvmfs.errors import CvmfsError
from cvmfs.storage import Storage
from gateway.errors import GatewayError
from gateway.pack import Readable, VerifiedObject, read_pack

log = logging.getLogger("cvmfs.gateway")


@dataclass(frozen=True)
class PayloadReport:
    objects: int
    bytes: int


def store_payload(
    stream: Readable, storage: Storage, *, payload_digest: str, header_size: int
) -> PayloadReport:
    def store(obj: VerifiedObject) -> None:
        try:
            storage.put(obj.entry.object_key, obj.data)
        except CvmfsError as error:
            raise GatewayError(
                f"storing object {obj.entry.name} failed ({error}): submit the payload again"
            ) from error

    entries = read_pack(
        stream, payload_digest=payload_digest, header_size=header_size, on_object=store
    )
    # Objects are `put` without fsync; the payload is acknowledged only once they are durable,
    # since the commit that names them may run on another storage instance.
    try:
        storage.sync()
    except CvmfsError as error:
        raise GatewayError(f"storing the payload failed ({error}): submit it again") from error
    return PayloadReport(objects=len(entries), bytes=sum(e.size for e in entries))
