"""`cvmfs-svc login`, `token`, `logout`: an API token for users without a browser session.

The OAuth 2.0 device authorization grant (RFC 8628) against the service's OIDC issuer (the
stack's provider, INDIGO IAM), and the per-user file that keeps its tokens (0600).
"""
