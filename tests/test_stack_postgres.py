"""The stack's PostgreSQL (postgres.enabled): Debian's server run as user postgres under the
data directory, on loopback, with the registry of repositories and a Prefect server on it.
"""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from sqlalchemy import Engine

from service.repositories import RepositoryClaim, RepositoryRegistry, database_url
from service.settings import Settings
from stack.manager import Stack
from stack.postgres import Postgres
from stack.prefect_server import PrefectServer

pytestmark = [pytest.mark.stack]
# The test stack's own Prefect server holds prefect.port; this one runs beside it.
PREFECT_ON_POSTGRES_PORT_SHIFT = 1


@pytest.fixture(scope="module")
def postgres(stack_settings: Settings) -> Iterator[Settings]:
    settings = stack_settings.model_copy(
        update={"postgres": stack_settings.postgres.model_copy(update={"enabled": True})}
    )
    component = Postgres(settings, settings.absolute_data_dir / Postgres.name)
    try:
        component.start()
        yield settings
    finally:
        component.stop()


def _sql(settings: Settings, database: str, query: str) -> list[tuple[object, ...]]:
    pg = settings.postgres
    with psycopg.connect(
        host=pg.host,
        port=pg.port,
        user=pg.user,
        password=pg.password.get_secret_value(),
        dbname=database,
    ) as connection:
        return connection.execute(query).fetchall()  # type: ignore[arg-type]


def test_postgres_runs_as_user_postgres_on_loopback_under_the_data_dir(postgres: Settings) -> None:
    component = Postgres(postgres, postgres.absolute_data_dir / Postgres.name)
    health = component.health()
    assert health.healthy, health.detail
    pid = component.running_pid()
    assert pid is not None
    status = subprocess.run(["ps", "-o", "user=", "-p", str(pid)], capture_output=True, text=True)
    assert status.stdout.strip() == "postgres"
    assert (postgres.absolute_data_dir / "postgres" / "cluster" / "PG_VERSION").exists()
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    ours = [
        line.split()[3]
        for line in listening.splitlines()
        if line.split()[3].endswith(f":{postgres.postgres.port}")
    ]
    assert ours == [f"127.0.0.1:{postgres.postgres.port}"]
    databases = {row[0] for row in _sql(postgres, "postgres", "SELECT datname FROM pg_database")}
    assert {postgres.postgres.registry_database, postgres.postgres.prefect_database} <= databases


def test_start_again_is_a_no_op_and_keeps_the_data(postgres: Settings) -> None:
    component = Postgres(postgres, postgres.absolute_data_dir / Postgres.name)
    before = component.running_pid()
    component.start()
    assert component.running_pid() == before


def test_the_stack_starts_postgres_first_only_when_enabled(
    stack_settings: Settings, postgres: Settings
) -> None:
    assert Stack(postgres).names[0] == "postgres"
    disabled = stack_settings.model_copy(
        update={"data_dir": stack_settings.absolute_data_dir / "never-started"}
    )
    assert "postgres" not in Stack(disabled).names


def test_the_registry_of_repositories_lives_in_postgres(postgres: Settings) -> None:
    assert database_url(postgres).startswith("postgresql+psycopg://")
    registry = RepositoryRegistry.open(postgres)
    try:
        claim = RepositoryClaim(
            fqrn="pg-personal.sw.example.org",
            kind="personal",
            owner_subject="sub-pg",
            owner_username="pg",
            bucket="pg-personal",
        )
        registry.claim(claim)
        assert registry.require(claim.fqrn).bucket == "pg-personal"
        assert registry.claim(claim).fqrn == claim.fqrn  # idempotent, as on SQLite
    finally:
        registry.close()
    rows = _sql(
        postgres,
        postgres.postgres.registry_database,
        "SELECT count(*) FROM repositories WHERE fqrn = 'pg-personal.sw.example.org'",
    )
    assert rows == [(1,)]


def test_a_prefect_server_runs_on_postgres(postgres: Settings) -> None:
    settings = postgres.model_copy(
        update={
            "prefect": postgres.prefect.model_copy(
                update={"port": postgres.prefect.port + PREFECT_ON_POSTGRES_PORT_SHIFT}
            )
        }
    )
    server = PrefectServer(settings, settings.absolute_data_dir / "prefect-on-postgres")
    try:
        server.start()
        answer = httpx.post(f"{settings.prefect.api_url}/flows/", json={"name": "pg-probe"})
        assert answer.status_code in (200, 201), answer.text
    finally:
        server.stop()
    flows = _sql(
        settings, settings.postgres.prefect_database, "SELECT name FROM flow WHERE name='pg-probe'"
    )
    assert flows == [("pg-probe",)]
    assert not (settings.absolute_data_dir / "prefect-on-postgres" / "home" / "prefect.db").exists()


def test_first_starts_at_once_create_the_tables_once(postgres: Settings) -> None:
    """Several processes opening the stores of an empty database at once (two hosts starting):
    unserialised, CREATE TABLE raced and one failed with a unique violation in pg_type."""
    from sqlalchemy import create_engine

    from service.repositories import Base
    from service.schema import create_tables

    schema = f"first_start_{uuid.uuid4().hex[:8]}"
    pg = postgres.postgres
    with psycopg.connect(
        host=pg.host,
        port=pg.port,
        user=pg.user,
        password=pg.password.get_secret_value(),
        dbname=pg.registry_database,
    ) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")  # type: ignore[arg-type]
    url = database_url(postgres)
    engines = [
        create_engine(url, connect_args={"options": f"-csearch_path={schema}"}) for _ in range(6)
    ]
    start = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def open_store(engine: Engine) -> None:
        start.wait()
        try:
            create_tables(Base.metadata, engine)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=open_store, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for engine in engines:
        engine.dispose()
    assert errors == []
    tables = _sql(
        postgres,
        postgres.postgres.registry_database,
        f"SELECT count(*) FROM information_schema.tables WHERE table_schema = '{schema}'",
    )
    assert tables == [(len(Base.metadata.tables),)]
