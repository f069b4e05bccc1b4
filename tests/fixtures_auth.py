"""Pytest fixtures for token verification: a running local OIDC issuer and a verifier for it.

Load with `pytest_plugins = ("tests.fixtures_auth",)` in a test module (or in tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.auth import TokenVerifier
from service.settings import OidcSettings
from tests.issuer import TestIssuer


@pytest.fixture
def oidc_issuer() -> Iterator[TestIssuer]:
    """A fresh issuer per test (tests rotate its keys), serving HTTP on an ephemeral port."""
    with TestIssuer() as issuer:
        yield issuer


@pytest.fixture
def oidc_settings(oidc_issuer: TestIssuer) -> OidcSettings:
    """Settings for oidc_issuer; the JWKS URL is discovered, an unknown kid refreshes at once."""
    return OidcSettings(
        issuer_url=oidc_issuer.url,
        audience=oidc_issuer.audience,
        jwks_min_refresh_interval_s=0,
    )


@pytest.fixture
def token_verifier(oidc_settings: OidcSettings) -> Iterator[TokenVerifier]:
    with TokenVerifier(oidc_settings) as verifier:
        yield verifier
