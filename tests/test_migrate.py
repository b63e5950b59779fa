"""``python -m framework migrate``: every run of one store copied into another, once.

The source is the embedded store the real CLI writes (a sweep with two child
runs nested under its parent, and a single run); the target is another SQLite
store, as a team server's database would be.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_env, one_line, runs_of
from mlflow import MlflowClient

from framework.tracking.store import PARENT_TAG

MIGRATED_TAG = "framework.migrated_from"
REMAPPED_TAGS = {PARENT_TAG, "best_run_id", MIGRATED_TAG}  # tags naming a run id: different in the copy


def artifact_files(client: MlflowClient, run_id: str, path: str = "") -> dict[str, int | None]:
    """Every artifact file of a run (recursively) with its size."""
    files = {}
    for info in client.list_artifacts(run_id, path or None):
        if info.is_dir:
            files.update(artifact_files(client, run_id, info.path))
        else:
            files[info.path] = info.file_size
    return files


def text_artifact(client: MlflowClient, run_id: str, path: str, folder: Path) -> str:
    """The text of one artifact of a run, downloaded into ``folder``."""
    folder.mkdir()
    return Path(client.download_artifacts(run_id, path, str(folder))).read_text()


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, int, float]]:
    """(step, timestamp, value) of every recorded value of metric ``key``."""
    return sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.slow  # two stores, a sweep and a copy: half a minute
def test_migrate_copies_every_run_once(cli, tmp_path: Path, default_store) -> None:
    sweep = subprocess.Popen(  # the sweep and the single run record concurrently, like two users' commands
        [sys.executable, "-m", "framework", "--multirun", "seed=0,1", "train.steps=20"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    single = cli("train.steps=20")
    _, sweep_err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, sweep_err
    assert single.returncode == 0, single.stderr
    source_runs = runs_of(default_store, "counting")
    assert len(source_runs) == 4  # the sweep's parent, its two children, the single run

    database = tmp_path / "target" / "mlflow.db"
    result = cli("migrate", "--to", f"sqlite:///{database}")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "counting: 4 runs copied, 0 skipped" in result.stdout.splitlines()
    assert result.stdout.splitlines()[-1].startswith("total: 4 runs copied, 0 skipped, from sqlite:///")

    target = MlflowClient(tracking_uri=f"sqlite:///{database}")
    copies = runs_of(target, "counting")
    assert len(copies) == 4
    source_uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    new_id = {}
    for copy in copies:
        origin, _, old_id = copy.data.tags[MIGRATED_TAG].partition("#")
        assert origin == source_uri
        new_id[old_id] = copy.info.run_id
    assert set(new_id) == {run.info.run_id for run in source_runs}
    assert not set(new_id) & set(new_id.values())

    by_id = {copy.info.run_id: copy for copy in copies}
    for run in source_runs:
        copy = by_id[new_id[run.info.run_id]]
        name = run.info.run_name
        assert (copy.info.run_name, copy.info.status) == (name, run.info.status)
        assert (copy.info.start_time, copy.info.end_time) == (run.info.start_time, run.info.end_time), name
        assert copy.data.params == run.data.params, name
        assert {k: v for k, v in copy.data.tags.items() if k not in REMAPPED_TAGS} == {
            k: v for k, v in run.data.tags.items() if k not in REMAPPED_TAGS
        }, name
        assert copy.data.metrics == run.data.metrics, name  # the latest values
        for key in run.data.metrics:  # the full histories, steps and timestamps included
            assert history(target, copy.info.run_id, key) == history(default_store, run.info.run_id, key), (name, key)
        assert artifact_files(target, copy.info.run_id) == artifact_files(default_store, run.info.run_id), name
        if PARENT_TAG in run.data.tags:  # a child of the sweep: nested under the parent's copy
            assert copy.data.tags[PARENT_TAG] == new_id[run.data.tags[PARENT_TAG]], name
        else:
            assert PARENT_TAG not in copy.data.tags, name

    parent = next(run for run in source_runs if run.data.tags.get("framework.role") == "sweep")
    children = [run for run in source_runs if run.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(children) == 2
    assert by_id[new_id[parent.info.run_id]].data.tags["best_run_id"] == new_id[parent.data.tags["best_run_id"]]
    assert len(runs_of(default_store, "counting")) == 4  # the source is untouched

    child, copied_child = children[0].info.run_id, new_id[children[0].info.run_id]
    config = text_artifact(target, copied_child, "config.yaml", tmp_path / "new")
    assert config == text_artifact(default_store, child, "config.yaml", tmp_path / "old")
    assert "steps: 20" in config
    artifacts = Path(target.get_run(copied_child).info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_relative_to(database.parent / "artifacts" / "counting")  # beside the target's database

    again = cli("migrate", "--to", f"sqlite:///{database}", "--experiment", "counting")
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines[0] == "counting: 0 runs copied, 4 skipped"  # only the experiment named
    assert lines[1].startswith("total: 0 runs copied, 4 skipped") and len(lines) == 2
    assert len(runs_of(target, "counting")) == 4


def test_a_missing_source_is_one_line_and_creates_nothing(cli, tmp_path: Path) -> None:
    target = tmp_path / "target" / "mlflow.db"
    result = cli("migrate", "--to", f"sqlite:///{target}")
    assert result.returncode == 1
    assert str(tmp_path / "mlruns" / "mlflow.db") in one_line(result.stderr)
    assert one_line(result.stderr).startswith("framework: error: no tracking store at ")
    assert not (tmp_path / "mlruns").exists()
    assert not target.parent.exists()

    usage = cli("migrate", "--help")
    assert usage.returncode == 0
    assert "--to URI" in usage.stdout and "--experiment NAME" in usage.stdout
