"""Times the local identity provider: cold start, restart, and logins through auth code + PKCE.

Runs a private provider in a temporary directory on the dev ports + OFFSET (default 1130, a port
no test stack uses), then stops it: `.venv/bin/python -m bench.idp_login [--logins 50]`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from service.auth import TokenVerifier
from service.settings import Settings
from stack import procs
from stack.idp import IdentityProvider
from stack.idp_users import DEMO_USERS
from tests.idp_login import login


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--logins", type=int, default=50)
    parser.add_argument("--offset", type=int, default=1130)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="cvmfs-svc-bench-idp-"))
    settings = Settings().with_port_offset(args.offset, data_dir)
    provider = IdentityProvider(settings, data_dir / IdentityProvider.name)
    try:
        began = time.monotonic()
        provider.start()
        print(f"cold start (new keys)         {time.monotonic() - began:6.2f} s")
        provider.stop()
        began = time.monotonic()
        provider.start()
        print(f"restart (kept keys)           {time.monotonic() - began:6.2f} s")
        login_s: list[float] = []
        verify_s: list[float] = []
        with TokenVerifier(settings.oidc) as verifier:
            for index in range(args.logins):
                user = DEMO_USERS[index % len(DEMO_USERS)]
                began = time.monotonic()
                tokens = login(settings, user.username, user.password.get_secret_value())
                login_s.append(time.monotonic() - began)
                began = time.monotonic()
                verifier.verify(tokens.access_token)
                verify_s.append(time.monotonic() - began)
        for label, values in (("login (code + PKCE + token)", login_s), ("verify", verify_s[1:])):
            cuts = statistics.quantiles(values, n=20)
            print(
                f"{label:<29} p50 {statistics.median(values) * 1000:6.1f} ms  "
                f"p95 {cuts[18] * 1000:6.1f} ms  (n={len(values)})"
            )
        pid = provider.running_pid()
        rss = procs.rss_bytes(pid) if pid is not None else 0
        print(f"provider RSS                  {rss / 2**20:6.1f} MiB")
    finally:
        provider.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
