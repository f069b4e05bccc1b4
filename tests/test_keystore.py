"""Key sets and publisher access on a real OpenBao (the test stack's dev-mode server)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import hvac
import hvac.exceptions
import pytest

from cvmfs.keys import KeySet, generate_keyset
from service.keystore import (
    KeyOwner,
    KeysNotFound,
    KeyStore,
    KeystoreError,
    UnsafeKeyPath,
    VaultUnavailable,
    keyset_from_fields,
    keyset_to_fields,
    secret_path,
    vault_client,
)
from service.policies import PublisherAccess, publisher_policy, publisher_policy_name
from service.settings import Settings

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def keysets() -> tuple[KeySet, KeySet]:
    first = generate_keyset("keys.sw.example.org", gateway_key_id="key-1")
    second = generate_keyset("keys.sw.example.org", gateway_key_id="key-2")
    return first, second


@pytest.fixture
def client(vault: Settings) -> hvac.Client:
    return vault_client(vault.vault)


@pytest.fixture
def store(vault: Settings) -> KeyStore:
    return KeyStore.from_settings(vault.vault)


@pytest.fixture
def access(client: hvac.Client, vault: Settings) -> PublisherAccess:
    return PublisherAccess(client, vault.vault.kv_mount)


def _fqrn(label: str) -> str:
    # Tests share one OpenBao per session: unique names keep them independent.
    return f"{label}-{uuid.uuid4().hex[:8]}.sw.example.org"


def _owner() -> KeyOwner:
    return KeyOwner.personal(str(uuid.uuid4()))


def _as_token(vault: Settings, token: str) -> hvac.Client:
    return hvac.Client(url=vault.vault.addr, token=token)


def test_fields_round_trip(keysets: tuple[KeySet, KeySet]) -> None:
    keys = keysets[0]
    fields = keyset_to_fields(keys)
    assert set(fields) == {
        "publicKey",
        "masterKey",
        "certificateKey",
        "repositoryKey",
        "gatewayKey",
    }
    assert keyset_from_fields(dict(fields)) == keys
    public_only = {k: v for k, v in fields.items() if k in ("publicKey", "certificateKey")}
    assert keyset_from_fields(dict(public_only)).master_private_pem is None
    with pytest.raises(KeystoreError):
        keyset_from_fields({"publicKey": fields["publicKey"]})
    with pytest.raises(KeystoreError):  # halves that do not belong together
        keyset_from_fields({**fields, "masterKey": keyset_to_fields(keysets[1])["masterKey"]})


def test_paths_follow_the_service_we_replace() -> None:
    fqrn = "cms.sw.example.org"
    assert secret_path(KeyOwner.personal("abc-123"), fqrn) == f"abc-123/cvmfs_keys/{fqrn}"
    assert secret_path(KeyOwner.of_group("/cms"), fqrn) == f"groups/cms/cvmfs_keys/{fqrn}"
    assert (
        secret_path(KeyOwner.of_group("cms/production"), fqrn)
        == f"groups/cms/production/cvmfs_keys/{fqrn}"
    )


def test_owner_for_repository() -> None:
    assert KeyOwner.for_repository("personal", "abc", None) == KeyOwner.personal("abc")
    assert KeyOwner.for_repository("group", "abc", "/cms") == KeyOwner.of_group("cms")
    with pytest.raises(ValueError):
        KeyOwner.for_repository("group", "abc", None)


@pytest.mark.parametrize("subject", ["../other", "a/b", "", ".hidden", 'x"y', "a..b"])
def test_unsafe_subjects_are_refused(subject: str) -> None:
    with pytest.raises((UnsafeKeyPath, ValueError)):
        KeyOwner.personal(subject)


@pytest.mark.parametrize("fqrn", ["../x.sw.example.org", "X.sw.example.org", "nodot", "a/b.org"])
def test_unsafe_fqrns_are_refused(fqrn: str) -> None:
    with pytest.raises(UnsafeKeyPath):
        secret_path(KeyOwner.personal("abc"), fqrn)


def test_store_and_read_personal(
    store: KeyStore, client: hvac.Client, keysets: tuple[KeySet, KeySet]
) -> None:
    owner, fqrn = _owner(), _fqrn("alice-personal")
    stored, created = store.store_if_absent(owner, fqrn, keysets[0])
    assert created and stored == keysets[0]
    assert store.read(owner, fqrn) == keysets[0]
    # At the documented path, with the documented field names.
    raw = client.secrets.kv.v2.read_secret_version(
        path=f"{owner.subject}/cvmfs_keys/{fqrn}",
        mount_point="secret",
        raise_on_deleted_version=True,
    )
    assert raw["data"]["data"]["publicKey"] == keysets[0].master_public_pem
    assert raw["data"]["data"]["gatewayKey"] == keysets[0].gateway_key


def test_store_and_read_group(
    store: KeyStore, client: hvac.Client, keysets: tuple[KeySet, KeySet]
) -> None:
    group = f"grp-{uuid.uuid4().hex[:6]}/production"
    owner, fqrn = KeyOwner.of_group("/" + group), _fqrn("production")
    store.store_if_absent(owner, fqrn, keysets[0])
    raw = client.secrets.kv.v2.read_secret_version(
        path=f"groups/{group}/cvmfs_keys/{fqrn}",
        mount_point="secret",
        raise_on_deleted_version=True,
    )
    assert raw["data"]["data"]["certificateKey"] == keysets[0].certificate_pem


def test_storing_twice_keeps_the_first_key_set(
    store: KeyStore, client: hvac.Client, keysets: tuple[KeySet, KeySet]
) -> None:
    owner, fqrn = _owner(), _fqrn("twice")
    first, created_first = store.store_if_absent(owner, fqrn, keysets[0])
    second, created_second = store.store_if_absent(owner, fqrn, keysets[1])
    assert created_first and not created_second
    assert second == first == keysets[0]
    metadata = client.secrets.kv.v2.read_secret_metadata(
        path=secret_path(owner, fqrn), mount_point="secret"
    )
    assert metadata["data"]["current_version"] == 1


def test_concurrent_stores_keep_one_key_set(
    vault: Settings, keysets: tuple[KeySet, KeySet]
) -> None:
    owner, fqrn = _owner(), _fqrn("race")
    barrier = threading.Barrier(4)
    results: list[tuple[KeySet, bool]] = []

    def run(keys: KeySet) -> None:
        store = KeyStore.from_settings(vault.vault)
        barrier.wait()
        results.append(store.store_if_absent(owner, fqrn, keys))

    threads = [threading.Thread(target=run, args=(keysets[i % 2],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(created for _, created in results) == 1
    assert len({keys.master_public_pem for keys, _ in results}) == 1


def test_missing_keys(store: KeyStore) -> None:
    owner, fqrn = _owner(), _fqrn("missing")
    with pytest.raises(KeysNotFound):
        store.read(owner, fqrn)
    assert not store.exists(owner, fqrn)


def test_soft_deleted_key_set_is_reported_not_replaced(
    store: KeyStore, client: hvac.Client, keysets: tuple[KeySet, KeySet]
) -> None:
    owner, fqrn = _owner(), _fqrn("soft-deleted")
    store.store_if_absent(owner, fqrn, keysets[0])
    client.secrets.kv.v2.delete_latest_version_of_secret(
        path=secret_path(owner, fqrn), mount_point="secret"
    )
    with pytest.raises(KeystoreError, match="deleted key set"):
        store.store_if_absent(owner, fqrn, keysets[1])


def test_destroy(store: KeyStore, keysets: tuple[KeySet, KeySet]) -> None:
    owner, fqrn = _owner(), _fqrn("gone")
    store.store_if_absent(owner, fqrn, keysets[0])
    store.destroy(owner, fqrn)
    assert not store.exists(owner, fqrn)


def test_policy_text_names_exactly_one_path() -> None:
    hcl = publisher_policy("secret", KeyOwner.personal("abc"), "r.sw.example.org")
    assert (
        hcl
        == 'path "secret/data/abc/cvmfs_keys/r.sw.example.org" {\n  capabilities = ["read"]\n}\n'
    )
    assert publisher_policy_name("r.sw.example.org") == "cvmfs-publisher-r.sw.example.org"


def test_publisher_token_reads_only_its_repository(
    vault: Settings,
    store: KeyStore,
    access: PublisherAccess,
    keysets: tuple[KeySet, KeySet],
) -> None:
    owner = _owner()  # the same owner for both: the policy must still separate them
    fqrn_a, fqrn_b = _fqrn("repo-a"), _fqrn("repo-b")
    store.store_if_absent(owner, fqrn_a, keysets[0])
    store.store_if_absent(owner, fqrn_b, keysets[1])
    access.grant(owner, fqrn_a)
    access.grant(owner, fqrn_a)  # idempotent
    access.grant(owner, fqrn_b)
    token_a = access.mint_token(fqrn_a, ttl="10m")
    assert set(token_a.policies) == {publisher_policy_name(fqrn_a), "default"}
    assert 0 < token_a.ttl_s <= 600

    publisher = _as_token(vault, token_a.token.get_secret_value())
    as_publisher = KeyStore(publisher, "secret")
    assert as_publisher.read(owner, fqrn_a) == keysets[0]
    # Repository B's keys: refused by Vault itself.
    with pytest.raises(hvac.exceptions.Forbidden):
        publisher.secrets.kv.v2.read_secret_version(
            path=secret_path(owner, fqrn_b), mount_point="secret", raise_on_deleted_version=True
        )
    with pytest.raises(KeystoreError, match="may not access"):
        as_publisher.read(owner, fqrn_b)
    # No writing, no listing, no replacing its own keys.
    with pytest.raises(hvac.exceptions.Forbidden):
        publisher.secrets.kv.v2.create_or_update_secret(
            path=secret_path(owner, fqrn_a), secret={"publicKey": "x"}, mount_point="secret"
        )
    with pytest.raises(hvac.exceptions.Forbidden):
        publisher.secrets.kv.v2.list_secrets(
            path=f"{owner.subject}/cvmfs_keys", mount_point="secret"
        )
    # It cannot mint itself a token for B either; it can renew itself.
    with pytest.raises(hvac.exceptions.Forbidden):
        publisher.auth.token.create(role_name=publisher_policy_name(fqrn_b))
    publisher.auth.token.renew_self()


def test_revoked_access_stops_existing_tokens(
    vault: Settings,
    store: KeyStore,
    access: PublisherAccess,
    keysets: tuple[KeySet, KeySet],
) -> None:
    owner, fqrn = _owner(), _fqrn("revoked")
    store.store_if_absent(owner, fqrn, keysets[0])
    access.grant(owner, fqrn)
    assert access.is_granted(fqrn)
    token = access.mint_token(fqrn)
    publisher = _as_token(vault, token.token.get_secret_value())
    assert KeyStore(publisher).read(owner, fqrn) == keysets[0]
    access.revoke(fqrn)
    assert not access.is_granted(fqrn)
    with pytest.raises(hvac.exceptions.Forbidden):
        publisher.secrets.kv.v2.read_secret_version(
            path=secret_path(owner, fqrn), mount_point="secret", raise_on_deleted_version=True
        )
    with pytest.raises(KeystoreError):
        access.mint_token(fqrn)
    # The keys themselves stay (grace period before destroy).
    assert store.read(owner, fqrn) == keysets[0]


@pytest.fixture
def no_token_settings(vault: Settings) -> Iterator[Settings]:
    yield vault.model_copy(update={"vault": vault.vault.model_copy(update={"token": None})})


def test_missing_token_is_a_clear_error(no_token_settings: Settings) -> None:
    with pytest.raises(KeystoreError, match=r"vault\.token"):
        KeyStore.from_settings(no_token_settings.vault)


def test_an_unreachable_vault_is_named_with_what_to_do() -> None:
    """The text a failed run shows: which Vault and what next (before: only the path)."""
    nobody = hvac.Client(url="http://127.0.0.1:9", token="unused")  # nothing listens on :9
    with pytest.raises(VaultUnavailable) as read:
        KeyStore(nobody).read(_owner(), "down.sw.example.org")
    assert "Vault at http://127.0.0.1:9 did not answer for " in str(read.value)
    assert str(read.value).endswith("(ConnectionError): is it up and unsealed?")
    with pytest.raises(
        VaultUnavailable, match=r"Vault at http://127\.0\.0\.1:9 did not answer while granting"
    ):
        PublisherAccess(nobody).grant(_owner(), "down.sw.example.org")
