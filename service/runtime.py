"""Settings as a flow run, the bridge or the API process sees them.

Production sets every secret in the environment; on the local stack the OpenBao token comes
from the stack's init file, so a newcomer configures nothing.
"""

from __future__ import annotations

from service.settings import Settings


def load_settings() -> Settings:
    settings = Settings.load()
    if settings.vault.token is None:
        from stack.openbao import root_token  # the local stack only

        vault = settings.vault.model_copy(update={"token": root_token(settings)})
        settings = settings.model_copy(update={"vault": vault})
    return settings


def load_service_settings() -> Settings:
    """`load_settings()` for a long-running service process (API, gateway).

    Also applies the Prefect client environment from the settings (API URL, no temporary
    server, Prefect's files under the data directory), so this runs before prefect is imported.
    """
    from service.prefect_env import apply_prefect_environment

    settings = load_settings()
    apply_prefect_environment(settings)
    return settings
