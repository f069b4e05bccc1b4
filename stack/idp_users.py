"""The demo identities of the local stack: one login at the identity provider and one S3 user each.

The only list of them: the identity provider (stack/idp.py), the Ceph component (their RGW
users), `./svc up` (which prints them) and the tests all read it. Local development only.
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, SecretStr

# Subjects are stable UUIDs, as INDIGO IAM's are: the same user keeps the same `sub` (and so the
# same Vault paths) on every machine and after every restart.
_SUBJECT_NAMESPACE = uuid.UUID("6f1d3c2e-5b7a-4e39-9a51-cf0d6e2b8a41")


class DemoUser(BaseModel):
    model_config = ConfigDict(frozen=True)

    username: str
    password: SecretStr
    name: str
    role: str
    # Group paths as IAM sends them in the `groups` claim.
    groups: tuple[str, ...]
    # The RGW user's keys (uid = username), deterministic so that they can be printed and
    # put into a client configuration once.
    s3_access_key: str
    s3_secret_key: SecretStr

    @property
    def subject(self) -> str:
        return str(uuid.uuid5(_SUBJECT_NAMESPACE, self.username))

    @property
    def email(self) -> str:
        return f"{self.username}@example.org"

    @property
    def s3_uid(self) -> str:
        return self.username


def _user(username: str, name: str, role: str, groups: tuple[str, ...]) -> DemoUser:
    # RGW access keys are 20 characters, secrets 40.
    access = f"{username.upper()}ACCESSKEY".ljust(20, "0")
    secret = f"{username}-demo-s3-secret".ljust(40, "0")
    return DemoUser(
        username=username,
        password=SecretStr(f"{username}-password"),
        name=name,
        role=role,
        groups=groups,
        s3_access_key=access,
        s3_secret_key=SecretStr(secret),
    )


DEMO_USERS: tuple[DemoUser, ...] = (
    _user("alice", "Alice Researcher", "researcher, higgs", ("higgs",)),
    _user("bob", "Bob Member", "member of atlas", ("atlas",)),
    _user("carol", "Carol Manager", "manager of atlas", ("atlas", "atlas/managers")),
    _user("dave", "Dave Nogroup", "in no group", ()),
)


def demo_user(username: str) -> DemoUser:
    """The demo user named `username`; KeyError names the ones that exist."""
    for user in DEMO_USERS:
        if user.username == username:
            return user
    raise KeyError(
        f"no demo user {username!r}; they are {', '.join(u.username for u in DEMO_USERS)}"
    )
