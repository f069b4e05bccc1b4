import pytest

from buckets.object_metadata import attributes_from_metadata


@pytest.mark.parametrize(
    ("head", "mode"),
    [(b"\x7fELF\x02\x01", 0o755), (b"#!/bin/sh\n", 0o755), (b"hello", 0o644), (b"", 0o644)],
)
def test_mode_from_content(head: bytes, mode: int) -> None:
    assert attributes_from_metadata({}, head).mode == mode


def test_s3cmd_attributes_win_over_content() -> None:
    meta = {
        "s3cmd-attrs": "atime:1/ctime:2/gid:0/gname:root/md5:x/mode:33261/mtime:1704067200/uid:0"
    }
    attributes = attributes_from_metadata(meta, b"plain text")
    assert attributes.mode == 0o755
    assert attributes.mtime == 1704067200


def test_s3cmd_setuid_bits_are_dropped() -> None:
    attributes = attributes_from_metadata({"s3cmd-attrs": f"mode:{0o104755}"}, b"")
    assert attributes.mode == 0o755


def test_rclone_mtime_with_fraction() -> None:
    attributes = attributes_from_metadata({"X-Amz-Meta-Mtime": "1706745600.123456789"}, b"#!")
    assert attributes == attributes_from_metadata({"mtime": "1706745600.5"}, b"#!x")
    assert attributes.mtime == 1706745600


def test_garbage_metadata_falls_back_to_content() -> None:
    attributes = attributes_from_metadata({"s3cmd-attrs": "mode:abc/mtime:-5", "mtime": "x"}, b"a")
    assert attributes.mode == 0o644
    assert attributes.mtime is None
