"""The per-user file of `cvmfs-svc login`: its tokens and where to renew them, for its owner only.

`$XDG_CONFIG_HOME/cvmfs-svc/token.json` (else `~/.config/...`), the file 0600 in a 0700
directory, replaced atomically; renewals take a lock beside it, because the issuer rotates
refresh tokens and two renewals with the same one would make it revoke the login.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from pydantic import BaseModel, ValidationError

from login.errors import NotLoggedIn

FILE_NAME = "token.json"


class SavedTokens(BaseModel):
    """What a login leaves: the tokens, and the issuer endpoints and client that renew them."""

    issuer: str
    client_id: str
    token_endpoint: str
    revocation_endpoint: str | None = None
    access_token: str
    refresh_token: str | None = None
    # Unix time at which the access token expires (from `expires_in` when it was issued).
    expires_at: float
    scope: str = ""

    def expires_within(self, seconds: float, now: float | None = None) -> bool:
        return self.expires_at - (time.time() if now is None else now) <= seconds


def default_token_file(environ: Mapping[str, str] = os.environ) -> Path:
    """The XDG base directory rule: an absolute XDG_CONFIG_HOME, else ~/.config."""
    config_home = environ.get("XDG_CONFIG_HOME", "")
    base = Path(config_home) if os.path.isabs(config_home) else Path.home() / ".config"
    return base / "cvmfs-svc" / FILE_NAME


class TokenFile:
    """Reads, replaces and deletes one token file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> SavedTokens | None:
        """The saved tokens, None when there is no file; NotLoggedIn when it is unreadable."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return SavedTokens.model_validate_json(text)
        except ValidationError as exc:
            raise NotLoggedIn(
                f"{self.path} is not a token file of `cvmfs-svc login` "
                f"({exc.error_count()} errors): run `cvmfs-svc login` to replace it"
            ) from exc

    def save(self, tokens: SavedTokens) -> None:
        """Replace the file at once (readers see the old or the new one), mode 0600."""
        self._make_directory()
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(tokens.model_dump_json(indent=1))
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, self.path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def delete(self) -> bool:
        """Remove the file; False if there was none."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Held while the tokens are read, renewed and written back: one renewal at a time."""
        self._make_directory()
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _make_directory(self) -> None:
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Ours alone even if it existed before (mkdir's mode is only for a new directory).
        if directory.stat().st_mode & 0o077:
            directory.chmod(0o700)
