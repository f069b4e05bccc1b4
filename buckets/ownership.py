"""Is a repository's bucket there, and is it the requester's? One HEAD and one GetBucketAcl.

"Does not exist" (the user has not created it yet) is not an error: the repository waits for
it. A bucket that exists but belongs to another RGW user is never wired, so nobody can publish
someone else's uploads by naming their bucket first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from service.repositories import BucketStateName
from service.settings import ProvisioningSettings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_MISSING = frozenset({"404", "NoSuchBucket"})
_DENIED = frozenset({"403", "AccessDenied"})


class BucketOwnerTemplateError(ValueError):
    """settings.provisioning.bucket_owner_template names a field identities do not have."""


@dataclass(frozen=True)
class BucketCheck:
    """What the bucket agent sees of a bucket."""

    exists: bool
    readable: bool = True
    owner_id: str | None = None


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def inspect_bucket(s3: S3Client, bucket: str) -> BucketCheck:
    """HEAD the bucket, then read its owner; other errors (RGW down, 5xx) propagate."""
    try:
        s3.head_bucket(Bucket=bucket)
        owner_id = s3.get_bucket_acl(Bucket=bucket)["Owner"]["ID"]
    except ClientError as error:
        if _code(error) in _MISSING:
            return BucketCheck(exists=False)
        if _code(error) in _DENIED:
            return BucketCheck(exists=True, readable=False)
        raise
    return BucketCheck(exists=True, owner_id=owner_id)


def expected_owner(rules: ProvisioningSettings, username: str, subject: str) -> str | None:
    """The RGW user that must own the requester's bucket; None when any owner is accepted."""
    if not rules.require_bucket_owner:
        return None
    try:
        return rules.bucket_owner_template.format(username=username, subject=subject)
    except (KeyError, IndexError, ValueError) as error:
        raise BucketOwnerTemplateError(
            f"provisioning.bucket_owner_template {rules.bucket_owner_template!r} is invalid "
            f"({error!r}); use {{username}} and {{subject}} only"
        ) from error


@dataclass(frozen=True)
class BucketVerdict:
    state: BucketStateName
    message: str  # for the repository's owner, in plain words


def judge_bucket(
    check: BucketCheck, bucket: str, wanted_owner: str | None, s3_url: str
) -> BucketVerdict:
    """What the check means for the repository: waiting, foreign, unreadable, or ours to wire
    (state `wired`, which the caller records only once the wiring succeeded)."""
    # The account is named, not "yours": group members other than the requester read it too.
    account = f"the S3 account {wanted_owner}" if wanted_owner is not None else "your S3 account"
    if not check.exists:
        return BucketVerdict(
            "waiting",
            f"waiting for bucket {bucket}: create it with {account} at {s3_url} "
            f"(e.g. `aws --endpoint-url {s3_url} s3 mb s3://{bucket}`), then upload under "
            f"cvmfs/; it is connected within a minute, nothing else to do",
        )
    if not check.readable:
        return BucketVerdict(
            "unreadable",
            f"bucket {bucket} exists, but the service is not allowed to read it; if it is "
            f"yours, contact the service operators, otherwise choose another bucket name",
        )
    if wanted_owner is not None and check.owner_id != wanted_owner:
        return BucketVerdict(
            "foreign",
            f"bucket {bucket} already exists and belongs to another S3 account, not to "
            f"{wanted_owner} (the repository's requester); nothing from it is published. If it "
            f"is meant for this repository, delete it there and create it again with {account}; "
            f"the repository connects it within a minute",
        )
    return BucketVerdict(
        "wired",
        f"bucket {bucket} is connected: uploads under cvmfs/ are published",
    )
