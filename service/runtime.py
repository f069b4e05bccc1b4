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
