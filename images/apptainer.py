"""What apptainer/singularity needs in a flat image directory (spec §6.6): mount points, the
`.singularity.d` environment, runscript and action scripts derived from the OCI image config.

Mount points must exist in the image because /cvmfs is read-only. Files the image already has
are left alone, except `etc/hosts` and `etc/resolv.conf`, which become empty (apptainer binds
the host's over them). The shell scripts are written here from the spec's description.
"""

from __future__ import annotations

from typing import Any

from cvmfs.tarball import EntryType
from cvmfs.transaction import Transaction
from images.layers import FlatTree

SINGULARITY_DIR = ".singularity.d"
MOUNT_POINTS = ("dev", "proc", "root", "var/tmp", "tmp", "etc", "sys", "home")
SINGULARITY_DIRS = (
    SINGULARITY_DIR,
    f"{SINGULARITY_DIR}/libs",
    f"{SINGULARITY_DIR}/actions",
    f"{SINGULARITY_DIR}/env",
)
EMPTIED_FILES = ("etc/hosts", "etc/resolv.conf")

_SOURCE_ENV = """for script in /.singularity.d/env/*.sh; do
    if [ -f "$script" ]; then
        . "$script"
    fi
done
"""

ACTIONS = {
    "exec": "#!/bin/sh\n" + _SOURCE_ENV + 'exec "$@"\n',
    "run": "#!/bin/sh\n"
    + _SOURCE_ENV
    + """if [ -x /.singularity.d/runscript ]; then
    exec /.singularity.d/runscript "$@"
fi
echo "There is no runscript in this image" >&2
exit 1
""",
    "shell": "#!/bin/sh\n"
    + _SOURCE_ENV
    + """if [ -n "${SINGULARITY_SHELL:-}" ] && [ -x "$SINGULARITY_SHELL" ]; then
    exec "$SINGULARITY_SHELL" "$@"
fi
if [ -x /bin/bash ]; then
    exec /bin/bash --norc "$@"
fi
exec /bin/sh "$@"
""",
    "start": "#!/bin/sh\n"
    + _SOURCE_ENV
    + """if [ -x /.singularity.d/startscript ]; then
    exec /.singularity.d/startscript "$@"
fi
""",
    "test": "#!/bin/sh\n"
    + _SOURCE_ENV
    + """if [ -x /.singularity.d/test ]; then
    exec /.singularity.d/test "$@"
fi
echo "There is no test script in this image" >&2
exit 1
""",
}

ENV_FILES = {
    "01-base.sh": "#!/bin/sh\n# Base environment of the image (empty: the OCI Env is in 10-).\n",
    "90-environment.sh": "#!/bin/sh\n# Custom environment shell code goes here.\n",
    "95-apps.sh": "#!/bin/sh\n# No SCIF apps in images unpacked from OCI registries.\n",
    "99-base.sh": """#!/bin/sh
if [ -z "${LD_LIBRARY_PATH:-}" ]; then
    LD_LIBRARY_PATH="/.singularity.d/libs"
else
    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"
fi
PS1="Apptainer> "
export LD_LIBRARY_PATH PS1
""",
    "99-runtimevars.sh": """#!/bin/sh
if [ -n "${SING_USER_DEFINED_PREPEND_PATH:-}" ]; then
    PATH="$SING_USER_DEFINED_PREPEND_PATH:$PATH"
fi
if [ -n "${SING_USER_DEFINED_APPEND_PATH:-}" ]; then
    PATH="$PATH:$SING_USER_DEFINED_APPEND_PATH"
fi
if [ -n "${SING_USER_DEFINED_PATH:-}" ]; then
    PATH="$SING_USER_DEFINED_PATH"
fi
unset SING_USER_DEFINED_PREPEND_PATH SING_USER_DEFINED_APPEND_PATH SING_USER_DEFINED_PATH
export PATH
""",
}

STARTSCRIPT = "#!/bin/sh\n"

# How the runscript turns OCI_ENTRYPOINT / OCI_CMD and the arguments into one command.
_RUNSCRIPT_LOGIC = """CMDLINE_ARGS=""
for arg in "$@"; do
    escaped=$(printf '%s' "$arg" | sed -e 's/\\\\/\\\\\\\\/g' -e 's/"/\\\\"/g' \\
        -e 's/`/\\\\`/g' -e 's/\\$/\\\\$/g')
    CMDLINE_ARGS="${CMDLINE_ARGS} \\"${escaped}\\""
done
if [ -n "$OCI_ENTRYPOINT" ]; then
    if [ $# -gt 0 ]; then
        SINGULARITY_OCI_RUN="${OCI_ENTRYPOINT} ${CMDLINE_ARGS}"
    else
        SINGULARITY_OCI_RUN="${OCI_ENTRYPOINT} ${OCI_CMD}"
    fi
else
    if [ $# -gt 0 ]; then
        SINGULARITY_OCI_RUN="${CMDLINE_ARGS}"
    elif [ -n "$OCI_CMD" ]; then
        SINGULARITY_OCI_RUN="${OCI_CMD}"
    else
        SINGULARITY_OCI_RUN="/bin/sh"
    fi
fi
eval "set ${SINGULARITY_OCI_RUN}"
exec "$@"
"""

PUBLIC_SYMLINKS = {
    "singularity": f"{SINGULARITY_DIR}/runscript",
    ".run": f"{SINGULARITY_DIR}/actions/run",
    ".exec": f"{SINGULARITY_DIR}/actions/exec",
    ".test": f"{SINGULARITY_DIR}/actions/test",
    ".shell": f"{SINGULARITY_DIR}/actions/shell",
    "environment": f"{SINGULARITY_DIR}/env/90-environment.sh",
}


def _shell_double_quoted(value: str) -> str:
    """`value` for use inside double quotes: `\\`, `"`, backquote and `$` escaped."""
    for char in ("\\", '"', "`", "$"):
        value = value.replace(char, "\\" + char)
    return value


def docker_environment(config: dict[str, Any]) -> str:
    """`10-docker2singularity.sh`: the image's Env; PATH set, others only if unset."""
    lines = ["#!/bin/sh"]
    for item in _config_section(config).get("Env") or []:
        name, sep, value = str(item).partition("=")
        if not name:
            continue
        if not sep:
            lines.append(f'export {name}="${{{name}:-}}"')
        elif name == "PATH":
            lines.append(f'export PATH="{_shell_double_quoted(value)}"')
        else:
            lines.append(f'export {name}="${{{name}:-{_shell_double_quoted(value)}}}"')
    return "\n".join(lines) + "\n"


def _oci_words(words: list[str] | None) -> str:
    return " ".join(f'"{_shell_double_quoted(str(w))}"' for w in words or [])


def runscript(config: dict[str, Any]) -> str:
    """The runscript: OCI_ENTRYPOINT and OCI_CMD from the config, then the evaluation logic."""
    section = _config_section(config)
    entrypoint = _oci_words(section.get("Entrypoint"))
    cmd = _oci_words(section.get("Cmd"))
    return (
        "#!/bin/sh\n"
        f"OCI_ENTRYPOINT={_single_quoted(entrypoint)}\n"
        f"OCI_CMD={_single_quoted(cmd)}\n" + _RUNSCRIPT_LOGIC
    )


def _single_quoted(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _config_section(config: dict[str, Any]) -> dict[str, Any]:
    section = config.get("config") or config.get("Config") or {}
    return section if isinstance(section, dict) else {}


def apptainer_files(config: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """Relative path -> (content, mode) of every file this module writes."""
    files: dict[str, tuple[str, int]] = {}
    for name, text in ACTIONS.items():
        files[f"{SINGULARITY_DIR}/actions/{name}"] = (text, 0o755)
    for name, text in ENV_FILES.items():
        files[f"{SINGULARITY_DIR}/env/{name}"] = (text, 0o755)
    files[f"{SINGULARITY_DIR}/env/10-docker2singularity.sh"] = (docker_environment(config), 0o755)
    files[f"{SINGULARITY_DIR}/runscript"] = (runscript(config), 0o755)
    files[f"{SINGULARITY_DIR}/startscript"] = (STARTSCRIPT, 0o755)
    return files


def add_apptainer_files(
    txn: Transaction, tree: FlatTree, config: dict[str, Any], *, mtime: int
) -> list[str]:
    """Add mount points, `.singularity.d` and the symlinks below `tree.root`; returns what was
    added or changed (relative paths), for tests and logs."""
    root = tree.root
    changed: list[str] = []
    for relative in (*MOUNT_POINTS, *SINGULARITY_DIRS):
        path = f"{root}/{relative}"
        kind = tree.kind(path)
        if kind is EntryType.DIRECTORY:
            continue
        if kind is not None:
            txn.remove(path)
            tree.discard(path)
        txn.mkdir(path, mode=0o755, mtime=mtime, uid=0, gid=0)
        tree.add(path, EntryType.DIRECTORY)
        changed.append(relative)
    for relative in EMPTIED_FILES:
        path = f"{root}/{relative}"
        if tree.kind(path) is EntryType.DIRECTORY:
            continue  # an image with a directory there keeps it; apptainer copes
        if tree.kind(path) is not None:
            txn.remove(path)
        txn.add_file(path, b"", mode=0o644, mtime=mtime, uid=0, gid=0)
        tree.add(path, EntryType.FILE)
        changed.append(relative)
    for relative, (text, mode) in apptainer_files(config).items():
        path = f"{root}/{relative}"
        if tree.kind(path) is not None:
            txn.remove(path)
            tree.discard(path)
        txn.add_file(path, text.encode(), mode=mode, mtime=mtime, uid=0, gid=0)
        tree.add(path, EntryType.FILE)
        changed.append(relative)
    for relative, target in PUBLIC_SYMLINKS.items():
        path = f"{root}/{relative}"
        if tree.kind(path) is not None:
            continue
        txn.symlink(path, target, mtime=mtime, uid=0, gid=0)
        tree.add(path, EntryType.SYMLINK, target)
        changed.append(relative)
    return changed
