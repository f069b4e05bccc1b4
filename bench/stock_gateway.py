"""A gateway for the stock `cvmfs_server` publisher, on the test ports, until interrupted.

Usage: .venv/bin/python -m bench.stock_gateway [--offset 130] [--keys /etc/cvmfs/keys]

Starts OpenBao, the Prefect server (SQLite, the embedded default) and the stratum-0 HTTP
server on the dev ports + `--offset` (holding that test stack's lock, so no test stack runs
there meanwhile) in a temporary data directory; provisions one repository as provisioning does
(registry, keys in Vault, revision 1, publish lock); makes sure of the rescue automation as every
runner does at start; runs the gateway as `./svc up` runs it (`cvmfs-svc gateway`). Writes the
publisher's `<fqrn>.pub/.crt/.gw` into `--keys` and prints the `cvmfs_server mkfs` line the
user API would give (docs/stock-tools.md, section 3). Ctrl-C (or SIGTERM) stops everything.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.gateway_publish import bench_stack, child_env, provision, wait_for

COMPONENTS = ("openbao", "prefect", "stratum0-http")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offset", type=int, default=130, help="test stack port offset")
    parser.add_argument("--keys", type=Path, default=Path("/etc/cvmfs/keys"))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the finally below stops the stack

    with bench_stack(args.offset, COMPONENTS, "stock-gw") as (settings, data_dir):
        gateway: subprocess.Popen[bytes] | None = None
        try:
            fqrn, keys = provision(settings)  # makes sure of the rescue automation too
            args.keys.mkdir(parents=True, exist_ok=True)
            for suffix, content in (
                ("pub", keys.master_public_pem),
                ("crt", keys.certificate_pem),
                ("gw", keys.gateway_key or ""),
            ):
                path = args.keys / f"{fqrn}.{suffix}"
                path.write_text(content)
                path.chmod(0o600 if suffix == "gw" else 0o644)
            log_path = data_dir / "gateway.log"
            with log_path.open("wb") as log:
                gateway = subprocess.Popen(
                    [sys.executable, "-m", "service.cli", "gateway"],
                    env={**child_env(settings), "PREFECT_LOGGING_LEVEL": "INFO"},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            wait_for(f"{settings.gateway.api_url}")
            stratum0_url = f"{settings.stratum0_public_url}/{fqrn}"
            print(f"repository {fqrn}; gateway log {log_path}", flush=True)
            print(
                f"cvmfs_server mkfs -w {stratum0_url} -u gw,/srv/cvmfs/{fqrn}/data/txn,"
                f"{settings.gateway.api_url} -k {args.keys} -o root {fqrn}",
                flush=True,
            )
            while gateway.poll() is None:
                time.sleep(1)
            print(f"the gateway exited ({gateway.returncode}): see {log_path}", flush=True)
        finally:
            if gateway is not None and gateway.poll() is None:
                gateway.terminate()
                gateway.wait(timeout=30)


if __name__ == "__main__":
    main()
