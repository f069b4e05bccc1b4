"""The registry robot account: from settings first, else from Vault (the test OpenBao)."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from service.keystore import vault_client
from service.settings import Settings
from tasks.unpack import ROBOT_SECRET_PATH, registry_access, robot_credentials


def test_robot_account_from_vault_then_settings(vault: Settings) -> None:
    kv = vault_client(vault.vault).secrets.kv.v2
    kv.delete_metadata_and_all_versions(path=ROBOT_SECRET_PATH, mount_point=vault.vault.kv_mount)
    assert robot_credentials(vault) is None  # nothing stored: anonymous pulls
    try:
        _check_vault_then_settings(vault, kv)
    finally:  # later unpack tests pull anonymously, as with no robot account configured
        kv.delete_metadata_and_all_versions(
            path=ROBOT_SECRET_PATH, mount_point=vault.vault.kv_mount
        )


def _check_vault_then_settings(vault: Settings, kv: Any) -> None:
    kv.create_or_update_secret(
        path=ROBOT_SECRET_PATH,
        secret={"username": "robot$unpack", "password": "vault-s3cr3t"},
        mount_point=vault.vault.kv_mount,
    )
    access = registry_access(vault)
    host = vault.registry.url.split("://", 1)[1]
    credentials = access.credentials[host]
    assert credentials.username == "robot$unpack"
    assert credentials.password.get_secret_value() == "vault-s3cr3t"
    assert "vault-s3cr3t" not in repr(access) and "vault-s3cr3t" not in str(access)

    configured = vault.model_copy(
        update={
            "registry": vault.registry.model_copy(
                update={"robot_username": "robot$settings", "robot_password": SecretStr("x")}
            )
        }
    )
    from_settings = robot_credentials(configured)
    assert from_settings is not None and from_settings.username == "robot$settings"

    no_vault = vault.model_copy(update={"vault": vault.vault.model_copy(update={"token": None})})
    assert robot_credentials(no_vault) is None
