"""What the gateway's HTTP handlers use, built once from the settings and closed at shutdown."""

from __future__ import annotations

from dataclasses import dataclass, field

from cvmfs.errors import CvmfsError
from cvmfs.manifest import Manifest, SignedManifest
from cvmfs.storage import Storage
from gateway.commit_runner import CommitRunner
from gateway.errors import GatewayError
from gateway.keys import RepositoryKeys
from gateway.leases import LeaseStore
from service.keystore import KeyStore
from service.repositories import RepositoryRegistry, database_url
from service.settings import Settings
from tasks.storage import repository_storage

MANIFEST_KEY = ".cvmfspublished"  # spec §1.1


@dataclass
class GatewayServices:
    settings: Settings
    registry: RepositoryRegistry
    leases: LeaseStore
    keys: RepositoryKeys
    commits: CommitRunner = field(default_factory=CommitRunner)

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewayServices:
        registry = RepositoryRegistry.open(settings)
        return cls(
            settings=settings,
            registry=registry,
            leases=LeaseStore.open_url(database_url(settings)),
            keys=RepositoryKeys(
                registry,
                KeyStore.from_settings(settings.vault),
                ttl_s=settings.gateway.key_cache_ttl_s,
                refresh_min_s=settings.gateway.key_refresh_min_s,
            ),
        )

    def close(self) -> None:
        self.commits.close()  # the runs in progress finish their bookkeeping first
        self.leases.close()
        self.registry.close()

    def storage(self, fqrn: str) -> Storage:
        return repository_storage(self.settings, fqrn)

    def current_manifest(self, fqrn: str) -> Manifest:
        """The repository's manifest as stratum-0 has it now (its signature is the writer's
        business; the gateway only reads the root hash and revision)."""
        try:
            data = self.storage(fqrn).get(MANIFEST_KEY)
        except CvmfsError as error:
            raise GatewayError(
                f"cannot read the manifest of {fqrn} from stratum-0 ({type(error).__name__}): "
                "retry later"
            ) from error
        return SignedManifest.parse(data).manifest
