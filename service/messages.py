"""Provisioning messages: the versioned JSON request and reply, the legacy CSV request, and the
parse/authorize steps that turn raw AMQP bytes into one AuthorizedProvisionRequest or a Refusal.

Both entry paths (JSON with a JWT, legacy CSV from a trusted producer) end in the same
AuthorizedProvisionRequest, so everything after this module has one input shape.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from service.auth import AuthError, IssuerUnavailable, TokenVerifier
from service.identity import Identity, is_path_safe_group, is_path_segment, normalise_group
from service.naming import NamingError, RepositoryNamer, bucket_for
from service.settings import ProvisioningSettings, Settings

MESSAGE_VERSION: Final = 1
SUPPORTED_VERSIONS = (MESSAGE_VERSION,)
MAX_MESSAGE_BYTES = 64 * 1024  # a request is a few hundred bytes; refuse floods early

RepositoryKind = Literal["personal", "group"]
_REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_REQUEST_ID = re.compile(_REQUEST_ID_PATTERN)
RequestId = Annotated[str, Field(pattern=_REQUEST_ID_PATTERN)]
RefusalCode = Literal[
    "malformed",  # not JSON / not CSV of 4 fields / wrong types
    "unsupported_version",
    "untrusted_producer",  # legacy message from a producer not in the trusted list
    "unauthenticated",  # token refused (maps to HTTP 401)
    "forbidden",  # authenticated but not allowed, e.g. not in the group (HTTP 403)
    "invalid_name",  # repository, short or bucket name refused by the naming rules
]


class ProvisionRequest(BaseModel):
    """Version 1 of the JSON request the dashboard (or the user API) sends."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = MESSAGE_VERSION
    request_id: RequestId
    access_token: SecretStr
    kind: RepositoryKind
    group: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    short_name: Annotated[str, Field(min_length=1, max_length=63)] | None = None
    bucket: Annotated[str, Field(min_length=3, max_length=63)] | None = None

    @model_validator(mode="after")
    def _group_iff_group_kind(self) -> ProvisionRequest:
        if self.kind == "group" and not self.group:
            raise ValueError("a group repository request needs 'group'")
        if self.kind == "personal" and self.group is not None:
            raise ValueError("a personal repository request must not name a 'group'")
        return self


class AuthorizedProvisionRequest(BaseModel):
    """A request whose requester is established and whose names are derived and valid."""

    model_config = ConfigDict(frozen=True)

    request_id: RequestId
    identity: Identity
    kind: RepositoryKind
    group: str | None  # normalised (see identity.normalise_group); None for personal
    fqrn: str
    bucket: str
    # "resume": rebuilt from the registry to resume a provision that failed part way (the
    # identity was established when the repository was first requested).
    source: Literal["token", "legacy", "resume"]


class ProvisionReply(BaseModel):
    """What the service answers on the status queue (and the API returns)."""

    model_config = ConfigDict(frozen=True)

    version: Literal[1] = MESSAGE_VERSION
    request_id: str | None
    status: Literal["ok", "refused", "failed"]
    fqrn: str | None = None
    reason: str | None = None
    # Where the client configuration bundle can be fetched (URL or API path); set when ok.
    client_config: str | None = None

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class Refusal(BaseModel):
    """A request that will never succeed as sent: reply with the reason, dead-letter it."""

    model_config = ConfigDict(frozen=True)

    code: RefusalCode
    reason: str
    request_id: str | None = None

    def reply(self) -> ProvisionReply:
        return ProvisionReply(request_id=self.request_id, status="refused", reason=self.reason)


class AmqpProperties(BaseModel):
    """The AMQP basic properties this module looks at (decoupled from the client library)."""

    model_config = ConfigDict(frozen=True)

    user_id: str | None = None  # verified by RabbitMQ against the connection's user
    app_id: str | None = None  # NOT verified by the broker: any producer can set it
    message_id: str | None = None
    correlation_id: str | None = None
    content_type: str | None = None

    @classmethod
    def from_pika(cls, properties: Any) -> AmqpProperties:
        """From a `pika.BasicProperties` (or anything with the same attributes)."""
        return cls(
            **{name: getattr(properties, name, None) for name in cls.model_fields},
        )


def _valid_request_id(value: object) -> str | None:
    """`value` if it is a well-formed request id (so a Refusal can still be correlated)."""
    if isinstance(value, str) and _REQUEST_ID.fullmatch(value):
        return value
    return None


def _validation_reason(error: ValidationError) -> str:
    # Built from locations and messages only: pydantic's str(error) would echo input values,
    # and one of them is the access token.
    parts = []
    for item in error.errors(include_input=False, include_url=False):
        location = ".".join(str(p) for p in item["loc"]) or "message"
        parts.append(f"{location}: {item['msg']}")
    return "invalid request: " + "; ".join(parts)


def _unsafe_subject(request_id: str | None) -> Refusal:
    # The subject becomes a Vault path segment (<subject>/cvmfs_keys/<fqrn>).
    return Refusal(
        code="invalid_name",
        reason="the requester's subject has characters the key store cannot use in a path; "
        "contact the service operators",
        request_id=request_id,
    )


class RequestParser:
    """Turns raw message bytes into a request to authorize, an authorized request or a Refusal."""

    def __init__(
        self,
        rules: ProvisioningSettings,
        namer: RepositoryNamer,
        reserved_buckets: Iterable[str] = (),
    ) -> None:
        self._rules = rules
        self._namer = namer
        self._reserved_buckets = tuple(reserved_buckets)

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestParser:
        return cls(
            settings.provisioning,
            RepositoryNamer.from_settings(settings),
            reserved_buckets=[settings.stratum0.bucket],
        )

    # -- parsing ---------------------------------------------------------------------------

    def parse(
        self, body: bytes, properties: AmqpProperties
    ) -> ProvisionRequest | AuthorizedProvisionRequest | Refusal:
        """JSON requests still need `authorize`; legacy ones come back already authorized."""
        fallback_id = _valid_request_id(properties.correlation_id) or _valid_request_id(
            properties.message_id
        )
        if len(body) > MAX_MESSAGE_BYTES:
            return Refusal(
                code="malformed",
                reason=f"message larger than {MAX_MESSAGE_BYTES} bytes",
                request_id=fallback_id,
            )
        try:
            text = body.decode("utf-8").strip()
        except UnicodeDecodeError:
            return Refusal(code="malformed", reason="message is not UTF-8", request_id=fallback_id)
        if text.startswith("{") or properties.content_type == "application/json":
            return self._parse_json(text, fallback_id)
        return self._parse_legacy(text, body, properties, fallback_id)

    def _parse_json(self, text: str, fallback_id: str | None) -> ProvisionRequest | Refusal:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            return Refusal(
                code="malformed",
                reason=f"message is not valid JSON ({error.msg} at line {error.lineno} "
                f"column {error.colno})",
                request_id=fallback_id,
            )
        if not isinstance(document, dict):
            return Refusal(
                code="malformed", reason="message must be a JSON object", request_id=fallback_id
            )
        request_id = _valid_request_id(document.get("request_id")) or fallback_id
        version = document.get("version")
        if version is None:
            return Refusal(
                code="unsupported_version",
                reason=f"message has no 'version'; supported: {list(SUPPORTED_VERSIONS)}",
                request_id=request_id,
            )
        if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
            return Refusal(
                code="unsupported_version",
                reason=f"message version {str(version)[:20]!r} is not supported; "
                f"supported: {list(SUPPORTED_VERSIONS)}",
                request_id=request_id,
            )
        try:
            return ProvisionRequest.model_validate(document)
        except ValidationError as error:
            return Refusal(
                code="malformed", reason=_validation_reason(error), request_id=request_id
            )

    def _parse_legacy(
        self, text: str, body: bytes, properties: AmqpProperties, fallback_id: str | None
    ) -> AuthorizedProvisionRequest | Refusal:
        # Identical legacy messages carry no id: the digest of the body makes a redelivery (or a
        # resend) of the same message the same request, so it is provisioned once.
        request_id = fallback_id or "legacy-" + hashlib.sha256(body).hexdigest()[:32]
        if not self._trusted(properties):
            return Refusal(
                code="untrusted_producer",
                reason="legacy messages are accepted only from trusted producers; "
                "send a version 1 JSON request with an access token",
                request_id=request_id,
            )
        fields = [f.strip() for f in text.split(",")]
        if len(fields) != 4 or not all(fields):
            return Refusal(
                code="malformed",
                reason="legacy message must be '<username>,<subject>,<repository fqrn>,<P|G>'",
                request_id=request_id,
            )
        username, subject, raw_fqrn, flag = fields
        if not is_path_segment(subject):
            return _unsafe_subject(request_id)
        if flag not in ("P", "G"):
            return Refusal(
                code="malformed",
                reason=f"legacy message kind must be P or G, not {flag[:10]!r}",
                request_id=request_id,
            )
        try:
            fqrn = self._namer.validate_fqrn(raw_fqrn)
            name = fqrn.partition(".")[0]
            if flag == "G":
                # The service we replace takes the group from the repository name's first
                # label; checking it through `group` keeps group names out of the personal
                # namespace.
                self._namer.group(name)
            bucket = bucket_for(fqrn, None, self._reserved_buckets)
        except NamingError as error:
            return Refusal(code="invalid_name", reason=error.reason, request_id=request_id)
        group = name if flag == "G" else None
        identity = Identity(
            issuer=f"legacy:{properties.user_id}",
            subject=subject,
            username=username,
            groups=frozenset({group} if group else ()),
        )
        return AuthorizedProvisionRequest(
            request_id=request_id,
            identity=identity,
            kind="group" if flag == "G" else "personal",
            group=group,
            fqrn=fqrn,
            bucket=bucket,
            source="legacy",
        )

    def _trusted(self, properties: AmqpProperties) -> bool:
        rules = self._rules
        if properties.user_id is None or properties.user_id not in rules.trusted_legacy_user_ids:
            return False
        return not rules.trusted_legacy_app_ids or properties.app_id in rules.trusted_legacy_app_ids

    # -- authorization ---------------------------------------------------------------------

    def authorize(
        self, request: ProvisionRequest, verifier: TokenVerifier
    ) -> AuthorizedProvisionRequest | Refusal:
        """Verify the token, check group membership and derive the names.

        Raises IssuerUnavailable (not a Refusal): the issuer being down is not the request's
        fault, so the caller should retry later rather than refuse.
        """
        try:
            identity = verifier.verify(request.access_token.get_secret_value())
        except IssuerUnavailable:
            raise
        except AuthError as error:
            return Refusal(
                code="unauthenticated", reason=error.reason, request_id=request.request_id
            )
        return self.authorize_identity(request, identity)

    def authorize_identity(
        self, request: ProvisionRequest, identity: Identity
    ) -> AuthorizedProvisionRequest | Refusal:
        """The part of `authorize` after the token (the API verifies the bearer itself)."""
        if not is_path_segment(identity.subject):
            return _unsafe_subject(request.request_id)
        group: str | None = None
        try:
            if request.kind == "group":
                assert request.group is not None  # checked by the model
                group = normalise_group(request.group)
                if not is_path_safe_group(group):
                    return Refusal(
                        code="invalid_name",
                        reason=f"group {group[:80]!r} has characters the key store cannot use",
                        request_id=request.request_id,
                    )
                if not identity.is_member(group):
                    return Refusal(
                        code="forbidden",
                        reason=f"you are not a member of group {group!r}; a group repository "
                        f"can be requested only by a member",
                        request_id=request.request_id,
                    )
                fqrn = self._namer.group(group, request.short_name)
            else:
                fqrn = self._namer.personal(identity.username, request.short_name)
            bucket = bucket_for(fqrn, request.bucket, self._reserved_buckets)
        except NamingError as error:
            return Refusal(code="invalid_name", reason=error.reason, request_id=request.request_id)
        return AuthorizedProvisionRequest(
            request_id=request.request_id,
            identity=identity,
            kind=request.kind,
            group=group,
            fqrn=fqrn,
            bucket=bucket,
            source="token",
        )
