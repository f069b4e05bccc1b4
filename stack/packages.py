"""Which system (Debian) and Python packages the stack needs, and installing the missing ones.

Components name Debian packages plainly, Python distributions as ``pypi:<name>``, and a
directory whose package-lock.json `npm ci` installs as ``npm-ci:<directory>``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path

from stack.errors import PackageError
from stack.package_locks import wait_for_package_locks

PYPI_PREFIX = "pypi:"
# Only the test suite needs these: the dashboard's browser tests drive Debian's Chromium
# through its chromedriver (never a downloaded browser); the SLO rules (docs/prometheus/) are
# checked with the prometheus package's promtool; the two-host test joins its network
# namespaces to the stack with socat and iproute2. `./svc test` installs them.
TEST_PACKAGES = ("chromium", "chromium-driver", "prometheus", "socat", "iproute2")
NPM_CI_PREFIX = "npm-ci:"


def missing_debian(packages: Iterable[str]) -> list[str]:
    """The Debian packages among `packages` that dpkg does not list as installed."""
    missing = []
    for name in packages:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", name],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0 or not result.stdout.endswith(" installed"):
            missing.append(name)
    return missing


def missing_python(distributions: Iterable[str]) -> list[str]:
    """The Python distributions not installed in this interpreter, as ``pypi:<name>``."""
    missing = []
    for name in distributions:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(PYPI_PREFIX + name)
    return missing


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def install(packages: Iterable[str], notify: Callable[[str], None] = _to_stderr) -> list[str]:
    """Install Debian packages (apt), ``pypi:`` distributions (pip), ``npm-ci:`` directories.

    Runs `apt-get update` once before installing anything from Debian, after waiting (bounded,
    saying so through `notify`) while another package manager holds the dpkg/apt locks; npm
    runs after apt (it may come from there). Returns what it installed.
    """
    wanted = sorted(set(packages))
    prefixed = (PYPI_PREFIX, NPM_CI_PREFIX)
    debs = [p for p in wanted if not p.startswith(prefixed)]
    pypi = [p.removeprefix(PYPI_PREFIX) for p in wanted if p.startswith(PYPI_PREFIX)]
    npm_dirs = [p.removeprefix(NPM_CI_PREFIX) for p in wanted if p.startswith(NPM_CI_PREFIX)]
    if debs:
        if os.geteuid() != 0:
            raise PackageError(
                f"Debian packages missing: {' '.join(debs)}. Run as root, or install them: "
                f"apt-get install --no-install-recommends {' '.join(debs)}"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        remaining_s = wait_for_package_locks(notify)
        # apt waits itself too (apt >= 1.9.11), for a holder that starts between the check
        # above and apt taking the lock.
        lock_wait = f"DPkg::Lock::Timeout={max(int(remaining_s), 1)}"
        _run(["apt-get", "-o", lock_wait, "update", "-q"], env, "apt-get update")
        _run(
            ["apt-get", "-o", lock_wait, "install", "-y", "-q", "--no-install-recommends", *debs],
            env,
            f"apt-get install {' '.join(debs)}",
        )
    if pypi:
        _run(
            [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *pypi],
            dict(os.environ),
            f"pip install {' '.join(pypi)}",
        )
    for directory in npm_dirs:
        npm_ci(Path(directory))
    return [*debs, *(PYPI_PREFIX + p for p in pypi), *(NPM_CI_PREFIX + d for d in npm_dirs)]


def npm_ci(directory: Path) -> None:
    """`npm ci` in `directory` (exactly its package-lock.json), then a stamp naming that lock.

    The stamp is `node_modules/.cvmfs-svc-npm-ci-<sha256 of the lock, 16 hex>`; a component
    checks for it to know whether it is installed.
    """
    lock = directory / "package-lock.json"
    _run(
        ["npm", "ci", "--omit=dev", "--no-audit", "--no-fund", "--prefix", str(directory)],
        dict(os.environ),
        f"npm ci in {directory}",
    )
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    (directory / "node_modules" / f".cvmfs-svc-npm-ci-{digest}").touch()


def _run(argv: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise PackageError(f"{what} failed (exit {result.returncode}): " + " | ".join(tail))
