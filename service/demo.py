"""The embedded default job `./svc up` runs: a demo repository fed by the demo user's bucket.

It goes through the real path: the provision deployment (as a trusted producer would ask for
it), then an upload under `cvmfs/` that RGW → RabbitMQ → bridge → sync publishes.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from botocore.exceptions import ClientError

from bridge.errors import PermanentStartError, TransientStartError
from bridge.flow_starter import PrefectFlowStarter
from buckets.s3_clients import demo_s3
from cvmfs.errors import CvmfsError
from cvmfs.reader import RepositoryReader
from service.client_config import stratum0_url
from service.identity import Identity
from service.keystore import KeyOwner, KeyStore
from service.messages import AuthorizedProvisionRequest
from service.naming import RepositoryNamer
from service.settings import Settings

DEMO_BUCKET = "demo-software"
DEMO_KEY = "cvmfs/hello/README.txt"


@dataclass(frozen=True)
class DemoRepository:
    fqrn: str
    bucket: str
    url: str
    revision: int
    path: str


def demo_request(settings: Settings) -> AuthorizedProvisionRequest:
    user = settings.ceph.demo_user
    return AuthorizedProvisionRequest(
        request_id=f"demo-{user}",
        identity=Identity(issuer="local-demo", subject=f"demo-{user}", username=user),
        kind="personal",
        group=None,
        fqrn=RepositoryNamer.from_settings(settings).personal(user),
        bucket=DEMO_BUCKET,
        source="legacy",
    )


def _ensure_bucket(settings: Settings) -> None:
    try:
        demo_s3(settings).create_bucket(Bucket=DEMO_BUCKET)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise


def _published_revision(settings: Settings, fqrn: str, public_key: str, path: str) -> int | None:
    try:
        with RepositoryReader.open(stratum0_url(settings, fqrn), fqrn, [public_key]) as reader:
            return reader.manifest.revision if reader.exists(path) else None
    except CvmfsError:
        return None


def run_demo(settings: Settings, timeout_s: float = 180.0) -> DemoRepository:
    """Provision the demo repository, upload a file, wait until a client can read it."""
    _ensure_bucket(settings)
    request = demo_request(settings)
    deadline = time.monotonic() + timeout_s
    starter = PrefectFlowStarter(settings.prefect.api_url, tags=("demo",))
    while True:  # the runner registers its deployments a few seconds after it starts
        try:
            starter(
                "provision/provision",
                {"request": request.model_dump(mode="json")},
                f"provision-{request.request_id}",
            )
            break
        except (PermanentStartError, TransientStartError):
            # "not found" is transient since the bridge retries it (a runner being deployed);
            # here it means the runner started with us has not registered its deployments yet.
            if time.monotonic() > deadline:
                raise
            time.sleep(2.0)
    owner = KeyOwner.personal(request.identity.subject)
    store = KeyStore.from_settings(settings.vault)
    while not store.exists(owner, request.fqrn):
        if time.monotonic() > deadline:
            raise TimeoutError(f"provisioning {request.fqrn} did not finish: see the Prefect UI")
        time.sleep(1.0)
    key_file = settings.absolute_data_dir / f"{request.fqrn}.pub"
    key_file.write_text(store.read(owner, request.fqrn).master_public_pem)
    body = f"Published by the CVMFS distribution service ({uuid.uuid4()}).\n".encode()
    path = "/" + DEMO_KEY.removeprefix("cvmfs/")
    # Upload once the bucket is wired (the provision run records that), then wait to see it.
    while True:
        demo_s3(settings).put_object(Bucket=DEMO_BUCKET, Key=DEMO_KEY, Body=body)
        for _ in range(20):
            revision = _published_revision(settings, request.fqrn, str(key_file), path)
            if revision is not None:
                return DemoRepository(
                    fqrn=request.fqrn,
                    bucket=DEMO_BUCKET,
                    url=stratum0_url(settings, request.fqrn),
                    revision=revision,
                    path=path,
                )
            time.sleep(1.0)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{DEMO_KEY} was not published in {timeout_s:.0f} s")
