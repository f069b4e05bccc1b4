"""Write-side operator commands (`cvmfs-svc repo create|import|tag|rollback|resign-whitelist`).

Registered on `cvmfs.cli.repo_app` by `register_write_commands`; every command works on a local
stratum-0 directory with the key files `cvmfs_server` keeps (`<fqrn>.key/.crt/.pub/.masterkey`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cvmfs.codecs import Compression
from cvmfs.errors import CvmfsError

if TYPE_CHECKING:  # imported by the commands that use them (a short command starts faster)
    from cvmfs.writer import PublishResult, RepositoryWriter, WriterOptions

DEFAULT_KEYS_DIR = Path("/etc/cvmfs/keys")  # spec §3.5

F = TypeVar("F", bound=Callable[..., Any])


def _directory_arg(command: F) -> F:
    return click.argument(
        "directory", type=click.Path(path_type=Path), help="Stratum-0 directory of the repository."
    )(command)


def _fqrn_option(command: F) -> F:
    return click.option(
        "--fqrn",
        "-n",
        default=None,
        help="Repository name; default: last component of the directory.",
    )(command)


def _keys_dir_option(command: F) -> F:
    return click.option(
        "--keys-dir",
        type=click.Path(path_type=Path),
        default=DEFAULT_KEYS_DIR,
        help="Directory with <fqrn>.key/.crt/.pub(/.masterkey).",
    )(command)


def _message_option(command: F) -> F:
    return click.option(
        "--message", "-m", default="", help="Description of the revision.", show_default=False
    )(command)


def _fqrn(directory: Path, fqrn: str | None) -> str:
    return fqrn or directory.resolve().name


def _result(result: PublishResult) -> dict[str, Any]:
    return {
        "revision": result.revision,
        "root_hash": result.root_hash.hex,
        "timestamp": result.timestamp,
        "catalogs_rewritten": result.catalogs_rewritten,
        "files_added": result.files_added,
        "objects_uploaded": result.objects_uploaded,
        "bytes_uploaded": result.bytes_uploaded,
    }


def _open(
    directory: Path, fqrn: str, keys_dir: Path, options: WriterOptions | None = None
) -> RepositoryWriter:
    from cvmfs.keys import load_keyset
    from cvmfs.storage import LocalStorage
    from cvmfs.writer import RepositoryWriter

    return RepositoryWriter.open(
        LocalStorage(directory), fqrn, load_keyset(keys_dir, fqrn), options
    )


def _fail(command: str, exc: Exception) -> click.exceptions.Exit:
    click.echo(f"repo {command}: {exc}", err=True)
    return click.exceptions.Exit(2)


def register_write_commands(app: click.Group) -> None:
    """Add create, import, tag, rollback and resign-whitelist to `app`."""

    @app.command("create")
    @_directory_arg
    @_fqrn_option
    @_keys_dir_option
    @click.option("--generate-keys", is_flag=True, help="Make a new key set in --keys-dir.")
    @click.option("--whitelist-days", type=int, default=30, help="Whitelist validity, days.")
    @click.option(
        "--compression",
        type=click.Choice([c.value for c in Compression]),
        default=Compression.ZLIB.value,
        help="Deflate of content objects: zlib = the stock publisher's objects; isal = "
        "~10x faster, ~5 % larger, other object names (recorded in the meta info).",
    )
    def create_command(
        directory: Path,
        fqrn: str | None,
        keys_dir: Path,
        generate_keys: bool,
        whitelist_days: int,
        compression: str,
    ) -> None:
        """Create an empty repository (revision 1), like `cvmfs_server mkfs`."""
        from cvmfs.keys import generate_keyset, load_keyset, write_keyset
        from cvmfs.storage import LocalStorage
        from cvmfs.writer import WriterOptions, create_repository

        name = _fqrn(directory, fqrn)
        try:
            if generate_keys:
                keys = generate_keyset(name)
                write_keyset(keys, keys_dir, name)
            else:
                keys = load_keyset(keys_dir, name)
            _writer, result = create_repository(
                LocalStorage(directory),
                name,
                keys,
                WriterOptions(compression=Compression(compression)),
                whitelist_validity=dt.timedelta(days=whitelist_days),
            )
        except CvmfsError as exc:
            raise _fail("create", exc) from exc
        click.echo(json.dumps(_result(result), indent=2))

    @app.command("import")
    @_directory_arg
    @click.argument(
        "source",
        type=click.Path(path_type=Path),
        help="A directory, or a tarball (tar, gzip, xz, zstd).",
    )
    @click.option(
        "--prefix", "-p", default="", help="Repository path to import under.", show_default=False
    )
    @_fqrn_option
    @_keys_dir_option
    @_message_option
    @click.option("--tag", "-t", default=None, help="Also tag it.")
    @click.option(
        "--max-catalog-entries",
        type=int,
        default=100_000,
        help="Split catalogs above this many entries (0 = never).",
    )
    def import_command(
        directory: Path,
        source: Path,
        prefix: str,
        fqrn: str | None,
        keys_dir: Path,
        message: str,
        tag: str | None,
        max_catalog_entries: int,
    ) -> None:
        """Import a directory or a tarball as a subtree and publish a new revision."""
        from cvmfs.tarball import import_directory, import_tarball
        from cvmfs.writer import WriterOptions

        name = _fqrn(directory, fqrn)
        options = WriterOptions(max_catalog_entries=max_catalog_entries or None)
        try:
            writer = _open(directory, name, keys_dir, options)
            with writer.transaction() as txn:
                if source.is_dir():
                    stats = import_directory(txn, source, prefix)
                else:
                    with source.open("rb") as stream:
                        stats = import_tarball(txn, stream, prefix)
                result = txn.publish(tag=tag, description=message)
        except (CvmfsError, OSError) as exc:
            raise _fail("import", exc) from exc
        summary = _result(result)
        summary["imported"] = {
            "files": stats.files,
            "directories": stats.directories,
            "symlinks": stats.symlinks,
            "hardlinks": stats.hardlinks,
            "special_files": stats.special_files,
            "bytes": stats.bytes,
            "setuid_setgid_stripped": stats.stripped_modes,
        }
        click.echo(json.dumps(summary, indent=2))

    @app.command("tag")
    @_directory_arg
    @click.argument("name", help="Tag name.")
    @_fqrn_option
    @_keys_dir_option
    @_message_option
    @click.option(
        "--revision",
        type=int,
        default=None,
        help="Tag this earlier revision instead of the current.",
    )
    def tag_command(
        directory: Path,
        name: str,
        fqrn: str | None,
        keys_dir: Path,
        message: str,
        revision: int | None,
    ) -> None:
        """Add or move a named tag (re-signs the manifest; the revision stays)."""
        repo = _fqrn(directory, fqrn)
        try:
            writer = _open(directory, repo, keys_dir)
            result = writer.tag(name, description=message, revision=revision)
        except CvmfsError as exc:
            raise _fail("tag", exc) from exc
        click.echo(json.dumps(_result(result), indent=2))

    @app.command("rollback")
    @_directory_arg
    @click.argument("tag", help="Tag whose content becomes the new revision.")
    @_fqrn_option
    @_keys_dir_option
    def rollback_command(directory: Path, tag: str, fqrn: str | None, keys_dir: Path) -> None:
        """Publish a new revision with the content of a tagged one."""
        repo = _fqrn(directory, fqrn)
        try:
            writer = _open(directory, repo, keys_dir)
            result = writer.rollback(tag)
        except CvmfsError as exc:
            raise _fail("rollback", exc) from exc
        click.echo(json.dumps(_result(result), indent=2))

    @app.command("resign-whitelist")
    @_directory_arg
    @click.option(
        "--master-key",
        type=click.Path(path_type=Path),
        required=True,
        help="The <fqrn>.masterkey file (PEM).",
    )
    @_fqrn_option
    @click.option("--days", type=int, default=30, help="Validity from now, days.")
    def resign_command(directory: Path, master_key: Path, fqrn: str | None, days: int) -> None:
        """Sign a fresh whitelist; needs only the master key and the storage."""
        from cvmfs.storage import LocalStorage
        from cvmfs.writer import resign_whitelist

        repo = _fqrn(directory, fqrn)
        try:
            whitelist = resign_whitelist(
                LocalStorage(directory),
                repo,
                master_key.read_text(),
                validity=dt.timedelta(days=days),
            )
        except (CvmfsError, OSError) as exc:
            raise _fail("resign-whitelist", exc) from exc
        click.echo(
            json.dumps(
                {
                    "expires": whitelist.expires.isoformat(),
                    "fingerprints": list(whitelist.certificate_fingerprints),
                },
                indent=2,
            )
        )
