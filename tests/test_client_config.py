import subprocess
from pathlib import Path

from dashboard.instructions import client_setup_commands
from service.api.models import ClientConfig
from service.client_config import build_client_config
from service.settings import Settings


def test_bundle_points_clients_at_stratum0_with_the_public_key() -> None:
    settings = Settings(data_dir=Path("/tmp/x"))
    bundle = build_client_config(settings, "alice.sw.example.org", "PUBKEY-PEM")
    key_path = "/etc/cvmfs/keys/sw.example.org/alice.sw.example.org.pub"
    config = bundle.files["/etc/cvmfs/config.d/alice.sw.example.org.conf"]
    assert bundle.files[key_path] == "PUBKEY-PEM"
    assert "CVMFS_SERVER_URL=http://127.0.0.1:8080/cvmfs/alice.sw.example.org\n" in config
    assert f"CVMFS_PUBLIC_KEY={key_path}\n" in config


def test_s3_backend_serves_from_the_bucket() -> None:
    settings = Settings(data_dir=Path("/tmp/x"))
    settings.stratum0.backend = "s3"
    bundle = build_client_config(settings, "g.sw.example.org", "K")
    assert bundle.server_url == "http://127.0.0.1:8000/cvmfs-stratum0/g.sw.example.org"


def test_clients_elsewhere_get_the_public_urls() -> None:
    settings = Settings(data_dir=Path("/tmp/x"))
    settings.stratum0.public_url = "https://cvmfs.example.org/cvmfs/"
    settings.s3.public_url = "https://s3.example.org"
    bundle = build_client_config(settings, "alice.sw.example.org", "K")
    assert bundle.server_url == "https://cvmfs.example.org/cvmfs/alice.sw.example.org"
    assert settings.s3_public_url == "https://s3.example.org"
    settings.stratum0.public_url = None
    settings.stratum0.backend = "s3"
    assert build_client_config(settings, "g.sw.example.org", "K").server_url == (
        "https://s3.example.org/cvmfs-stratum0/g.sw.example.org"
    )


def test_the_local_issuer_moves_with_the_test_ports_and_another_issuer_stays() -> None:
    settings = Settings(data_dir=Path("/tmp/x"))
    assert settings.oidc.issuer_url == "http://127.0.0.1:9000/" == settings.idp.issuer_url
    shifted = settings.with_port_offset(130, Path("/tmp/y"))
    assert shifted.oidc.issuer_url == "http://127.0.0.1:9130/" == shifted.idp.issuer_url
    settings.oidc.issuer_url = "https://iam.example.org/"
    assert settings.with_port_offset(130, Path("/tmp/y")).oidc.issuer_url == (
        "https://iam.example.org/"
    )
    assert shifted.api.dashboard_redirect_uri == "http://127.0.0.1:8220/dashboard/callback"


def test_the_dashboards_setup_lines_keep_every_repository_in_the_list(tmp_path: Path) -> None:
    # A user sets up their personal repository, then their group's: the second line must not
    # drop the first (default.local is sourced by bash, as cvmfs_config does).
    settings = Settings(data_dir=Path("/tmp/x"))
    local = tmp_path / "default.local"
    for fqrn in ("alice.sw.example.org", "higgs.sw.example.org"):
        bundle = build_client_config(settings, fqrn, "K")
        commands = client_setup_commands(ClientConfig.model_validate(bundle.model_dump()))
        [line] = [line for line in commands.splitlines() if "default.local" in line]
        command = line.replace("sudo ", "").replace("/etc/cvmfs/default.local", str(local))
        subprocess.run(["bash", "-c", command], check=True, stdout=subprocess.DEVNULL)
    listed = subprocess.run(
        ["bash", "-c", f". {local}; echo $CVMFS_REPOSITORIES"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert listed == "alice.sw.example.org,higgs.sw.example.org\n"
