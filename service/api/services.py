"""What the API talks to, built once per application from the settings and closed with it.

Tests pass their own pieces (an isolated exchange, a verifier for a local issuer); the rest is
built from the same settings the rest of the service reads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx

from bridge.config import BridgeConfig
from bridge.publisher import EventPublisher
from bridge.run_requests import FlowStarter
from bridge.webhook import Publisher
from cvmfs.storage import Storage
from service.api.errors import Unavailable
from service.api.ratelimit import RateLimiter
from service.api.runs import DeploymentNames
from service.api.stratum0 import repository_storage
from service.auth import TokenVerifier
from service.keystore import KeyStore, KeystoreError
from service.messages import RequestParser
from service.repositories import RepositoryRegistry, database_url
from service.settings import RabbitMQSettings, Settings

log = logging.getLogger("cvmfs.api")


def _prefect_starter(api_url: str) -> FlowStarter:
    from bridge.flow_starter import PrefectFlowStarter  # imports prefect: slow

    return PrefectFlowStarter(api_url, tags=("api",))


class QueueDepth:
    """Messages waiting in a queue, from the RabbitMQ management API (None if unreachable)."""

    def __init__(self, mq: RabbitMQSettings, timeout_s: float = 2.0) -> None:
        self._mq = mq
        self._http = httpx.Client(
            auth=(mq.username, mq.password.get_secret_value()), timeout=timeout_s
        )

    def source(self, queue: str) -> str:
        return f"rabbitmq-management:{queue}"

    def __call__(self, queue: str) -> int | None:
        vhost, name = quote(self._mq.vhost, safe=""), quote(queue, safe="")
        url = f"{self._mq.management_url}/api/queues/{vhost}/{name}"
        try:
            response = self._http.get(url)
            response.raise_for_status()
            body = response.json()
            return int(body.get("messages_ready", 0)) + int(body.get("messages_unacknowledged", 0))
        except (httpx.HTTPError, ValueError, TypeError) as error:
            log.info("event=queue-depth-unavailable queue=%s error=%s", queue, type(error).__name__)
            return None

    def close(self) -> None:
        self._http.close()


@dataclass
class ApiServices:
    settings: Settings
    verifier: TokenVerifier
    registry: RepositoryRegistry
    publisher: Publisher
    starter: FlowStarter
    rate_limiter: RateLimiter
    bridge_config: BridgeConfig
    parser: RequestParser
    queue_depth: QueueDepth
    storage_for: Callable[[str], Storage]
    _key_store_factory: Callable[[], KeyStore]
    deployments: DeploymentNames = field(default_factory=DeploymentNames)
    _key_store: KeyStore | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closers: list[Callable[[], None]] = field(default_factory=list)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        verifier: TokenVerifier | None = None,
        bridge_config: BridgeConfig | None = None,
        starter: FlowStarter | None = None,
        key_store: Callable[[], KeyStore] | None = None,
    ) -> ApiServices:
        """Everything from `settings`; the keyword arguments replace single pieces."""
        config = bridge_config or BridgeConfig()
        closers: list[Callable[[], None]] = []
        if verifier is None:
            verifier = TokenVerifier(settings.oidc)
            closers.append(verifier.close)
        registry = RepositoryRegistry.open(settings)
        closers.append(registry.close)
        publisher = EventPublisher(settings.rabbitmq, config)
        closers.append(publisher.close)
        limiter = RateLimiter.open_url(
            database_url(settings),
            settings.api.rate_limit_burst,
            settings.api.rate_limit_per_minute,
        )
        closers.append(limiter.close)
        depth = QueueDepth(settings.rabbitmq)
        closers.append(depth.close)
        return cls(
            settings=settings,
            verifier=verifier,
            registry=registry,
            publisher=publisher,
            starter=starter or _prefect_starter(settings.prefect.api_url),
            rate_limiter=limiter,
            bridge_config=config,
            parser=RequestParser.from_settings(settings),
            queue_depth=depth,
            storage_for=lambda fqrn: repository_storage(settings, fqrn),
            _key_store_factory=key_store or (lambda: KeyStore.from_settings(settings.vault)),
            _closers=closers,
            deployments=DeploymentNames(sync=config.sync_deployment),
        )

    def key_store(self) -> KeyStore:
        """Built on first use, so the API starts (and serves the rest) without Vault."""
        with self._lock:
            if self._key_store is None:
                try:
                    self._key_store = self._key_store_factory()
                except KeystoreError as error:
                    log.error("event=keystore-unconfigured error=%s", error)
                    raise Unavailable(
                        "the key store (Vault) is not configured for the API; ask an operator"
                    ) from None
            return self._key_store

    def close(self) -> None:
        for close in reversed(self._closers):
            try:
                close()
            except Exception as error:  # closing must go on for the others
                log.warning("event=api-close-failed error=%s", type(error).__name__)
