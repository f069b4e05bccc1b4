"""One settings model for the whole service, read once at the edge and passed down.

Environment variables use the prefix ``CVMFS_SVC_`` and ``__`` for nesting
(``CVMFS_SVC_RABBITMQ__PORT=5673``); an optional dotenv-style file is named by
``CVMFS_SVC_SETTINGS_FILE``. Secrets are ``SecretStr`` and never printed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK = "127.0.0.1"


class RabbitMQSettings(BaseModel):
    host: str = LOOPBACK
    port: int = 5672
    management_port: int = 15672
    dist_port: int = 25672
    node_name: str = "cvmfs-svc@localhost"
    username: str = "guest"
    password: SecretStr = SecretStr("guest")
    vhost: str = "/"
    # RGW binds one exchange per broker URL (services-notes §2.7 pitfall 3): exactly one,
    # pre-declared, topic exchange carries every bucket notification; routing key = topic name.
    events_exchange: str = "cvmfs.events"
    dead_letter_exchange: str = "cvmfs.dead-letter"

    @property
    def amqp_url(self) -> str:
        return f"amqp://{self.host}:{self.port}"

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.management_port}"


class CephSettings(BaseModel):
    # Where the service's processes reach RGW (S3); the stack itself binds 127.0.0.1.
    host: str = LOOPBACK
    mon_port_v2: int = 3300
    mon_port_v1: int = 6789
    rgw_port: int = 8000
    osd_size_gib: int = 20
    # The service's own S3 user (creates buckets, topics, notifications; stores stratum-0).
    service_access_key: str = "CVMFSSVCACCESSKEY000"
    service_secret_key: SecretStr = SecretStr("cvmfssvcsecretkey00000000000000000000000")
    # The bucket agent: an RGW *system* user that reads users' buckets and manages their
    # notifications (RGW 16.2 ignores bucket policies for the notification API). System users
    # cannot create buckets (HTTP 500), so it is a user of its own, used for nothing else.
    bucket_agent_access_key: str = "CVMFSBUCKETAGENT0000"
    bucket_agent_secret_key: SecretStr = SecretStr("cvmfsbucketagentsecret000000000000000000")
    # A demo user, printed by `./svc up`, whose bucket is wired to a demo repository.
    demo_user: str = "demo"
    demo_access_key: str = "DEMOACCESSKEY0000000"
    demo_secret_key: SecretStr = SecretStr("demosecretkey000000000000000000000000000")
    region: str = "default"
    # Persistent topics queue events in RADOS while the broker is down (services-notes §2.7
    # pitfall 4). With amqp-ack-level=broker the Debian RGW 16.2.15 segfaulted (msgr-worker
    # thread) in 5 of 5 runs of PUTs paced 0.5 s apart, after 29-69 PUTs; bucket_wiring
    # therefore gives every topic amqp-ack-level=none. Measured with that on a private
    # civetweb stack (bench/rgw_persistent_stress.py, figures in bench/README.md): no crash in
    # 2,000 PUTs + 198 deletes, 3 x (600 PUTs + 66 deletes) and 400 paced PUTs + 44 deletes,
    # each with RabbitMQ stopped and started in the middle, and every event delivered.
    # Caveats: RGW picks up a new topic's queue on a 30 s scan, so a freshly wired bucket's
    # first event can take that long; the messages are transient, so only a quorum queue (the
    # bridge's default) keeps them over a broker restart.
    persistent_topics: bool = True

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.rgw_port}"


class VaultSettings(BaseModel):
    # Where the service's processes reach OpenBao; the stack itself binds 127.0.0.1.
    host: str = LOOPBACK
    port: int = 8200
    cluster_port: int = 8201
    # "raft" for the persistent development stack; "dev" (in-memory) is fine inside tests.
    mode: Literal["raft", "dev"] = "raft"
    token: SecretStr | None = None  # filled from the stack's init file when None
    kv_mount: str = "secret"

    @property
    def addr(self) -> str:
        return f"http://{self.host}:{self.port}"


class RegistrySettings(BaseModel):
    # Where the service's processes reach the OCI registry; the stack itself binds 127.0.0.1.
    host: str = LOOPBACK
    port: int = 5000
    # Shared secret the registry (or Harbor) sends in the Authorization header of webhooks.
    webhook_secret: SecretStr = SecretStr("dev-webhook-secret")
    unpack_projects: list[str] = Field(default_factory=lambda: ["unpacked"])
    # The registry as users name it when they push (`<public_host>/<project>/<name>:<tag>`),
    # shown on the dashboard; the unpacked repository names each image by the host its push
    # named. None: host:port (the local registry).
    public_host: str | None = None
    # Robot account for pulling images to unpack (None: anonymous); never logged.
    robot_username: str | None = None
    robot_password: SecretStr | None = None
    # Platforms taken from a multi-architecture index, first match wins.
    unpack_platforms: list[str] = Field(default_factory=lambda: ["linux/amd64"])
    # Device nodes and FIFOs in image layers are published as CVMFS special files, as DUCC and
    # the stock publisher do (images built from a root file system carry /dev); true leaves
    # them out, and the unpack run's artifact lists each one.
    unpack_skip_special: bool = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def push_host(self) -> str:
        """The registry users push to (public_host, else host:port)."""
        return self.public_host or f"{self.host}:{self.port}"


class PrefectSettings(BaseModel):
    # Where every service process reaches the Prefect API (and the UI links point); the
    # stack's server binds 127.0.0.1.
    host: str = LOOPBACK
    port: int = 4200
    # The Prefect server's database: SQLite under the data directory by default; the stack's
    # PostgreSQL when postgres.enabled; this URL when set (postgresql+asyncpg://user@host/db).
    database_url: SecretStr | None = None
    # How often the deployments runner asks for new flow runs (it passes this to Prefect's
    # Runner as is; PREFECT_RUNNER_POLL_FREQUENCY only takes whole seconds).
    runner_poll_s: float = Field(default=0.5, gt=0)
    heartbeat_s: int = 30
    # A flow run whose heartbeats stop this long without a final state (its runner's host
    # died) is scheduled again (deployments/rescue.py). Three heartbeats, as Prefect's own
    # zombie recipe; must stay well above heartbeat_s so a busy run is not taken for dead.
    rescue_after_s: int = Field(default=90, ge=10)
    # Production runners: the Prefect work pool (process type) the deployments are registered
    # in and `./svc worker` polls on each runner host. None: the embedded default, one
    # `./svc serve-deployments` serving them (no pool to create, nothing to deploy).
    work_pool: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        """The Prefect UI, where the dashboard links each flow run."""
        return f"http://{self.host}:{self.port}"


class PostgresSettings(BaseModel):
    """The stack's PostgreSQL (Debian's `postgresql`), for the multi-host layout.

    Off by default: SQLite files under the data directory are the embedded default. When
    enabled, the stack runs one server under `<data_dir>/postgres/` and the registry of
    repositories and the Prefect server use it (unless database_url / prefect.database_url
    name another server, e.g. a managed PostgreSQL in production).
    """

    enabled: bool = False
    # Where service processes reach it; the stack's server binds 127.0.0.1 only.
    host: str = LOOPBACK
    port: int = 5432
    user: str = "cvmfs"
    password: SecretStr = SecretStr("cvmfs-dev-postgres-password")
    registry_database: str = "cvmfs_registry"
    prefect_database: str = "prefect"

    def url(self, driver: str, database: str) -> str:
        password = self.password.get_secret_value()
        return f"postgresql+{driver}://{self.user}:{password}@{self.host}:{self.port}/{database}"


class Stratum0Settings(BaseModel):
    backend: Literal["local", "s3"] = "local"
    # Local backend: repositories live in <data_dir>/stratum0/<fqrn>; served read-only over HTTP.
    http_port: int = 8080
    # S3 backend: repositories live in this RGW bucket under <fqrn>/, served by RGW itself.
    bucket: str = "cvmfs-stratum0"
    # The base URL clients elsewhere reach the repositories at, as written into client
    # configurations: `<public_url>/<fqrn>` (a stratum 1 or a proxy in front of this host).
    # None: the local server (http://127.0.0.1:<http_port>/cvmfs, or the RGW bucket).
    public_url: str | None = None


class S3Settings(BaseModel):
    """What users are told about the S3 service their buckets live in."""

    # The S3 endpoint users upload to, as named in instructions (None: the local RGW).
    public_url: str | None = None
    # How a user gets S3 credentials, shown beside the endpoint. Locally the stack creates an
    # RGW user per demo identity (stack/idp_users.py) and `./svc up` prints their keys.
    credentials_help: str = (
        "Use the S3 access key and secret key of your account; on the local stack "
        "`./svc up` prints each demo user's keys."
    )


class ApiSettings(BaseModel):
    """The service's HTTP application: user API and registry webhook receiver."""

    # The address `./svc api` listens on: loopback behind a reverse proxy on the same host;
    # a host's own address (or 0.0.0.0) when a load balancer elsewhere spreads the calls.
    bind_host: str = LOOPBACK
    port: int = 8090
    # Mutating calls (request, sync, rollback) per token subject: a token bucket of this many
    # calls, refilled at rate_limit_per_minute; its state is in the registry database, so
    # every API process shares it.
    rate_limit_burst: int = Field(default=10, ge=1)
    rate_limit_per_minute: float = Field(default=10.0, gt=0)
    # A member of `<group>/<manager_subgroup>` manages the group's repositories (may read
    # their keys).
    manager_subgroup: str = "managers"
    # The URL users' browsers reach this application at (a reverse proxy's https URL in
    # production). The dashboard is `<public_url>/dashboard/`, its OIDC redirect URI
    # `<public_url>/dashboard/callback`. None: http://127.0.0.1:<port>.
    public_url: str | None = None

    @property
    def base_url(self) -> str:
        """The effective public URL, without a trailing slash."""
        return (self.public_url or f"http://{LOOPBACK}:{self.port}").rstrip("/")

    @property
    def dashboard_url(self) -> str:
        return f"{self.base_url}/dashboard/"

    @property
    def dashboard_redirect_uri(self) -> str:
        return f"{self.base_url}/dashboard/callback"


class IdpSettings(BaseModel):
    """The local OIDC identity provider of the stack (oidc-provider on Node.js, stack/idp/).

    Only for development and tests: production points `oidc.*` at INDIGO IAM or Keycloak.
    """

    port: int = 9000
    # One hour, like INDIGO IAM's default access-token lifetime.
    access_token_ttl_s: int = Field(default=3600, ge=60)
    # How long a device code of `cvmfs-svc login` waits for its user (RFC 8628 `expires_in`):
    # 10 minutes, oidc-provider's default, time to open a browser and sign in. The test stack
    # shortens it so that an expired code can be seen within its test.
    device_code_ttl_s: int = Field(default=600, ge=5)

    @property
    def issuer_url(self) -> str:
        # With the trailing slash, as INDIGO IAM writes its issuer.
        return f"http://{LOOPBACK}:{self.port}/"


class OidcSettings(BaseModel):
    """The OIDC issuer whose access tokens the service accepts (e.g. INDIGO IAM)."""

    # Compared exactly with the token's `iss` (OIDC Core §3.1.3.7): keep the trailing slash
    # if the issuer has one. Must be https unless the host is loopback (checked by the verifier).
    # Default: the stack's local provider (IdpSettings.issuer_url); production sets IAM's.
    issuer_url: str = IdpSettings().issuer_url
    audience: str = "cvmfs-distribution-service"
    # The dashboard's client at the issuer: a confidential client (authorization code + PKCE
    # S256). The local provider registers it with this secret; with IAM, the secret IAM gave.
    # None: a public client (PKCE only).
    client_id: str = "cvmfs-dashboard"
    client_secret: SecretStr | None = SecretStr("cvmfs-dashboard-local-secret")
    # The command line's client at the issuer (`cvmfs-svc login`): a public client (no secret,
    # a user's machine cannot keep one) allowed the device authorization grant (RFC 8628) and
    # refresh tokens. The local provider registers it; with IAM, the id of a client registered
    # with the device code grant.
    cli_client_id: str = "cvmfs-cli"
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    # None: discovered from <issuer_url>/.well-known/openid-configuration.
    jwks_url: str | None = None
    jwks_cache_ttl_s: int = 300
    # An unknown `kid` refetches the JWKS at most this often, so random kids cannot flood the
    # issuer with requests.
    jwks_min_refresh_interval_s: int = 10
    http_timeout_s: float = 5.0
    leeway_s: int = 30
    # First claim present and non-empty becomes Identity.username.
    username_claims: list[str] = Field(default_factory=lambda: ["preferred_username"])


class ProvisioningSettings(BaseModel):
    """Repository naming rules and the producers trusted to send the legacy message."""

    reserved_names: list[str] = Field(
        default_factory=lambda: [
            "unpacked",
            "cvmfs-config",
            "www",
            "admin",
            "api",
            "root",
            "stratum0",
            "stratum1",
            "localhost",
            "gateway",
            "publisher",
        ]
    )
    personal_suffix: str = "personal"
    fqrn_max_length: int = 60
    # AMQP `user_id` values allowed to send `<username>,<subject>,<fqrn>,<P|G>`. RabbitMQ
    # rejects a message whose user_id differs from the connection's user, so it is verified.
    trusted_legacy_user_ids: list[str] = Field(default_factory=list)
    # Optional extra condition (app_id is NOT verified by the broker): if non-empty, a legacy
    # message must also carry one of these app_id values.
    trusted_legacy_app_ids: list[str] = Field(default_factory=list)
    # Deprovisioning: the stratum-0 content is archived (moved aside) or deleted, and the
    # keys stay in Vault this long so a mistaken deprovision can be undone.
    deprovision_stratum0: Literal["archive", "delete"] = "archive"
    key_grace_days: int = 30
    # Whitelists are re-signed when they expire within this many days (they last 30).
    resign_within_days: int = 7
    # A repository's bucket must belong to the RGW user made from the requester's identity by
    # this template ({username} or {subject}); otherwise anyone could publish someone else's
    # bucket by naming it first. For a group repository it is the requesting member's RGW user
    # (a group has no S3 account of its own; members share the bucket with bucket policies).
    # `{username}` matches the stack's per-user RGW accounts (uid = username).
    bucket_owner_template: str = "{username}"
    # False accepts a bucket of any owner: an RGW whose accounts do not follow the identities
    # (the test suite uploads as one demo S3 user for many identities).
    require_bucket_owner: bool = True
    # How often the bridge's repository watcher checks waiting buckets (one HEAD and, once it
    # exists, one GetBucketAcl per waiting repository) and due resumes: a bucket created
    # afterwards is wired within this plus the wiring run's start-up (~5 s), well under a minute.
    watch_interval_s: float = Field(default=10.0, gt=0)
    # A started wiring run is not started again for this long (it takes a few seconds; a
    # failed one is retried after this).
    wire_retry_s: float = Field(default=60.0, gt=0)
    # A provision that failed part way is resumed (every step is idempotent) after this delay,
    # doubled per attempt up to resume_max_delay_s, at most resume_max_attempts times; the
    # steps' own retries (2 + 10 + 30 s) have already covered short outages by then.
    resume_first_delay_s: float = Field(default=30.0, gt=0)
    resume_max_delay_s: float = Field(default=1800.0, gt=0)
    resume_max_attempts: int = Field(default=12, ge=0)
    # A repository still `requested` this long after its claim has lost its provision run (a
    # killed worker or host; a slow but live run takes minutes at most, even with every step
    # retried): it is resumed like a failed one.
    resume_stalled_after_s: float = Field(default=900.0, gt=0)


class SyncSettings(BaseModel):
    """Limits on what a bucket may publish: uploads are untrusted."""

    # An object above this is refused with the reason (dead-letter queue, sync artifact);
    # also the largest file a tarball may hold. 64 GiB: a chunked file of ~2,000 chunks.
    max_object_bytes: int = Field(default=64 * 2**30, gt=0)
    # Device nodes, FIFOs and sockets in tarballs are published as CVMFS special files, as the
    # stock publisher does (rootfs tarballs carry /dev); true leaves them out, and the sync
    # run's artifact lists each one it left out.
    skip_special: bool = False


class GatewaySettings(BaseModel):
    """The repository gateway that stock `cvmfs_server` publishers talk to (gateway/)."""

    # The address `./svc gateway` listens on (see api.bind_host).
    bind_host: str = LOOPBACK
    # The port of CERN's cvmfs-gateway, so a publisher's `-u gw,...,http://<host>:4929/api/v1`
    # line needs no change.
    port: int = 4929
    # How long a lease lasts without a commit: the stock gateway's max_lease_time (7200 s).
    lease_time_s: int = Field(default=7200, gt=0)
    # One payload request (one object pack). The stock publisher cuts packs at 200 MiB
    # (ObjectPack::kDefaultLimit) but makes a larger one for a single larger object, so the
    # limit is the largest object a publisher may send, plus the pack header.
    max_payload_bytes: int = Field(default=1 << 30, gt=0)
    # A key read from Vault is used this long before it is read again; an unknown key id or a
    # failed HMAC re-reads it at once (at most every key_refresh_min_s), so rotation is seen.
    key_cache_ttl_s: float = Field(default=300.0, ge=0)
    key_refresh_min_s: float = Field(default=1.0, ge=0)
    # The URL remote publishers reach the gateway at (their `cvmfs_server mkfs -u gw,...,<url>`);
    # None: http://127.0.0.1:<port>/api/v1.
    public_url: str | None = None
    # How often each gateway copy looks for `gateway-commit` runs that a dead gateway left
    # unfinished (silent for prefect.rescue_after_s) and ends them as Crashed (gateway/orphans.py);
    # it also looks once at start. A few reads of the Prefect server per sweep.
    orphan_sweep_s: float = Field(default=60.0, gt=0)

    @property
    def api_url(self) -> str:
        return (self.public_url or f"http://{LOOPBACK}:{self.port}/api/v1").rstrip("/")


class DashboardSettings(BaseModel):
    """The web dashboard at <api public url>/dashboard/ (dashboard/)."""

    # Signs the session cookie (which holds only a random session id; the session itself is
    # in the registry database). None: generated once into <data_dir>/dashboard/session-secret;
    # several API hosts must share it, so set it when they do not share the data directory.
    session_secret: SecretStr | None = None
    # Eight hours, a working day: after that (or once the access token no longer verifies)
    # the user logs in again.
    session_ttl_s: int = Field(default=8 * 3600, ge=60)


class MetricsSettings(BaseModel):
    """Prometheus endpoints (`/metrics`, on loopback by default), one per service process."""

    enabled: bool = True
    # Loopback: a Prometheus on this host (or an agent forwarding to one) scrapes it; the
    # host's own address when a Prometheus elsewhere scrapes every host (docs/metrics.md).
    bind_host: str = LOOPBACK
    # One port per kind of process, so one host can run one of each; a second copy of the
    # same process on a host needs its own port (it logs that and serves no metrics else).
    # 9461-9464 sit above every stack port and its test offsets (idp 9000 + <= 410).
    bridge_port: int = 9461
    api_port: int = 9462
    gateway_port: int = 9463
    # The deployments runner serves what its flow-run subprocesses record (prometheus-client
    # multiprocess mode, in <multiprocess_dir>/runner-<host>-<port>/).
    runner_port: int = 9464
    # None: <data_dir>/metrics. Must be on the runner's own host (mmap'd files, per process).
    multiprocess_dir: Path | None = None
    # The API's exporter reads each repository's manifest and whitelist from stratum-0 at
    # most this often (two reads per repository; an S3 stratum-0 with thousands of
    # repositories would otherwise pay thousands of GETs per scrape).
    repository_state_ttl_s: float = Field(default=60.0, ge=0)
    # Prefect and RabbitMQ are asked at most this often (each scrape of every API process).
    service_state_ttl_s: float = Field(default=10.0, ge=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CVMFS_SVC_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    data_dir: Path = Path(".data/dev")
    repository_domain: str = "sw.example.org"
    # The registry of repositories: this URL when set, else the stack's PostgreSQL when
    # postgres.enabled, else SQLite in data_dir.
    database_url: SecretStr | None = None

    rabbitmq: RabbitMQSettings = Field(default_factory=RabbitMQSettings)
    ceph: CephSettings = Field(default_factory=CephSettings)
    vault: VaultSettings = Field(default_factory=VaultSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    prefect: PrefectSettings = Field(default_factory=PrefectSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    stratum0: Stratum0Settings = Field(default_factory=Stratum0Settings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    idp: IdpSettings = Field(default_factory=IdpSettings)
    oidc: OidcSettings = Field(default_factory=OidcSettings)
    provisioning: ProvisioningSettings = Field(default_factory=ProvisioningSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @classmethod
    def load(cls) -> Settings:
        """Read the environment (and the file named by CVMFS_SVC_SETTINGS_FILE, if any)."""
        settings_file = os.environ.get("CVMFS_SVC_SETTINGS_FILE")
        if settings_file:
            return cls(_env_file=settings_file)  # type: ignore[call-arg]
        return cls()

    def with_port_offset(self, offset: int, data_dir: Path) -> Settings:
        """The same settings shifted to other ports and another data directory.

        The test suite runs its own stack this way, beside a running development stack. An
        issuer that is the local provider moves with it; any other issuer stays.
        """
        idp = self.idp.model_copy(update={"port": self.idp.port + offset})
        oidc = self.oidc
        if oidc.issuer_url == self.idp.issuer_url:
            oidc = oidc.model_copy(update={"issuer_url": idp.issuer_url})
        return self.model_copy(
            update={
                "data_dir": data_dir,
                "rabbitmq": self.rabbitmq.model_copy(
                    update={
                        "port": self.rabbitmq.port + offset,
                        "management_port": self.rabbitmq.management_port + offset,
                        "dist_port": self.rabbitmq.dist_port + offset,
                        "node_name": f"cvmfs-svc-{offset}@localhost",
                    }
                ),
                "ceph": self.ceph.model_copy(
                    update={
                        "mon_port_v2": self.ceph.mon_port_v2 + offset,
                        "mon_port_v1": self.ceph.mon_port_v1 + offset,
                        "rgw_port": self.ceph.rgw_port + offset,
                    }
                ),
                "vault": self.vault.model_copy(
                    update={
                        "port": self.vault.port + offset,
                        "cluster_port": self.vault.cluster_port + offset,
                    }
                ),
                "registry": self.registry.model_copy(update={"port": self.registry.port + offset}),
                "prefect": self.prefect.model_copy(update={"port": self.prefect.port + offset}),
                "postgres": self.postgres.model_copy(update={"port": self.postgres.port + offset}),
                "stratum0": self.stratum0.model_copy(
                    update={"http_port": self.stratum0.http_port + offset}
                ),
                "api": self.api.model_copy(update={"port": self.api.port + offset}),
                "gateway": self.gateway.model_copy(update={"port": self.gateway.port + offset}),
                "idp": idp,
                "oidc": oidc,
                "metrics": self.metrics.model_copy(
                    update={
                        "bridge_port": self.metrics.bridge_port + offset,
                        "api_port": self.metrics.api_port + offset,
                        "gateway_port": self.metrics.gateway_port + offset,
                        "runner_port": self.metrics.runner_port + offset,
                    }
                ),
            }
        )

    @property
    def absolute_data_dir(self) -> Path:
        return self.data_dir.resolve()

    @property
    def registry_database_url(self) -> str | None:
        """The registry's database URL; None: the SQLite file under the data directory."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        if self.postgres.enabled:
            return self.postgres.url("psycopg", self.postgres.registry_database)
        return None

    @property
    def prefect_database_url(self) -> str | None:
        """The Prefect server's database URL; None: its SQLite file under the data directory."""
        if self.prefect.database_url is not None:
            return self.prefect.database_url.get_secret_value()
        if self.postgres.enabled:
            return self.postgres.url("asyncpg", self.postgres.prefect_database)
        return None

    @property
    def metrics_multiprocess_dir(self) -> Path:
        """Where flow-run subprocesses of this host's runners write their metrics."""
        return (self.metrics.multiprocess_dir or self.absolute_data_dir / "metrics").resolve()

    @property
    def s3_public_url(self) -> str:
        """The S3 endpoint named to users (s3.public_url, else the local RGW)."""
        return (self.s3.public_url or self.ceph.s3_endpoint).rstrip("/")

    @property
    def stratum0_public_url(self) -> str:
        """The base URL of the repositories for clients: `<this>/<fqrn>`."""
        if self.stratum0.public_url is not None:
            return self.stratum0.public_url.rstrip("/")
        if self.stratum0.backend == "s3":
            return f"{self.s3_public_url}/{self.stratum0.bucket}"
        return f"http://{LOOPBACK}:{self.stratum0.http_port}/cvmfs"
