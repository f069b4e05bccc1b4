"""Errors by kind: what is retried (transient) and what is refused once (bad input, defects)."""

from __future__ import annotations

import botocore.exceptions
import httpx
import pytest
from prefect.states import Completed, Failed

from bridge.errors import BrokerUnavailable, RejectedMessage
from cvmfs.errors import ConflictError, InvalidPathError, StorageError
from cvmfs.tarball import TarballError
from cvmfs.transaction import TransactionError
from images.errors import LayerRefusedError
from images.errors import RegistryError as ImageRegistryError
from service.faults import BadInput, Transient, kind_of, retry_if_transient
from service.keystore import VaultUnavailable
from service.repositories import NameTaken, UnknownRepository


def _client_error(status: int, code: str) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


def _http_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://127.0.0.1/")
    return httpx.HTTPStatusError("x", request=request, response=httpx.Response(status))


@pytest.mark.parametrize(
    "error",
    [
        Transient("broker restarting"),
        ConnectionRefusedError(),
        TimeoutError(),
        ConflictError("another revision was published"),
        StorageError("503 from RGW"),
        VaultUnavailable("vault sealed"),
        BrokerUnavailable("no confirm"),
        ImageRegistryError("registry 502"),
        _client_error(503, "ServiceUnavailable"),
        _client_error(400, "SlowDown"),
        _client_error(500, "InternalError"),
        botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        _http_error(503),
        _http_error(429),
        httpx.ConnectError("refused"),
    ],
    ids=type,
)
def test_transient_faults_are_retried(error: BaseException) -> None:
    assert kind_of(error) == "transient"
    assert retry_if_transient(None, None, Failed(data=error)) is True


@pytest.mark.parametrize(
    "error",
    [
        BadInput("refused key"),
        RejectedMessage("unsafe key"),
        InvalidPathError("name too long"),
        TransactionError("/adv/conflict is a directory: remove it before writing a file there"),
        TarballError("member '../x' escapes"),
        LayerRefusedError("device file"),
        UnknownRepository("no repository"),
        NameTaken("taken"),
        _client_error(404, "NoSuchBucket"),
        _client_error(412, "PreconditionFailed"),
        _http_error(404),
        ValueError("bad parameter"),
    ],
    ids=type,
)
def test_bad_input_is_never_retried(error: BaseException) -> None:
    assert kind_of(error) == "bad-input"
    assert retry_if_transient(None, None, Failed(data=error)) is False


def test_defects_are_not_retried_and_a_wrapper_takes_its_cause_kind() -> None:
    assert kind_of(KeyError("bug")) == "defect"
    assert retry_if_transient(None, None, Failed(data=AssertionError())) is False
    try:
        try:
            raise TimeoutError("S3 read timed out")
        except TimeoutError as cause:
            raise RuntimeError("download failed") from cause
    except RuntimeError as wrapped:
        assert kind_of(wrapped) == "transient"
    assert retry_if_transient(None, None, Completed()) is False
