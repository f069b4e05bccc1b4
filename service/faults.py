"""Errors by kind: the one place that decides whether a failed step is retried or refused.

Every Prefect task of the service retries with `retry_if_transient` (its `retry_condition_fn`):
only a `Transient` fault is tried again. Bad input, and every error of unknown kind (a defect),
fails its step once: repeating a deterministic failure only delays the report by the retry
delays (42 s in issue #14) and changes nothing.

| kind        | examples                                                              | retried |
|-------------|-----------------------------------------------------------------------|---------|
| `Transient` | network errors and timeouts, HTTP 5xx/429 from S3, Vault, the registry | yes     |
|             | or Prefect, a publish conflict (another writer won), RabbitMQ down,   |         |
|             | a locked database                                                     |         |
| `BadInput`  | a refused key, tarball or object, an invalid path or tree operation,  | no      |
|             | an unknown repository, a refused claim, S3 4xx (no such bucket ...)   |         |
| defect      | anything else (a bug): fails once, with its traceback in the run      | no      |

Errors of other packages are classified here by their type (and, for HTTP clients, by the
status code they carry), never by their message. New code raises `BadInput` or `Transient`
(or a subclass) directly.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Literal

import botocore.exceptions
import httpx
import hvac.exceptions
import pika.exceptions
import requests
import sqlalchemy.exc

from bridge.errors import BrokerUnavailable, RejectedMessage, TransientStartError
from cvmfs.errors import (
    ConflictError,
    CvmfsError,
    FormatError,
    InvalidPathError,
    KeyFileError,
    NotFoundError,
    StorageError,
    VerificationError,
)
from images.errors import ImageError
from images.errors import RegistryError as ImageRegistryError
from service.keystore import KeystoreError, VaultUnavailable
from service.repositories import RegistryError

FaultKind = Literal["transient", "bad-input", "defect"]


class ServiceFault(Exception):
    """Base of the service's own errors that carry their kind; `reason` is for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadInput(ServiceFault):
    """What the user (or the bucket) asked for cannot be done as given: refuse it once."""


class Transient(ServiceFault):
    """A service the step depends on failed for now (network, 5xx, lease, broker): retry."""


# S3 error codes that mean "try again" although some servers send them with a 4xx status.
_TRANSIENT_S3_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed"}
)
_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    Transient,
    ConnectionError,
    TimeoutError,
    ConflictError,  # another publish won the race: a new transaction on its result succeeds
    StorageError,
    VaultUnavailable,
    BrokerUnavailable,
    TransientStartError,
    ImageRegistryError,
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ResponseStreamingError,
    httpx.TransportError,
    requests.ConnectionError,
    requests.Timeout,
    hvac.exceptions.InternalServerError,
    hvac.exceptions.VaultDown,
    hvac.exceptions.BadGateway,
    hvac.exceptions.RateLimitExceeded,
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.StreamLostError,
    sqlalchemy.exc.OperationalError,  # "database is locked", a dropped connection
    sqlite3.OperationalError,
)
_BAD_INPUT_TYPES: tuple[type[BaseException], ...] = (
    BadInput,
    RejectedMessage,
    RegistryError,  # unknown repository, claim refused, request conflict
    KeystoreError,  # unsafe path, keys not found (VaultUnavailable is matched first)
    InvalidPathError,
    NotFoundError,
    FormatError,
    VerificationError,
    KeyFileError,
    CvmfsError,  # the rest of the format library: tree operations that do not fit
    ImageError,  # refused layers, unknown images (RegistryError is matched first)
    ValueError,  # pydantic validation and argument checks
)


def _status_kind(status: int | None) -> FaultKind | None:
    if status is None:
        return None
    if status >= 500 or status == 429:
        return "transient"
    if 400 <= status < 500:
        return "bad-input"
    return None


def kind_of(error: BaseException) -> FaultKind:
    """Whether `error` is worth a retry ("transient"), bad input, or a defect."""
    if isinstance(error, botocore.exceptions.ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in _TRANSIENT_S3_CODES:
            return "transient"
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return _status_kind(status) or "defect"
    if isinstance(error, httpx.HTTPStatusError):
        return _status_kind(error.response.status_code) or "defect"
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return _status_kind(error.response.status_code) or "defect"
    if isinstance(error, _TRANSIENT_TYPES):
        return "transient"
    if isinstance(error, _BAD_INPUT_TYPES):
        return "bad-input"
    cause = error.__cause__
    if isinstance(cause, BaseException) and cause is not error:
        return kind_of(cause)  # a wrapper without a kind of its own: its cause decides
    return "defect"


def is_transient(error: BaseException) -> bool:
    return kind_of(error) == "transient"


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry a failed attempt only when its error is transient."""
    try:
        state.result()
    except BaseException as error:  # the attempt's own exception, re-raised by result()
        return is_transient(error)
    return False
