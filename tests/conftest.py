"""Shared fixtures: the real CLI in a subprocess, a temporary tracking store, plugins installed for a test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: no tracking URI or plugin settings leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FRAMEWORK_", "HYDRA_"))}
    env.update(extra)
    return env


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run ``python -m framework *args`` in ``tmp_path`` (so ./mlruns is a fresh store there).

    Hydra's output folders go under ``tmp_path`` too.
    """

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "framework", *args],
            cwd=tmp_path,
            env=clean_env(**(env or {})),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture
def store(tmp_path: Path):
    """A client on the embedded store the ``cli`` fixture writes: ``tmp_path/mlruns/mlflow.db``."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")


def runs_of(client, experiment: str) -> list:
    """Every run of ``experiment`` in the store, oldest first."""
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    runs = client.search_runs([found.experiment_id], order_by=["attribute.start_time ASC"])
    return list(runs)


@pytest.fixture
def install_plugin(tmp_path: Path) -> Callable[[str, str], dict[str, str]]:
    """Install a plugin module the way pip would: the module and a dist-info with its entry point.

    ``install_plugin(name, source)`` writes ``name.py`` and ``name-1.0.dist-info``
    (entry point group ``framework``) into a folder and returns the environment
    (PYTHONPATH) under which the CLI finds it.
    """
    site = tmp_path / "site"

    def install(name: str, source: str) -> dict[str, str]:
        site.mkdir(exist_ok=True)
        (site / f"{name}.py").write_text(textwrap.dedent(source))
        info = site / f"{name}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[framework]\n{name} = {name}\n")
        return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}

    return install


@pytest.fixture
def compose():
    """Compose the real primary config in-process: ``compose("task=counting", "optim=sgd")``.

    Uses Hydra's compose API on the installed ``framework.conf`` with every
    plugin loaded, and clears Hydra's global state afterwards.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from framework import plugins

    plugins.manager()  # registers every component's Hydra options
    with initialize_config_module(config_module="framework.conf", version_base="1.3"):
        yield lambda *overrides: hydra_compose(config_name="config", overrides=list(overrides))
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def store_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite database whose tables MLflow has already created.

    Creating the tables of a fresh store costs MLflow several seconds of schema
    migrations (mostly fsync). Tests whose subject is not store creation start
    from a copy, like a user who has run before; the concurrency test and the
    error tests start from nothing.
    """
    from mlflow import MlflowClient

    database = tmp_path_factory.getbasetemp() / "store-template" / "mlflow.db"
    if not database.exists():
        database.parent.mkdir(parents=True, exist_ok=True)
        MlflowClient(tracking_uri=f"sqlite:///{database}").search_experiments()
    return database


def seed_store(template: Path, database: Path) -> Path:
    """Put a copy of the empty ``template`` store at ``database``."""
    database.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, database)
    return database


@pytest.fixture
def default_store(tmp_path: Path, store_template: Path):
    """A client on the default store of the ``cli`` fixture (./mlruns/mlflow.db), seeded from the template."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{seed_store(store_template, tmp_path / 'mlruns' / 'mlflow.db')}")


def one_line(stderr: str) -> str:
    """The stripped stderr, asserted to be a single line without a traceback."""
    text = stderr.strip()
    assert text, "nothing on stderr"
    assert "\n" not in text, f"more than one line on stderr:\n{stderr}"
    assert "Traceback" not in text, stderr
    return text


def assert_no_runs(database: Path) -> None:
    """The store at ``database`` holds no run at all (or does not exist)."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    if not database.exists():
        return
    client = MlflowClient(tracking_uri=f"sqlite:///{database}")
    experiments = client.search_experiments(view_type=ViewType.ALL)
    runs = client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL)
    assert list(runs) == [], f"runs were created: {[r.info.run_id for r in runs]}"
