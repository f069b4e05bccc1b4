"""Parsing of S3 notifications and registry webhooks, on the samples in shared/fixtures/events."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import RejectedMessage
from bridge.registry_events import (
    ImageDeleted,
    ImagePushed,
    UnpackFilter,
    image_event_message,
    parse_image_event_message,
    parse_registry_webhook,
)
from bridge.s3_events import ObjectEventKind, parse_s3_notification, repository_path_for_key
from tests.shared_paths import EVENTS

FIXTURES = EVENTS
DIGEST = "sha256:f41bca089572897cca05e647a7f64fed8a0b3b41e5e8fe2c47ecef887103a698"


def rgw_bodies() -> list[str]:
    return (FIXTURES / "ceph-rgw-amqp-messages.jsonl").read_text().splitlines()


def rgw_record() -> dict[str, Any]:
    record: dict[str, Any] = json.loads(rgw_bodies()[0])["Records"][0]
    return record


def with_key(record: dict[str, Any], key: str, source: str = "ceph:s3") -> str:
    forged = copy.deepcopy(record)
    forged["s3"]["object"]["key"] = key
    forged["eventSource"] = source
    return json.dumps({"Records": [forged]})


# --- S3 --------------------------------------------------------------------------------------


def test_rgw_put_and_delete_from_the_fixture() -> None:
    put_body, delete_body = rgw_bodies()
    [put] = parse_s3_notification(put_body)
    [delete] = parse_s3_notification(delete_body.encode())
    assert put.source == "ceph:s3"
    assert put.bucket == "dev-bucket"
    assert put.key == "cvmfs/repo.example.org/pub/hello.txt"
    assert put.repository_path == "/repo.example.org/pub/hello.txt"
    assert put.kind is ObjectEventKind.CREATED
    assert put.size == 12
    assert put.etag == "57c5b3b20eaf72325253d3f8249eba5f"
    assert put.version_id is None  # RGW sends "" for unversioned buckets
    assert put.sequencer == "FE470A6BADE4C503"
    assert put.principal_id == "dev" and put.owner_id == "dev"
    assert put.metadata == {"x-amz-meta-origin": "dev"}
    assert put.event_time.year == 2026 and put.event_time.tzinfo is not None
    assert delete.kind is ObjectEventKind.REMOVED
    assert delete.metadata["x-amz-date"] == "20261128T031822Z"


def test_rgw_pretty_printed_messages_from_the_topic_sample() -> None:
    text = (FIXTURES / "ceph-rgw-topic-and-messages.txt").read_text()
    bodies = [part.split("\n", 1)[1] for part in text.split("--- routing_key=")[1:]]
    kinds = [parse_s3_notification(body)[0].kind for body in bodies]
    assert kinds == [ObjectEventKind.CREATED, ObjectEventKind.REMOVED]


def test_moto_sns_envelope_key_is_url_decoded() -> None:
    sample = json.loads((FIXTURES / "moto-sns-http-notification.json").read_text())
    [event] = parse_s3_notification(json.dumps(sample["body"]))
    assert event.source == "aws:s3"
    assert event.key == "cvmfs/repo/x.txt"  # was cvmfs%2Frepo%2Fx.txt
    assert event.bucket == "dev-notify"
    assert event.owner_id is None and event.sequencer is None


def test_localstack_sns_envelope() -> None:
    sample = json.loads((FIXTURES / "localstack-sns-http-notification.json").read_text())
    [event] = parse_s3_notification(json.dumps(sample["body"]))
    assert event.key == "cvmfs/repo/y.txt"
    assert event.owner_id == "A3NL1KOZZKExample"
    assert event.principal_id == "AIDAJDPLRKLG7UEXAMPLE"
    assert event.sequencer == "0055AED6DCD90281E5"


def test_decoding_depends_on_the_source() -> None:
    record = rgw_record()
    [rgw] = parse_s3_notification(with_key(record, "cvmfs/with space+plus%20.txt"))
    assert rgw.key == "cvmfs/with space+plus%20.txt"
    [aws] = parse_s3_notification(with_key(record, "cvmfs/with+space%2Bplus%C3%A9.txt", "aws:s3"))
    assert aws.key == "cvmfs/with space+plusé.txt"


def test_utf8_keys_pass() -> None:
    [event] = parse_s3_notification(with_key(rgw_record(), "cvmfs/données/日本.txt"))
    assert event.repository_path == "/données/日本.txt"


@pytest.mark.parametrize(
    ("key", "source", "reason"),
    [
        ("cvmfs/a\x00b", "ceph:s3", "NUL"),
        ("cvmfs/a%00b", "aws:s3", "NUL"),
        ("other/file.txt", "ceph:s3", "not under"),
        ("cvmfsx/file.txt", "ceph:s3", "not under"),
        ("cvmfs/", "ceph:s3", "names no path"),
    ],
)
def test_keys_no_wired_bucket_sends_refuse_the_message(key: str, source: str, reason: str) -> None:
    with pytest.raises(RejectedMessage) as refused:
        parse_s3_notification(with_key(rgw_record(), key, source))
    assert reason in refused.value.reason
    assert refused.value.reason.startswith("record 0:")


@pytest.mark.parametrize(
    ("key", "source", "reason"),
    [
        ("cvmfs/../etc/passwd", "ceph:s3", "'..'"),
        ("cvmfs/a/../../b", "ceph:s3", "'..'"),
        ("cvmfs//etc/passwd", "ceph:s3", "leading '/'"),
        ("cvmfs%2F%2Fetc", "aws:s3", "leading '/'"),
        ("cvmfs%2F..%2Fx", "aws:s3", "'..'"),
        ("cvmfs/a/./b", "ceph:s3", "'.'"),
        ("cvmfs/a//b", "ceph:s3", "empty"),
        ("cvmfs/" + "x" * 256, "ceph:s3", "longer than 255"),
    ],
)
def test_a_users_key_that_can_never_be_a_path_carries_why(
    key: str, source: str, reason: str
) -> None:
    # It goes on to the sync, whose bucket rules refuse it where its owner sees it; nothing
    # maps it to a path (repository_path still refuses it).
    [event] = parse_s3_notification(with_key(rgw_record(), key, source))
    assert event.unsafe_reason is not None and reason in event.unsafe_reason
    with pytest.raises(RejectedMessage):
        _ = event.repository_path


def test_repository_path_mapping() -> None:
    assert repository_path_for_key("cvmfs/a") == "/a"
    assert repository_path_for_key("cvmfs/a/b c/d.txt") == "/a/b c/d.txt"
    assert repository_path_for_key("cvmfs/dir/") == "/dir"  # directory marker object


def mutate(change: Any) -> str:
    record = rgw_record()
    change(record)
    return json.dumps({"Records": [record]})


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"Records": []}', "Records"),
        (b"{}", "Records"),
        (mutate(lambda r: r["s3"]["object"].pop("key")), "s3.object.key"),
        (mutate(lambda r: r["s3"]["object"].update(key=42)), "s3.object.key"),
        (mutate(lambda r: r["s3"]["object"].update(size="12")), "s3.object.size"),
        (mutate(lambda r: r["s3"]["object"].update(size=-1)), "s3.object.size"),
        (mutate(lambda r: r["s3"]["bucket"].pop("name")), "s3.bucket.name"),
        (mutate(lambda r: r.update(eventSource="evil:s3")), "eventSource"),
        (mutate(lambda r: r.update(eventTime="yesterday")), "eventTime"),
        (mutate(lambda r: r.update(eventName="ObjectTagging:Put")), "neither"),
        (mutate(lambda r: r["s3"]["object"].update(metadata=[{"key": 1}])), "metadata"),
        (json.dumps({"Type": "SubscriptionConfirmation", "Message": "{}"}), "carries no S3"),
        (json.dumps({"Type": "Notification", "Message": 5}), "Message"),
    ],
)
def test_malformed_and_forged_notifications_are_refused(body: str | bytes, reason: str) -> None:
    with pytest.raises(RejectedMessage) as refused:
        parse_s3_notification(body)
    assert reason in refused.value.reason


def test_aws_test_event_carries_nothing() -> None:
    assert parse_s3_notification(json.dumps({"Event": "s3:TestEvent", "Bucket": "b"})) == []


# --- registry ----------------------------------------------------------------------------------


def distribution_body() -> dict[str, Any]:
    body: dict[str, Any] = json.loads(
        (FIXTURES / "distribution-registry-push-manifest.json").read_text()
    )["body"]
    return body


def harbor_body(kind: str = "PUSH_ARTIFACT") -> dict[str, Any]:
    body: dict[str, Any] = json.loads((FIXTURES / "harbor-push-artifact-example.json").read_text())
    body.pop("_note")
    body["type"] = kind
    return body


def test_distribution_manifest_push() -> None:
    parsed = parse_registry_webhook(json.dumps(distribution_body()))
    assert parsed.ignored == 0
    [event] = parsed.events
    assert isinstance(event, ImagePushed)
    assert event.registry == "127.0.0.1:5000"
    assert event.repository == "dev/hello" and event.project == "dev"
    assert event.tag == "1.0" and event.digest == DIGEST
    assert event.media_type == "application/vnd.oci.image.manifest.v1+json"
    assert event.reference == "127.0.0.1:5000/dev/hello:1.0"


def test_distribution_pulls_blobs_and_untagged_pushes_are_ignored() -> None:
    body = distribution_body()
    push = body["events"][0]
    pull = copy.deepcopy(push) | {"action": "pull"}
    blob = copy.deepcopy(push)
    blob["target"] |= {"mediaType": "application/octet-stream", "tag": ""}
    untagged = copy.deepcopy(push)
    untagged["target"]["tag"] = ""
    body["events"] = [pull, blob, push, untagged]
    parsed = parse_registry_webhook(json.dumps(body), registry_host="registry.example.org")
    assert [e.reference for e in parsed.events] == ["registry.example.org/dev/hello:1.0"]
    assert parsed.ignored == 3


def test_distribution_deletes() -> None:
    body = distribution_body()
    delete = {"action": "delete", "target": {"repository": "dev/hello", "digest": DIGEST}}
    delete_tag = {"action": "delete", "target": {"repository": "dev/hello", "tag": "1.0"}}
    body["events"] = [delete, delete_tag]
    parsed = parse_registry_webhook(json.dumps(body), registry_host="r.example.org")
    assert all(isinstance(e, ImageDeleted) for e in parsed.events)
    assert [(e.tag, e.digest) for e in parsed.events] == [(None, DIGEST), ("1.0", None)]


def test_harbor_push_and_delete() -> None:
    [pushed] = parse_registry_webhook(json.dumps(harbor_body())).events
    assert isinstance(pushed, ImagePushed)
    assert pushed.reference == "harbor.example.org/dev/hello:1.0"
    assert pushed.digest == DIGEST and pushed.source == "harbor"
    [deleted] = parse_registry_webhook(json.dumps(harbor_body("DELETE_ARTIFACT"))).events
    assert isinstance(deleted, ImageDeleted) and deleted.tag == "1.0"
    ignored = parse_registry_webhook(json.dumps(harbor_body("PULL_ARTIFACT")))
    assert ignored.events == [] and ignored.ignored == 1


def test_push_and_redelivery_have_the_same_message_id() -> None:
    [a] = parse_registry_webhook(json.dumps(distribution_body())).events
    [b] = parse_registry_webhook(json.dumps(distribution_body())).events
    [harbor] = parse_registry_webhook(json.dumps(harbor_body())).events
    assert a.message_id() == b.message_id() != harbor.message_id()


def test_bus_message_round_trip() -> None:
    [event] = parse_registry_webhook(json.dumps(harbor_body())).events
    assert parse_image_event_message(image_event_message(event)) == event
    with pytest.raises(RejectedMessage, match="image event message"):
        parse_image_event_message(b'{"event": {"kind": "image-pushed"}}')


def bad_target(**change: Any) -> str:
    body = distribution_body()
    body["events"][0]["target"] |= change
    return json.dumps(body)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("nope", "not valid JSON"),
        ("[]", "not a JSON object"),
        ('{"hello": 1}', "neither a distribution"),
        ('{"events": [{"action": "push"}]}', "target"),
        ('{"events": [{"action": "delete", "target": {"repository": "a/b"}}]}', "no registry"),
        (bad_target(repository="../../etc"), "repository"),
        (bad_target(digest="sha256:zz"), "digest"),
        (bad_target(tag="../x"), "tag"),
        (json.dumps(harbor_body() | {"occur_at": "soon"}), "occur_at"),
    ],
)
def test_malformed_registry_webhooks_are_refused(body: str, reason: str) -> None:
    with pytest.raises(RejectedMessage) as refused:
        parse_registry_webhook(body)
    assert reason in refused.value.reason


def test_unpack_filter() -> None:
    [event] = parse_registry_webhook(json.dumps(distribution_body())).events
    assert not UnpackFilter.of(["unpacked"]).accepts(event)
    assert UnpackFilter.of(["dev"]).accepts(event)
    assert UnpackFilter.of([], ["dev/hello"]).accepts(event)
    assert UnpackFilter.of([], ["127.0.0.1:5000/dev/hello:1.*"]).accepts(event)
    assert not UnpackFilter.of([], ["dev/hello:2.0"]).accepts(event)
    assert not UnpackFilter.of([], ["other.org/dev/hello:1.0"]).accepts(event)


@given(st.text(alphabet=st.sampled_from("ab./\x00 é%+"), max_size=24))
def test_an_accepted_key_always_maps_inside_the_repository(tail: str) -> None:
    key = "cvmfs/" + tail
    try:
        path = repository_path_for_key(key)
    except RejectedMessage:
        return
    parts = path.split("/")
    assert parts[0] == "" and all(part not in ("", ".", "..") for part in parts[1:])
    assert "\x00" not in path
    assert key.rstrip("/") == "cvmfs" + path  # the mapping is the prefix swap, nothing else
