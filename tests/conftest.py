"""Shared fixtures: the real CLI in a subprocess, a temporary tracking store, plugins installed for a test."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

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

    from framework.core import hydra_source

    hydra_source.register()  # every component's Hydra options, from the process's registry
    with initialize_config_module(config_module="framework.conf", version_base="1.3"):
        yield lambda *overrides: hydra_compose(config_name="config", overrides=list(overrides))
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def store_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite database whose tables MLflow has already created.

    Creating the tables of a fresh store costs MLflow several seconds of schema
    migrations (mostly fsync), up to 20 s on a busy machine. Tests whose subject is not
    store creation start from a copy, like a user who has run before; the concurrency
    test and the error tests start from nothing. The workers of a parallel run
    (pytest-xdist) share one template: the first to get there makes it, the others wait.
    """
    from mlflow import MlflowClient

    shared = os.environ.get("PYTEST_XDIST_WORKER") is not None  # the session's folder holds every worker's
    root = tmp_path_factory.getbasetemp().parent if shared else tmp_path_factory.getbasetemp()
    database = root / "store-template" / "mlflow.db"
    try:
        os.mkdir(database.parent)  # atomic: exactly one worker makes the template
    except FileExistsError:
        deadline = time.monotonic() + 300
        while not database.exists():
            assert time.monotonic() < deadline, f"no store template at {database} after 300 s"
            time.sleep(0.1)
        return database
    scratch = database.with_name("making.db")
    MlflowClient(tracking_uri=f"sqlite:///{scratch}").search_experiments()
    os.replace(scratch, database)  # whole, or not there
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


@contextmanager
def installed(plugin: object, name: str) -> Iterator[Any]:
    """``plugin`` registered as ``name`` in the process's plugin manager for the ``with`` block: the manager."""
    from framework.core import plugins

    pm = plugins.manager()
    pm.add(plugin, name, "1.0")
    try:
        yield pm
    finally:
        pm.remove(name)


def hook_of(*observers: object):
    """The run-event hooks (``pm.hook``) of a plugin manager holding only ``observers``: for ``engine.train``."""
    import pluggy

    from framework.core import hookspecs

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for observer in observers:
        pm.register(observer)
    return pm.hook


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


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def our_processes(mark: str) -> set[int]:
    """The live processes whose environment has ``TEST_PROCESS_MARK=<mark>``: every process a marked command started."""
    wanted = f"TEST_PROCESS_MARK={mark}".encode()
    found = set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            marked = wanted in environ.read_bytes().split(b"\0")
        except OSError:
            continue
        if marked and alive(int(environ.parent.name)):
            found.add(int(environ.parent.name))
    return found


def wait_until_gone(mark: str, seconds: float = 30) -> None:
    """Assert that every process of a marked command has exited within ``seconds``."""
    deadline = time.monotonic() + seconds
    while left := our_processes(mark):
        assert time.monotonic() < deadline, f"still running {seconds:g} s after the command: {sorted(left)}"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@contextmanager
def serving(command: Sequence[str], ready_url: str, cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """Run a server ``command`` until ``ready_url`` answers 200 (at most 120 s), and stop it by its pid at the end.

    Its output goes to ``cwd/server.log``; a server that has not stopped 30 s after SIGTERM is killed, and so is any
    of its worker processes still there (a test that froze and thawed them leaves MLflow's uvicorn orphaned).
    """
    cwd.mkdir(parents=True, exist_ok=True)
    log = open(cwd / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(list(command), cwd=cwd, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (cwd / "server.log").read_text()
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{command[:4]} did not answer {ready_url} within 120 s"
            time.sleep(0.25)
        yield server
    finally:
        workers = descendants(server.pid)
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        for pid in workers:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()


@contextmanager
def mlflow_server(root: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """``mlflow server`` on a free port of 127.0.0.1; its store (``server.db``) and artifacts under ``root``."""
    port = free_port()
    command = [
        *(sys.executable, "-m", "mlflow", "server"),
        *("--backend-store-uri", f"sqlite:///{root / 'server.db'}"),
        *("--artifacts-destination", str(root / "artifacts")),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    uri = f"http://127.0.0.1:{port}"
    with serving(command, f"{uri}/health", root, clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")) as server:
        yield uri, server


def sweep_runs(client, experiment: str) -> tuple:
    """The one parent run of ``experiment`` and its children (oldest first); no other runs there."""
    runs = runs_of(client, experiment)
    parents = [r for r in runs if r.data.tags.get("framework.role") == "sweep"]
    assert len(parents) == 1, f"{len(parents)} parent runs in {experiment!r}"
    (parent,) = parents
    children = [r for r in runs if r is not parent]
    assert {c.data.tags.get("mlflow.parentRunId") for c in children} == {parent.info.run_id}
    assert {c.data.tags["framework.sweep_id"] for c in children} == {parent.data.tags["framework.sweep_id"]}
    return parent, children
