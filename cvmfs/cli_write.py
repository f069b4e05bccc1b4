"""Write-side operator commands (`cvmfs-svc repo create|import|tag|rollback|resign-whitelist`).

Registered on `cvmfs.cli.repo_app` by `register_write_commands`; every command works on a local
stratum-0 directory with the key files `cvmfs_server` keeps (`<fqrn>.key/.crt/.pub/.masterkey`).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cvmfs.codecs import Compression
from cvmfs.errors import CvmfsError

if TYPE_CHECKING:  # imported by the commands that use them (a short command starts faster)
    from cvmfs.writer import PublishResult, RepositoryWriter, WriterOptions

DEFAULT_KEYS_DIR = Path("/etc/cvmfs/keys")  # spec §3.5

DirArg = Annotated[Path, typer.Argument(help="Stratum-0 directory of the repository.")]
FqrnOpt = Annotated[
    str | None,
    typer.Option("--fqrn", "-n", help="Repository name; default: last component of the directory."),
]
KeysDirOpt = Annotated[
    Path,
    typer.Option("--keys-dir", help="Directory with <fqrn>.key/.crt/.pub(/.masterkey)."),
]
MessageOpt = Annotated[str, typer.Option("--message", "-m", help="Description of the revision.")]


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


def _fail(command: str, exc: Exception) -> typer.Exit:
    typer.echo(f"repo {command}: {exc}", err=True)
    return typer.Exit(2)


def register_write_commands(app: typer.Typer) -> None:
    """Add create, import, tag, rollback and resign-whitelist to `app`."""

    @app.command("create")
    def create_command(
        directory: DirArg,
        fqrn: FqrnOpt = None,
        keys_dir: KeysDirOpt = DEFAULT_KEYS_DIR,
        generate_keys: Annotated[
            bool, typer.Option("--generate-keys", help="Make a new key set in --keys-dir.")
        ] = False,
        whitelist_days: Annotated[int, typer.Option(help="Whitelist validity, days.")] = 30,
        compression: Annotated[
            Compression,
            typer.Option(
                help="Deflate of content objects: zlib = the stock publisher's objects; isal = "
                "~10x faster, ~5 % larger, other object names (recorded in the meta info)."
            ),
        ] = Compression.ZLIB,
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
                WriterOptions(compression=compression),
                whitelist_validity=dt.timedelta(days=whitelist_days),
            )
        except CvmfsError as exc:
            raise _fail("create", exc) from exc
        typer.echo(json.dumps(_result(result), indent=2))

    @app.command("import")
    def import_command(
        directory: DirArg,
        source: Annotated[
            Path, typer.Argument(help="A directory, or a tarball (tar, gzip, xz, zstd).")
        ],
        prefix: Annotated[
            str, typer.Option("--prefix", "-p", help="Repository path to import under.")
        ] = "",
        fqrn: FqrnOpt = None,
        keys_dir: KeysDirOpt = DEFAULT_KEYS_DIR,
        message: MessageOpt = "",
        tag: Annotated[str | None, typer.Option("--tag", "-t", help="Also tag it.")] = None,
        max_catalog_entries: Annotated[
            int, typer.Option(help="Split catalogs above this many entries (0 = never).")
        ] = 100_000,
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
        typer.echo(json.dumps(summary, indent=2))

    @app.command("tag")
    def tag_command(
        directory: DirArg,
        name: Annotated[str, typer.Argument(help="Tag name.")],
        fqrn: FqrnOpt = None,
        keys_dir: KeysDirOpt = DEFAULT_KEYS_DIR,
        message: MessageOpt = "",
        revision: Annotated[
            int | None, typer.Option(help="Tag this earlier revision instead of the current.")
        ] = None,
    ) -> None:
        """Add or move a named tag (re-signs the manifest; the revision stays)."""
        repo = _fqrn(directory, fqrn)
        try:
            writer = _open(directory, repo, keys_dir)
            result = writer.tag(name, description=message, revision=revision)
        except CvmfsError as exc:
            raise _fail("tag", exc) from exc
        typer.echo(json.dumps(_result(result), indent=2))

    @app.command("rollback")
    def rollback_command(
        directory: DirArg,
        tag: Annotated[str, typer.Argument(help="Tag whose content becomes the new revision.")],
        fqrn: FqrnOpt = None,
        keys_dir: KeysDirOpt = DEFAULT_KEYS_DIR,
    ) -> None:
        """Publish a new revision with the content of a tagged one."""
        repo = _fqrn(directory, fqrn)
        try:
            writer = _open(directory, repo, keys_dir)
            result = writer.rollback(tag)
        except CvmfsError as exc:
            raise _fail("rollback", exc) from exc
        typer.echo(json.dumps(_result(result), indent=2))

    @app.command("resign-whitelist")
    def resign_command(
        directory: DirArg,
        master_key: Annotated[
            Path, typer.Option("--master-key", help="The <fqrn>.masterkey file (PEM).")
        ],
        fqrn: FqrnOpt = None,
        days: Annotated[int, typer.Option(help="Validity from now, days.")] = 30,
    ) -> None:
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
        typer.echo(
            json.dumps(
                {
                    "expires": whitelist.expires.isoformat(),
                    "fingerprints": list(whitelist.certificate_fingerprints),
                },
                indent=2,
            )
        )
