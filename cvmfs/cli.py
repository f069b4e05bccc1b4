"""Operator commands on a repository (`cvmfs-svc repo …`): ls, cat, info, fsck.

One typer app, `repo_app`; write-side commands are added to the same app by the writer module.
"""

from __future__ import annotations

import datetime as dt
import json
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cvmfs.errors import CvmfsError

if TYPE_CHECKING:  # each command imports what it uses, so `repo import` never loads the reader
    from cvmfs.catalog import DirectoryEntry
    from cvmfs.reader import RepositoryReader

repo_app = typer.Typer(no_args_is_help=True, help="Read, verify and change CVMFS repositories.")

DEFAULT_KEYS_DIR = Path("/etc/cvmfs/keys")  # where clients and cvmfs_server keep keys (spec §3.5)

LocationArg = Annotated[
    str, typer.Argument(help="Repository URL (http://host/cvmfs/<fqrn>) or stratum-0 directory.")
]
FqrnOpt = Annotated[
    str | None,
    typer.Option("--fqrn", "-n", help="Repository name; default: last component of LOCATION."),
]
KeyOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--key",
        "-k",
        help="Master public key (<fqrn>.pub) or a directory of *.pub; repeatable. "
        "Default: /etc/cvmfs/keys/<fqrn>.pub.",
    ),
]
NowOpt = Annotated[
    str | None,
    typer.Option("--now", help="Check the whitelist expiry at this UTC time (ISO 8601)."),
]
TagOpt = Annotated[str | None, typer.Option("--tag", "-t", help="Read the revision of this tag.")]
RootHashOpt = Annotated[
    str | None, typer.Option("--root-hash", help="Read the revision with this root catalog hash.")
]


def _fail(command: str, exc: Exception) -> typer.Exit:
    typer.echo(f"repo {command}: {exc}", err=True)
    return typer.Exit(2)


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
    keys: list[Path] | None,
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
def ls_command(
    location: LocationArg,
    path: Annotated[str, typer.Argument(help="Directory or file in the repository.")] = "/",
    fqrn: FqrnOpt = None,
    key: KeyOpt = None,
    now: NowOpt = None,
    tag: TagOpt = None,
    root_hash: RootHashOpt = None,
    long: Annotated[bool, typer.Option("--long", "-l", help="Mode, size, mtime, target.")] = False,
    recursive: Annotated[bool, typer.Option("--recursive", "-R", help="Whole subtree.")] = False,
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
            typer.echo(_long_line(entry) if long else (entry.path.lstrip("/") or "/"))


@repo_app.command("cat")
def cat_command(
    location: LocationArg,
    path: Annotated[str, typer.Argument(help="Regular file in the repository.")],
    fqrn: FqrnOpt = None,
    key: KeyOpt = None,
    now: NowOpt = None,
    tag: TagOpt = None,
    root_hash: RootHashOpt = None,
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
def info_command(
    location: LocationArg,
    fqrn: FqrnOpt = None,
    key: KeyOpt = None,
    now: NowOpt = None,
    tag: TagOpt = None,
    root_hash: RootHashOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Manifest fields, whitelist expiry, catalogs and tags of a verified repository."""
    with _reader("info", location, fqrn, key, now, tag, root_hash) as reader:
        info = _info(reader)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    wl = info["whitelist"]
    typer.echo(f"repository        {info['repository']}")
    typer.echo(f"revision          {info['revision']}")
    typer.echo(f"root catalog      {info['root_catalog_hash']}")
    typer.echo(f"published         {info['publish_time']}")
    typer.echo(f"compression       {info['compression']}")
    state = "EXPIRED" if wl["expired"] else f"{wl['days_left']} days left"
    typer.echo(f"whitelist expires {wl['expires']} ({state})")
    for fingerprint in wl["certificate_fingerprints"]:
        typer.echo(f"certificate       {fingerprint}")
    for name, value in info["manifest"].items():
        typer.echo(f"manifest {name:<22} {value}")
    for cat in info["catalogs"]:
        typer.echo(f"catalog {cat['mountpoint']:<20} {cat['hash']} rev {cat['revision']}")
    for tag_info in info["tags"]:
        typer.echo(f"tag {tag_info['name']:<30} revision {tag_info['revision']}")


@repo_app.command("fsck")
def fsck_command(
    location: LocationArg,
    fqrn: FqrnOpt = None,
    key: KeyOpt = None,
    now: NowOpt = None,
    tag: TagOpt = None,
    root_hash: RootHashOpt = None,
    all_revisions: Annotated[
        bool, typer.Option("--all-revisions", help="Also check every tagged revision.")
    ] = False,
) -> None:
    """Verify signatures, re-hash every reachable object, check every catalog reference.

    Exit status 0 when clean, 1 when problems were found, 2 when the repository cannot be opened.
    """
    with _reader("fsck", location, fqrn, key, now, tag, root_hash) as reader:
        from cvmfs.fsck import fsck

        report = fsck(reader, all_revisions=all_revisions)
    for problem in report.problems:
        typer.echo(f"PROBLEM {problem}")
    typer.echo(
        f"{len(report.revisions_checked)} revision(s), {report.catalogs_checked} catalog(s), "
        f"{report.entries_checked} entries, {report.objects_checked} objects checked: "
        f"{'clean' if report.ok else f'{len(report.problems)} problem(s)'}"
    )
    if not report.ok:
        raise typer.Exit(1)


# Write-side commands live with the writer (cvmfs/cli_write.py); registered last, on this app.
from cvmfs.cli_write import register_write_commands  # noqa: E402

register_write_commands(repo_app)
