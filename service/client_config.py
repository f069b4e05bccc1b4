"""The bundle a user needs to mount a repository read-only with the stock CVMFS client.

Public material only: the repository's public master key and a client configuration file.
"""

from __future__ import annotations

from pydantic import BaseModel

from service.settings import Settings


class ClientConfigBundle(BaseModel):
    """Files to drop on a client, keyed by their absolute path, plus how to use them."""

    fqrn: str
    server_url: str
    files: dict[str, str]
    instructions: str


def stratum0_url(settings: Settings, fqrn: str) -> str:
    """Where the service itself reads the repository (the local server, not the public URL)."""
    if settings.stratum0.backend == "s3":
        return f"{settings.ceph.s3_endpoint}/{settings.stratum0.bucket}/{fqrn}"
    return f"http://127.0.0.1:{settings.stratum0.http_port}/cvmfs/{fqrn}"


def build_client_config(settings: Settings, fqrn: str, public_key_pem: str) -> ClientConfigBundle:
    key_path = f"/etc/cvmfs/keys/{settings.repository_domain}/{fqrn}.pub"
    config_path = f"/etc/cvmfs/config.d/{fqrn}.conf"
    # Clients elsewhere read through the public URL (stratum0.public_url when set).
    server_url = f"{settings.stratum0_public_url}/{fqrn}"
    config = (
        f"# CernVM-FS client configuration for {fqrn}\n"
        f"CVMFS_SERVER_URL={server_url}\n"
        f"CVMFS_PUBLIC_KEY={key_path}\n"
        # Sites normally route through their Squid; DIRECT works without one.
        "CVMFS_HTTP_PROXY=${CVMFS_HTTP_PROXY:-DIRECT}\n"
    )
    instructions = (
        f"Install the stock CernVM-FS client, then copy {fqrn}.pub to {key_path} and\n"
        f"{fqrn}.conf to {config_path}. Add {fqrn} to CVMFS_REPOSITORIES in\n"
        f"/etc/cvmfs/default.local (or use autofs) and check with `cvmfs_config probe {fqrn}`;\n"
        f"the content is then under /cvmfs/{fqrn}/. Without root: `cvmfs2 -o config=...`.\n"
    )
    return ClientConfigBundle(
        fqrn=fqrn,
        server_url=server_url,
        files={key_path: public_key_pem, config_path: config},
        instructions=instructions,
    )
