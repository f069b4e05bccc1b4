"""The web dashboard: server-rendered pages over the same operations as the user API.

Login through the OIDC issuer; sessions are server-side. `install_dashboard(app, settings)`
mounts it under /dashboard in the service's app (service/api/app.py).
"""

from dashboard.app import install_dashboard

__all__ = ["install_dashboard"]
