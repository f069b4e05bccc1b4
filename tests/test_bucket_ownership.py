"""What a bucket check means for its repository (buckets/ownership.py), on literal inputs;
the checks themselves against RGW are in tests/test_provision_bucket_states.py."""

from __future__ import annotations

import re

import pytest

from buckets.ownership import (
    BucketCheck,
    BucketOwnerTemplateError,
    expected_owner,
    judge_bucket,
)
from service.settings import ProvisioningSettings

S3_URL = "https://s3.example.org"


def test_a_missing_bucket_waits_and_says_how_to_create_it() -> None:
    verdict = judge_bucket(BucketCheck(exists=False), "alice-sw", "alice", S3_URL)
    assert verdict.state == "waiting"
    # The account is named: a group repository's page is read by members who are not it.
    assert verdict.message.startswith(
        "waiting for bucket alice-sw: create it with the S3 account alice at"
    )
    assert f"aws --endpoint-url {S3_URL} s3 mb s3://alice-sw" in verdict.message


def test_a_bucket_of_another_account_is_foreign_without_naming_it() -> None:
    check = BucketCheck(exists=True, owner_id="mallory")
    verdict = judge_bucket(check, "alice-sw", "alice", S3_URL)
    assert verdict.state == "foreign"
    assert "belongs to another S3 account, not to alice (the repository's requester)" in (
        verdict.message
    )
    assert "create it again with the S3 account alice" in verdict.message
    assert "mallory" not in verdict.message


def test_the_requesters_bucket_or_any_when_unchecked_is_wired() -> None:
    ours = BucketCheck(exists=True, owner_id="alice")
    assert judge_bucket(ours, "alice-sw", "alice", S3_URL).state == "wired"
    theirs = BucketCheck(exists=True, owner_id="demo")
    assert judge_bucket(theirs, "alice-sw", None, S3_URL).state == "wired"


def test_an_unreadable_bucket_is_reported() -> None:
    verdict = judge_bucket(BucketCheck(exists=True, readable=False), "x-sw", "x", S3_URL)
    assert verdict.state == "unreadable" and "not allowed to read it" in verdict.message


def test_expected_owner_follows_the_template() -> None:
    rules = ProvisioningSettings()
    assert expected_owner(rules, "alice", "1234-abcd") == "alice"
    by_subject = rules.model_copy(update={"bucket_owner_template": "iam-{subject}"})
    assert expected_owner(by_subject, "alice", "1234-abcd") == "iam-1234-abcd"
    unchecked = rules.model_copy(update={"require_bucket_owner": False})
    assert expected_owner(unchecked, "alice", "1234-abcd") is None
    broken = rules.model_copy(update={"bucket_owner_template": "{email}"})
    with pytest.raises(
        BucketOwnerTemplateError, match=re.escape("use {username} and {subject} only")
    ):
        expected_owner(broken, "alice", "1234-abcd")
