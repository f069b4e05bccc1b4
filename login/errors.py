"""What can end a login or a token request; each message says what to do next."""

from __future__ import annotations


class LoginError(Exception):
    """A login, renewal or logout that cannot go on; str() is the message for the user."""


class LoginDenied(LoginError):
    """The user denied the code at the issuer (`access_denied`)."""


class LoginExpired(LoginError):
    """The code expired before the user approved it (`expired_token`, or `expires_in` passed)."""


class NotLoggedIn(LoginError):
    """No token file, or one whose tokens can no longer be renewed."""


class IssuerError(LoginError):
    """The issuer could not be reached, or answered something other than OAuth 2.0."""
