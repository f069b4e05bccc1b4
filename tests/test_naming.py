"""Repository and bucket naming: mapping, DNS-label rules, reserved names, disjoint namespaces."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.naming import (
    InvalidName,
    NameTooLong,
    NamingError,
    RepositoryNamer,
    ReservedName,
    bucket_for,
    is_label,
    to_label,
    validate_bucket_name,
)
from service.settings import ProvisioningSettings, Settings

DOMAIN = "sw.example.org"


@pytest.fixture
def namer() -> RepositoryNamer:
    return RepositoryNamer(DOMAIN, ProvisioningSettings())


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("alice", "alice"),
        ("Alice", "alice"),
        ("john.doe", "john-doe"),
        ("John_Doe_2", "john-doe-2"),
        ("bob@example.org", "bob-example-org"),
        ("__x__", "x"),
        ("a..b--c", "a-b-c"),
        ("José Müller", "jose-muller"),
        ("日本", ""),
        ("", ""),
    ],
)
def test_to_label_mapping(raw: str, label: str) -> None:
    assert to_label(raw) == label


def test_personal_and_group_names(namer: RepositoryNamer) -> None:
    assert namer.personal("alice") == "alice-personal.sw.example.org"
    assert namer.personal("Alice.Smith", "tools") == "alice-smith-tools-personal.sw.example.org"
    assert namer.group("cms") == "cms.sw.example.org"
    assert namer.group("/cms/production") == "production.sw.example.org"
    assert namer.group("cms/production", "Nightly") == "production-nightly.sw.example.org"


def test_user_and_group_of_same_name_never_collide(namer: RepositoryNamer) -> None:
    assert namer.personal("atlas") != namer.group("atlas")
    # A group cannot take a personal name by choosing a clever short name or group name.
    with pytest.raises(ReservedName):
        namer.group("atlas", "personal")
    with pytest.raises(ReservedName):
        namer.group("atlas-personal")
    with pytest.raises(ReservedName):
        namer.group("personal")


@pytest.mark.parametrize("group", ["unpacked", "cvmfs-config", "WWW", "/x/admin"])
def test_reserved_group_names_are_refused(namer: RepositoryNamer, group: str) -> None:
    with pytest.raises(ReservedName):
        namer.group(group)


def test_reserved_names_are_configurable() -> None:
    namer = RepositoryNamer(DOMAIN, ProvisioningSettings(reserved_names=["lab"]))
    assert namer.group("www") == "www.sw.example.org"
    with pytest.raises(ReservedName):
        namer.group("Lab")


@pytest.mark.parametrize("short", ["-x", "x-", "a--b", "has space", "a_b", "", "ü"])
def test_invalid_short_names_are_refused_not_mapped(namer: RepositoryNamer, short: str) -> None:
    with pytest.raises(InvalidName):
        namer.personal("alice", short)


@pytest.mark.parametrize("username", ["", "---", "日本語", "..."])
def test_usernames_without_usable_characters_are_refused(
    namer: RepositoryNamer, username: str
) -> None:
    with pytest.raises(InvalidName):
        namer.personal(username)


def test_length_limit_counts_the_whole_fqrn(namer: RepositoryNamer) -> None:
    limit = 60 - len(DOMAIN) - 1  # 45 characters of name
    exact = "a" * (limit - len("-personal"))
    assert len(namer.personal(exact)) == 60
    with pytest.raises(NameTooLong):
        namer.personal(exact + "b")
    with pytest.raises(NameTooLong) as caught:
        namer.group("g", "s" * limit)
    assert "shorter short name" in caught.value.reason


def test_validate_fqrn_for_legacy_messages(namer: RepositoryNamer) -> None:
    assert namer.validate_fqrn("Alice-Personal.SW.example.org") == "alice-personal.sw.example.org"
    assert namer.name_of("cms.sw.example.org") == "cms"
    for bad in [
        "cms.infn.it",
        "cms",
        "-cms.sw.example.org",
        "a_b.sw.example.org",
        ".sw.example.org",
    ]:
        with pytest.raises(InvalidName):
            namer.validate_fqrn(bad)
    with pytest.raises(ReservedName):
        namer.validate_fqrn("unpacked.sw.example.org")


def test_invalid_domain_is_refused() -> None:
    with pytest.raises(InvalidName):
        RepositoryNamer("bad_domain.org", ProvisioningSettings())


def test_from_settings_uses_repository_domain() -> None:
    namer = RepositoryNamer.from_settings(Settings(repository_domain="cvmfs.infn.it"))
    assert namer.group("cms") == "cms.cvmfs.infn.it"


@given(
    st.text(max_size=80),
    st.one_of(st.none(), st.text(alphabet="abcz09-", min_size=1, max_size=20)),
)
def test_every_derived_name_is_valid_or_refused(username: str, short: str | None) -> None:
    namer = RepositoryNamer(DOMAIN, ProvisioningSettings())
    for derive in (namer.personal, namer.group):
        try:
            fqrn = derive(username, short)
        except NamingError as error:
            assert error.reason
            continue
        name = fqrn.removesuffix("." + DOMAIN)
        assert len(fqrn) <= 60
        assert is_label(name)
        assert namer.validate_fqrn(fqrn) == fqrn


# -- buckets --------------------------------------------------------------------------------


def test_bucket_defaults_to_repository_name() -> None:
    assert bucket_for("alice-personal.sw.example.org", None) == "alice-personal"
    assert bucket_for("alice-personal.sw.example.org", "alice-data") == "alice-data"


def test_too_short_derived_bucket_asks_for_one() -> None:
    with pytest.raises(InvalidName) as caught:
        bucket_for("cm.sw.example.org", None)
    assert "name the bucket" in caught.value.reason


@pytest.mark.parametrize(
    "bucket",
    ["ab", "A-bucket", "bucket-", "-bucket", "a..b", "192.168.1.1", "xn--abc", "x-s3alias", "a_b"],
)
def test_invalid_bucket_names(bucket: str) -> None:
    with pytest.raises(InvalidName):
        validate_bucket_name(bucket)


def test_service_buckets_are_refused() -> None:
    with pytest.raises(ReservedName):
        bucket_for("x.sw.example.org", "cvmfs-stratum0", reserved=["cvmfs-stratum0"])
