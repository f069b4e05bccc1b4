"""Payloads (object packs) over real HTTP: both forms stored verified; every bad pack refused.

Objects are built with the project's cvmfs/ library (compressed, hashed over the stored bytes)
and packed as the publisher's ObjectPackProducer lays them out (gateway.pack.build_pack).
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from cvmfs.objects import ObjectSuffix, compress_and_hash, object_path
from gateway.auth import authorization_header
from gateway.pack import build_pack
from gateway.publisher import Publisher
from service.settings import Settings
from tests.gateway_support import GatewayWorld, gateway_world

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def world(vault: Settings) -> Iterator[GatewayWorld]:
    with gateway_world(vault, ("pay",), max_payload_bytes=64 << 20) as w:
        yield w


def stored_object(data: bytes, suffix: ObjectSuffix = ObjectSuffix.FILE) -> tuple[str, bytes, str]:
    """(name with suffix, stored bytes, storage key) of an object holding `data`."""
    stored, content_hash = compress_and_hash(data)
    return content_hash.hex + suffix, stored, object_path(content_hash, suffix)


@pytest.fixture
def lease(world: GatewayWorld) -> Iterator[tuple[Publisher, str]]:
    publisher = world.publisher("pay")
    token = publisher.acquire_token(f"{world.repos['pay']}/sw")
    yield publisher, token
    publisher.drop(token)


def test_both_payload_forms_store_every_object_verified(
    world: GatewayWorld, lease: tuple[Publisher, str]
) -> None:
    publisher, token = lease
    storage = world.storage("pay")
    objects = [
        stored_object(b"a small file\n"),
        stored_object(os.urandom(1000), ObjectSuffix.PARTIAL),
        stored_object(b"catalog bytes " * 100, ObjectSuffix.CATALOG),
        # above the in-memory limit: verified through a temporary file
        stored_object(os.urandom(12 << 20)),
    ]
    header, body = build_pack([(name, data) for name, data, _key in objects[:2]])
    assert publisher.submit(token, header, body) == {"status": "ok"}
    header, body = build_pack([(name, data) for name, data, _key in objects[2:]])
    assert publisher.submit_per_token(token, header, body) == {"status": "ok"}
    for _name, data, key in objects:
        assert storage.get(key) == data


def refused(reply: dict[str, object], words: str) -> None:
    assert reply["status"] == "error", reply
    assert words in str(reply["reason"]), reply


def test_bad_payloads_are_refused_and_store_nothing_bad(
    world: GatewayWorld, lease: tuple[Publisher, str]
) -> None:
    publisher, token = lease
    storage = world.storage("pay")
    good_name, good_data, good_key = stored_object(b"good " + os.urandom(16))
    header, body = build_pack([(good_name, good_data)])

    # the header does not hash to payload_digest
    head = publisher.payload_head(token, header).replace(
        hashlib.sha1(header).hexdigest().encode(), b"0" * 40
    )
    refused(publisher.submit(token, header, body, head=head), "payload digest mismatch")
    # truncated: the last bytes of the object are missing
    refused(publisher.submit(token, header, body[:-3]), "truncated")
    assert not storage.exists(good_key)
    # trailing bytes after the last object: refused, though the objects before them were
    # verified and stored (content-addressed, unreferenced until a commit names them)
    refused(publisher.submit(token, header, body + b"xx"), "trailing bytes")
    storage.delete(good_key)

    # an object whose content does not match its name
    _other_name, other_data, _ = stored_object(b"something else")
    liar_header, liar_body = build_pack([(good_name, other_data)])
    refused(publisher.submit(token, liar_header, liar_body), "does not match its name")
    assert not storage.exists(good_key)

    # a header whose declared size does not add up, and a named object
    bad_header = header.replace(f"S{len(body)}".encode(), f"S{len(body) + 1}".encode())
    refused(publisher.submit(token, bad_header, body), "declares")
    named = f"V2\nS{len(body)}\nN1\n--\nN {good_name} {len(body)} Zm9v\n".encode()
    refused(publisher.submit(token, named, body), "named objects")

    # authentication and tokens
    forger = Publisher(world.api_url, publisher.key_id, "wrong-secret")
    refused(forger.submit(token, header, body), "invalid_hmac")
    refused(forger.submit_per_token(token, header, body), "invalid_hmac")
    refused(publisher.submit("NOSUCHTOKEN", header, body), "invalid lease")
    reply = httpx.post(
        f"{world.api_url}/payloads",
        content=publisher.payload_head(token, header) + header + body,
        headers={"Authorization": authorization_header(publisher.key_id, publisher.secret, b"")},
    )
    assert reply.status_code == 400 and "message-size" in reply.json()["reason"]
    # a header_size that is not a number: HTTP 400, as payloads.go answers it
    head = publisher.payload_head(token, header).replace(
        f'"header_size" : "{len(header)}"'.encode(), b'"header_size" : "many"'
    )
    reply = httpx.post(
        f"{world.api_url}/payloads",
        content=head + header + body,
        headers={
            "Authorization": authorization_header(publisher.key_id, publisher.secret, head),
            "Message-Size": str(len(head)),
        },
    )
    assert reply.status_code == 400 and "invalid header_size" in reply.json()["reason"]
    assert not storage.exists(good_key)

    # and the lease still works for a good payload afterwards
    assert publisher.submit(token, header, body) == {"status": "ok"}
    assert storage.get(good_key) == good_data


def test_a_payload_above_the_limit_is_refused_declared_or_streamed(vault: Settings) -> None:
    with gateway_world(vault, ("small",), max_payload_bytes=256 << 10) as world:
        publisher = world.publisher("small")
        token = publisher.acquire_token(f"{world.repos['small']}/sw")
        name, data, key = stored_object(os.urandom(300 << 10))
        header, body = build_pack([(name, data)])
        refused(publisher.submit(token, header, body), "larger than the gateway's limit")
        # without Content-Length (chunked transfer), counted while it streams
        head = publisher.payload_head(token, header)

        def chunks() -> Iterator[bytes]:
            payload = head + header + body
            for start in range(0, len(payload), 32 << 10):
                yield payload[start : start + (32 << 10)]

        reply = httpx.post(
            f"{world.api_url}/payloads",
            content=chunks(),
            headers={
                "Authorization": authorization_header(publisher.key_id, publisher.secret, head),
                "Message-Size": str(len(head)),
            },
            timeout=60,
        ).json()
        refused(reply, "larger than the gateway's limit")
        assert not world.storage("small").exists(key)
        small_name, small_data, small_key = stored_object(b"fits")
        header, body = build_pack([(small_name, small_data)])
        assert publisher.submit(token, header, body) == {"status": "ok"}
        assert world.storage("small").get(small_key) == small_data


def test_a_publisher_killed_mid_payload_leaves_nothing_and_its_lease_expires(
    vault: Settings,
) -> None:
    with gateway_world(vault, ("killed",), lease_time_s=2) as world:
        publisher = world.publisher("killed")
        fqrn = world.repos["killed"]
        before = world.writer("killed").current_manifest().revision
        token = publisher.acquire_token(f"{fqrn}/sw")
        name, data, key = stored_object(os.urandom(3 << 20))
        header, body = build_pack([(name, data)])
        head = publisher.payload_head(token, header)
        payload = head + header + body
        url = httpx.URL(f"{world.api_url}/payloads")
        auth = authorization_header(publisher.key_id, publisher.secret, head)
        request = (
            f"POST {url.path} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
            f"Authorization: {auth}\r\nMessage-Size: {len(head)}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        with socket.create_connection((url.host, url.port or 80)) as sock:
            sock.sendall(request + payload[: len(payload) // 2])
        # the publisher is gone; the gateway stored nothing of the half-sent object
        time.sleep(1.0)
        assert not world.storage("killed").exists(key)
        # its lease expires; another publish of the path can start; nothing was published
        time.sleep(1.5)
        again = publisher.acquire_token(f"{fqrn}/sw")
        assert publisher.submit(again, header, body) == {"status": "ok"}  # the gateway is fine
        assert publisher.drop(again) == {"status": "ok"}
        assert world.writer("killed").current_manifest().revision == before
