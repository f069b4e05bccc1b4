"""Nothing a retry needs lives on one host's disk: no task or flow persists a Prefect result,
and every file a service process writes for itself is under the data directory.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path

from prefect import Flow, Task

import flows
import tasks
from service.prefect_env import prefect_environment
from service.settings import Settings


def _prefect_objects() -> list[tuple[str, Task[..., object] | Flow[..., object]]]:
    found: list[tuple[str, Task[..., object] | Flow[..., object]]] = []
    for package in (flows, tasks):
        for module_info in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
            module = importlib.import_module(module_info.name)
            for name, value in vars(module).items():
                if isinstance(value, Task | Flow) and value.__module__ == module.__name__:
                    found.append((f"{module.__name__}.{name}", value))
    return found


def test_the_service_has_tasks_and_flows_to_check() -> None:
    names = [name for name, _ in _prefect_objects()]
    assert {
        "flows.sync.sync",
        "tasks.sync.publish_changes",
        "tasks.locks.ensure_publish_lock",
    } <= set(names)


def test_no_task_or_flow_persists_its_result() -> None:
    # A persisted result lives in the storage of the host that ran the task (local files
    # unless a shared block is configured); the service's steps are idempotent and re-read
    # their state instead, so a retry from the UI works on any host.
    persisting = [name for name, obj in _prefect_objects() if obj.persist_result is True]
    assert persisting == []


def test_prefect_keeps_its_files_under_the_data_directory(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    env = prefect_environment(settings)
    data_dir = settings.absolute_data_dir
    assert Path(env["PREFECT_HOME"]).is_relative_to(data_dir)
    assert Path(env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"]).is_relative_to(data_dir)
    assert env["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "false"
    assert env["PREFECT_SERVER_EPHEMERAL_ENABLED"] == "false"
    assert env["PREFECT_API_URL"] == settings.prefect.api_url


def test_every_endpoint_follows_the_settings_hosts() -> None:
    # A process on another host reaches the shared services at the addresses its settings name.
    settings = Settings.model_validate(
        {
            "rabbitmq": {"host": "10.0.0.1"},
            "ceph": {"host": "10.0.0.2"},
            "vault": {"host": "10.0.0.3"},
            "registry": {"host": "10.0.0.4"},
            "prefect": {"host": "10.0.0.5"},
            "postgres": {"enabled": True, "host": "10.0.0.6"},
        }
    )
    assert settings.rabbitmq.amqp_url.startswith("amqp://10.0.0.1:")
    assert settings.ceph.s3_endpoint.startswith("http://10.0.0.2:")
    assert settings.vault.addr.startswith("http://10.0.0.3:")
    assert settings.registry.url.startswith("http://10.0.0.4:")
    assert settings.prefect.api_url.startswith("http://10.0.0.5:")
    assert settings.registry_database_url is not None
    assert "@10.0.0.6:5432/cvmfs_registry" in settings.registry_database_url
    assert settings.prefect_database_url is not None
    assert settings.prefect_database_url.startswith("postgresql+asyncpg://")
    assert prefect_environment(settings)["PREFECT_API_URL"] == "http://10.0.0.5:4200/api"


def test_sqlite_stays_the_embedded_default_and_explicit_urls_win() -> None:
    assert Settings().registry_database_url is None
    assert Settings().prefect_database_url is None
    explicit = Settings.model_validate(
        {
            "database_url": "postgresql+psycopg://u:p@db.example.org/reg",
            "postgres": {"enabled": True},
        }
    )
    assert explicit.registry_database_url == "postgresql+psycopg://u:p@db.example.org/reg"


def test_work_pool_layout_runs_workers_that_load_flows_by_module_path(tmp_path: Path) -> None:
    from prefect.types.entrypoint import EntrypointType

    from deployments.serve import deployments
    from deployments.worker import absolute_paths_for_runs
    from service.run import SERVICE_COMMANDS, service_commands

    embedded = Settings(data_dir=tmp_path / "data")
    assert service_commands(embedded) == SERVICE_COMMANDS  # `serve` stays the default
    pooled = embedded.model_copy(
        update={"prefect": embedded.prefect.model_copy(update={"work_pool": "cvmfs"})}
    )
    assert service_commands(pooled) == ("worker", "bridge", "api", "gateway")
    # A worker host's checkout may live anywhere: flows load from the installed package.
    entrypoints = [d.entrypoint for d in deployments(pooled, EntrypointType.MODULE_PATH)]
    assert "flows.sync.sync" in entrypoints
    assert all(e is not None and ":" not in e for e in entrypoints)
    # Flow runs start in a temporary directory: a relative data directory must not move.
    relative = Settings(data_dir=Path("relative-data"))
    absolute_paths_for_runs(relative)
    assert Path(os.environ.pop("CVMFS_SVC_DATA_DIR")) == relative.absolute_data_dir
