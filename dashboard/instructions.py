"""What the dashboard tells a user to type: client setup, uploads with aws cli, s3cmd, rclone,
and the stock `cvmfs_server` publisher through the gateway.

Each tool keeps file modes its own way (buckets/object_metadata.py reads them): s3cmd stores
`x-amz-meta-s3cmd-attrs` (with --preserve, its default), rclone its mtime metadata; the aws cli
keeps none, so executables are recognised by content (ELF, `#!`).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from service.api.models import ClientConfig
from service.keystore import unpacked_fqrn
from service.settings import Settings

UPLOAD_PREFIX = "cvmfs/"


@dataclass(frozen=True)
class UploadTool:
    name: str
    commands: str
    modes: str


def s3_endpoint(settings: Settings) -> str:
    """The S3 endpoint users upload to (s3.public_url when set, else the local RGW)."""
    return settings.s3_public_url


def credentials_help(settings: Settings) -> str:
    return settings.s3.credentials_help


def upload_tools(settings: Settings, bucket: str, create_bucket: bool = True) -> list[UploadTool]:
    """Each tool's lines to upload into `bucket`; with `create_bucket`, its line that creates
    the bucket first (only for the account that must own it: buckets/ownership.py)."""
    endpoint = s3_endpoint(settings)
    host = endpoint.split("://", 1)[-1]
    https = endpoint.startswith("https://")
    target = f"s3://{bucket}/{UPLOAD_PREFIX}"
    q = shlex.quote
    s3cmd = (
        f"s3cmd --access_key=YOUR_KEY --secret_key=YOUR_SECRET --host={q(host)} "
        f"--host-bucket={q(host)}{'' if https else ' --no-ssl'}"
    )

    def lines(*commands: str | None) -> str:
        return "\n".join(c for c in commands if c is not None)

    return [
        UploadTool(
            name="aws cli",
            commands=lines(
                "export AWS_ACCESS_KEY_ID=YOUR_KEY AWS_SECRET_ACCESS_KEY=YOUR_SECRET",
                f"aws --endpoint-url {q(endpoint)} s3 mb s3://{bucket}" if create_bucket else None,
                f"aws --endpoint-url {q(endpoint)} s3 sync ./my-software/ {target}",
                f"aws --endpoint-url {q(endpoint)} s3 ls --recursive {target}",
            ),
            modes="keeps no file modes: ELF binaries and #! scripts become 0755, the rest 0644",
        ),
        UploadTool(
            name="s3cmd",
            commands=lines(
                f"{s3cmd} mb s3://{bucket}" if create_bucket else None,
                f"{s3cmd} sync --preserve ./my-software/ {target}",
            ),
            modes="keeps each file's mode in x-amz-meta-s3cmd-attrs (--preserve, its default)",
        ),
        UploadTool(
            name="rclone",
            commands=lines(
                "rclone config create cvmfs s3 provider Ceph "
                f"endpoint {q(endpoint)} access_key_id YOUR_KEY secret_access_key YOUR_SECRET",
                f"rclone mkdir cvmfs:{bucket}" if create_bucket else None,
                f"rclone copy --metadata ./my-software/ cvmfs:{bucket}/{UPLOAD_PREFIX}",
            ),
            modes="keeps modification times (its mtime metadata); modes by content as for aws",
        ),
    ]


def client_setup_commands(config: ClientConfig) -> str:
    """Shell commands that install the two downloaded files and mount the repository."""
    fqrn = config.fqrn
    key_path = next(p for p in config.files if p.endswith(".pub"))
    conf_path = next(p for p in config.files if p.endswith(".conf"))
    key_dir = key_path.rsplit("/", 1)[0]
    return (
        f"sudo mkdir -p {key_dir}\n"
        f"sudo cp {fqrn}.pub {key_path}\n"
        f"sudo cp {fqrn}.conf {conf_path}\n"
        # Appended to the list, not set: a second repository's line must keep the first.
        f"echo 'CVMFS_REPOSITORIES=${{CVMFS_REPOSITORIES:+$CVMFS_REPOSITORIES,}}{fqrn}' "
        "| sudo tee -a /etc/cvmfs/default.local\n"
        f"cvmfs_config probe {fqrn}\n"
        f"ls /cvmfs/{fqrn}/"
    )


def publisher_commands(fqrn: str, mkfs_command: str) -> str:
    """Install the three downloaded publisher files, create the publisher, publish a path."""
    return (
        "sudo mkdir -p /etc/cvmfs/keys\n"
        f"sudo cp {fqrn}.pub {fqrn}.crt {fqrn}.gw /etc/cvmfs/keys/\n"
        f"sudo chmod 0600 /etc/cvmfs/keys/{fqrn}.gw\n"
        f"sudo {mkfs_command}\n"
        f"cvmfs_server transaction {fqrn}/<dir>   # a lease on /<dir>\n"
        f"# change files under /cvmfs/{fqrn}/<dir>/, then:\n"
        f"cvmfs_server publish {fqrn}             # or: cvmfs_server abort {fqrn}"
    )


@dataclass(frozen=True)
class ImagePush:
    """Where an image is pushed to be unpacked, and where it then appears."""

    prefix: str  # <registry>/<project>
    example: str  # <prefix>/<name>:<tag>
    commands: str
    path: str  # /cvmfs/<unpacked fqrn>/<example>


def image_push(settings: Settings) -> ImagePush:
    """Only images under `registry.unpack_projects` are unpacked (and wishlist patterns, which
    operators set); the first project is the one users are told about."""
    project = settings.registry.unpack_projects[0] if settings.registry.unpack_projects else ""
    prefix = f"{settings.registry.push_host}/{project}"
    example = f"{prefix}/my-image:1.0"
    insecure = settings.registry.public_host is None  # the local registry speaks plain HTTP
    return ImagePush(
        prefix=prefix,
        example=example,
        commands=(
            f"docker tag my-image:1.0 {example}\n"
            f"docker push {example}\n"
            "# or, without docker:\n"
            f"skopeo copy{' --dest-tls-verify=false' if insecure else ''} "
            f"oci-archive:my-image.tar docker://{example}"
        ),
        path=f"/cvmfs/{unpacked_fqrn(settings.repository_domain)}/{example}",
    )


@dataclass(frozen=True)
class BucketSharing:
    """How the account owning a group repository's bucket lets the other members upload, as
    one viewer of the page reads it."""

    owner_account: str | None  # the S3 account that must own it (None: any account may)
    viewer_creates: bool  # the viewer's own account is that one: they create and share it
    principal: str  # the member named in the policy: the viewer's user, or a placeholder
    policy_file: str
    policy: str
    command: str


MEMBER_PLACEHOLDER = "MEMBER"


def bucket_sharing(
    settings: Settings, bucket: str, owner_account: str | None, viewer_account: str | None
) -> BucketSharing:
    """A bucket policy naming the members' S3 users. The service publishes only the bucket of
    the requester's account (buckets/ownership.py), and a group has no account of its own, so
    members write into that one bucket; RGW publishes their objects like the owner's.

    `viewer_account` is the S3 account of whoever reads the page (the same template names
    it): the owner gets the policy to fill in, another member the policy naming them, which
    the owner applies."""
    viewer_creates = owner_account is None or viewer_account == owner_account
    member = viewer_account if viewer_account and not viewer_creates else MEMBER_PLACEHOLDER
    principal = f"arn:aws:iam:::user/{member}"
    policy_file = f"{bucket}-members.json"
    policy = (
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow",\n'
        f'  "Principal": {{"AWS": ["{principal}"]}},\n'
        '  "Action": ["s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"],\n'
        f'  "Resource": ["arn:aws:s3:::{bucket}", "arn:aws:s3:::{bucket}/*"]}}]}}'
    )
    endpoint = shlex.quote(s3_endpoint(settings))
    return BucketSharing(
        owner_account=owner_account,
        viewer_creates=viewer_creates,
        principal=principal,
        policy_file=policy_file,
        policy=policy,
        command=(
            f"aws --endpoint-url {endpoint} s3api put-bucket-policy --bucket {bucket} "
            f"--policy file://{policy_file}"
        ),
    )


def waiting_for_owner(bucket: str, owner_account: str, owner_username: str) -> str:
    """The waiting bucket's state as a member who cannot create it reads it: the service's
    message tells the owner to create it (`s3 mb`), which under a member's own account would
    make a bucket the service refuses as another account's."""
    return (
        f"waiting for bucket {bucket}: only the S3 account {owner_account} (of {owner_username}, "
        "who requested the repository) can create it; it is connected within a minute, and the "
        "repository's Upload section says how you upload into it"
    )
