"""The user API (the dashboard's backend) and the registry webhook, served as one FastAPI app.

`create_app(settings)` is the entry point; `cvmfs-svc api` serves it with uvicorn.
"""

from service.api.app import create_app
from service.api.services import ApiServices

__all__ = ["ApiServices", "create_app"]
