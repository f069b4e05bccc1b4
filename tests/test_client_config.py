from pathlib import Path

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
