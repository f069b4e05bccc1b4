"""Operator commands on a repository (`cvmfs-svc repo …`): ls, cat, info, fsck.

One click group, `repo_app`; write-side commands are added to the same group by the writer module.
Plain click rather than typer: typer 0.29 builds a pydantic `TypeAdapter` per parameter of the
invoked command, ~40 % of a one-file `repo import` (bench/README.md, "One-file publish").
"""

from __future__ import annotations

import datetime as dt
import json
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cvmfs.errors import CvmfsError

if TYPE_CHECKING:  # each command imports what it uses, so `repo import` never loads the reader
    from cvmfs.catalog import DirectoryEntry
    from cvmfs.reader import RepositoryReader

F = TypeVar("F", bound=Callable[..., Any])

# Default values shown in every command's help, as the operator expects from `--help`.
CONTEXT_SETTINGS = {"show_default": True}


@click.group("repo", no_args_is_help=True, context_settings=CONTEXT_SETTINGS)
def repo_app() -> None:
    """Read, verify and change CVMFS repositories."""


DEFAULT_KEYS_DIR = Path("/etc/cvmfs/keys")  # where clients and cvmfs_server keep keys (spec §3.5)


def _location_arg(command: F) -> F:
    return click.argument(
        "location", help="Repository URL (http://host/cvmfs/<fqrn>) or stratum-0 directory."
    )(command)


def _read_options(command: F) -> F:
    """--fqrn, --key, --now, --tag, --root-hash: which repository, revision and trust."""
    for option in reversed(
        [
            click.option(
                "--fqrn",
                "-n",
                default=None,
                help="Repository name; default: last component of LOCATION.",
            ),
            click.option(
                "--key",
                "-k",
                multiple=True,
                type=click.Path(path_type=Path),
                help="Master public key (<fqrn>.pub) or a directory of *.pub; repeatable. "
                "Default: /etc/cvmfs/keys/<fqrn>.pub.",
            ),
            click.option(
                "--now",
                default=None,
                help="Check the whitelist expiry at this UTC time (ISO 8601).",
            ),
            click.option("--tag", "-t", default=None, help="Read the revision of this tag."),
            click.option(
                "--root-hash", default=None, help="Read the revision with this root catalog hash."
            ),
        ]
    ):
        command = option(command)
    return command


def _fail(command: str, exc: Exception) -> click.exceptions.Exit:
    click.echo(f"repo {command}: {exc}", err=True)
    return click.exceptions.Exit(2)


def _parse_now(now: str | None) -> dt.datetime | None:
    if now is None:
        return None
    moment = dt.datetime.fromisoformat(now.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@contextmanager
def _reader(
    command: str,
    location: str,
    fqrn: str | None,
    keys: tuple[Path, ...],
    now: str | None,
    tag: str | None = None,
    root_hash: str | None = None,
) -> Iterator[RepositoryReader]:
    """Open and verify the repository; any library error becomes a one-line message, exit 2."""
    name = fqrn or location.rstrip("/").rsplit("/", 1)[-1]
    key_paths = keys or [DEFAULT_KEYS_DIR / f"{name}.pub"]
    from cvmfs.reader import RepositoryReader

    try:
        reader = RepositoryReader.open(location, name, list(key_paths), now=_parse_now(now))
    except (CvmfsError, ValueError, OSError) as exc:
        raise _fail(command, exc) from exc
    try:
        view = reader
        if tag is not None:
            view = reader.at_tag(tag)
        elif root_hash is not None:
            view = reader.at_root_hash(root_hash)
        yield view
    except CvmfsError as exc:
        raise _fail(command, exc) from exc
    finally:
        reader.close()


def _type_char(entry: DirectoryEntry) -> str:
    return stat.filemode(entry.mode)[0]


def _long_line(entry: DirectoryEntry) -> str:
    when = dt.datetime.fromtimestamp(entry.mtime, dt.UTC).strftime("%Y-%m-%d %H:%M")
    name = entry.path or "/"
    if entry.is_symlink:
        name += f" -> {entry.symlink}"
    flags = " [nested]" if entry.is_nested_mountpoint or entry.is_nested_root else ""
    chunks = f" [{len(entry.chunks)} chunks]" if entry.is_chunked else ""
    device = entry.device
    # as `ls -l` shows a device: "major, minor" where the size would be
    size = f"{device[0]}, {device[1]}" if device is not None else str(entry.size)
    return (
        f"{stat.filemode(entry.mode)} {entry.linkcount:>3} {entry.uid:>5} {entry.gid:>5} "
        f"{size:>12} {when} {name}{flags}{chunks}"
    )


@repo_app.command("ls")
@_location_arg
@click.argument("path", default="/", help="Directory or file in the repository.")
@_read_options
@click.option("--long", "-l", is_flag=True, help="Mode, size, mtime, target.")
@click.option("--recursive", "-R", is_flag=True, help="Whole subtree.")
def ls_command(
    location: str,
    path: str,
    fqrn: str | None,
    key: tuple[Path, ...],
    now: str | None,
    tag: str | None,
    root_hash: str | None,
    long: bool,
    recursive: bool,
) -> None:
    """List a directory (or the whole subtree with -R) of a verified repository."""
    with _reader("ls", location, fqrn, key, now, tag, root_hash) as reader:
        top = reader.stat(path)
        if recursive:
            entries = list(reader.walk(top.path))
        elif top.is_dir:
            entries = reader.listdir(top.path)
        else:
            entries = [top]
        for entry in entries:
            click.echo(_long_line(entry) if long else (entry.path.lstrip("/") or "/"))


@repo_app.command("cat")
@_location_arg
@click.argument("path", help="Regular file in the repository.")
@_read_options
def cat_command(
    location: str,
    path: str,
    fqrn: str | None,
    key: tuple[Path, ...],
    now: str | None,
    tag: str | None,
    root_hash: str | None,
) -> None:
    """Write a file's content to stdout (every object is hash-verified first)."""
    with _reader("cat", location, fqrn, key, now, tag, root_hash) as reader:
        out = sys.stdout.buffer
        for piece in reader.iter_content(path):
            out.write(piece)
        out.flush()


def _info(reader: RepositoryReader) -> dict[str, Any]:
    from cvmfs.codecs import compression_from_metainfo

    whitelist = reader.whitelist
    now = reader.now
    catalogs = reader.catalogs()
    return {
        "repository": reader.fqrn,
        "revision": reader.revision,
        "root_catalog_hash": reader.root_hash.hex,
        "compression": compression_from_metainfo(reader.metainfo()).value,
        "manifest": reader.manifest.fields(),
        "publish_time": (
            dt.datetime.fromtimestamp(reader.manifest.publish_timestamp, dt.UTC).isoformat()
            if reader.manifest.publish_timestamp
            else None
        ),
        "whitelist": {
            "created": whitelist.created.isoformat(),
            "expires": whitelist.expires.isoformat(),
            "expired": whitelist.is_expired(now),
            "days_left": round((whitelist.expires - now).total_seconds() / 86400, 2),
            "certificate_fingerprints": list(whitelist.certificate_fingerprints),
        },
        "catalogs": [
            {
                "mountpoint": info.mountpoint or "/",
                "hash": info.content_hash.hex,
                "revision": info.revision,
                "entries": sum(
                    info.statistics.get(f"self_{n}", 0)
                    for n in ("regular", "dir", "symlink", "special")
                ),
            }
            for info in catalogs
        ],
        "tags": [
            {"name": t.name, "revision": t.revision, "root_hash": t.root_hash.hex}
            for t in reader.tags()
        ],
    }


@repo_app.command("info")
@_location_arg
@_read_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info_command(
    location: str,
    fqrn: str | None,
    key: tuple[Path, ...],
    now: str | None,
    tag: str | None,
    root_hash: str | None,
    as_json: bool,
) -> None:
    """Manifest fields, whitelist expiry, catalogs and tags of a verified repository."""
    with _reader("info", location, fqrn, key, now, tag, root_hash) as reader:
        info = _info(reader)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    wl = info["whitelist"]
    click.echo(f"repository        {info['repository']}")
    click.echo(f"revision          {info['revision']}")
    click.echo(f"root catalog      {info['root_catalog_hash']}")
    click.echo(f"published         {info['publish_time']}")
    click.echo(f"compression       {info['compression']}")
    state = "EXPIRED" if wl["expired"] else f"{wl['days_left']} days left"
    click.echo(f"whitelist expires {wl['expires']} ({state})")
    for fingerprint in wl["certificate_fingerprints"]:
        click.echo(f"certificate       {fingerprint}")
    for name, value in info["manifest"].items():
        click.echo(f"manifest {name:<22} {value}")
    for cat in info["catalogs"]:
        click.echo(f"catalog {cat['mountpoint']:<20} {cat['hash']} rev {cat['revision']}")
    for tag_info in info["tags"]:
        click.echo(f"tag {tag_info['name']:<30} revision {tag_info['revision']}")


@repo_app.command("fsck")
@_location_arg
@_read_options
@click.option("--all-revisions", is_flag=True, help="Also check every tagged revision.")
def fsck_command(
    location: str,
    fqrn: str | None,
    key: tuple[Path, ...],
    now: str | None,
    tag: str | None,
    root_hash: str | None,
    all_revisions: bool,
) -> None:
    """Verify signatures, re-hash every reachable object, check every catalog reference.

    Exit status 0 when clean, 1 when problems were found, 2 when the repository cannot be opened.
    """
    with _reader("fsck", location, fqrn, key, now, tag, root_hash) as reader:
        from cvmfs.fsck import fsck

        report = fsck(reader, all_revisions=all_revisions)
    for problem in report.problems:
        click.echo(f"PROBLEM {problem}")
    click.echo(
        f"{len(report.revisions_checked)} revision(s), {report.catalogs_checked} catalog(s), "
        f"{report.entries_checked} entries, {report.objects_checked} objects checked: "
        f"{'clean' if report.ok else f'{len(report.problems)} problem(s)'}"
    )
    if not report.ok:
        raise click.exceptions.Exit(1)


# Write-side commands live with the writer (cvmfs/cli_write.py); registered last, on this app.
from cvmfs.cli_write import register_write_commands  # noqa: E402

register_write_commands(repo_app)
