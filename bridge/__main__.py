"""`python -m bridge`: consume RabbitMQ and start flow runs until SIGTERM or Ctrl-C.

Settings come from the environment (CVMFS_SVC_*) as everywhere else in the service.
"""

from __future__ import annotations

import logging

from bridge.assembly import serve_bridge
from service.settings import Settings

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve_bridge(Settings.load())  # the bridge needs no Vault token
