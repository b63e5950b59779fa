"""The atlas: every tutorial with every optimizer and cell, and whether each pairing reaches the tutorial's result."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_env, runs_of, sweep_runs

from framework.cli.atlas import rows_of
from framework.core import plugins

TASKS = ("adder", "charlm", "counting", "echo", "seq2seq")
OPTIMIZERS = ("adagrad", "adam", "rmsprop", "rprop", "sgd")
CELLS = ("rnn", "lstm", "gru")


def test_the_matrix_holds_every_task_with_every_optimizer_and_cell():
    """Each training tutorial: its reference, every other built-in optimizer and every other built-in cell, each
    with a recipe; the two pairings that cannot reach the result (counting's bounded cells) are listed, not run."""
    registry = plugins.manager().registry
    rows = rows_of(registry)
    assert sorted({row.task for row in rows}) == list(TASKS)
    for task in TASKS:
        changes = {row.change for row in rows if row.task == task}
        reference = registry.get("task", task).recipe.choices()
        assert "" in changes  # the reference recipe
        assert {c for c in changes if c.startswith("optim=")} == {f"optim={o}" for o in OPTIMIZERS} - {
            f"optim={reference['optim'][0]}"
        }
        assert {c for c in changes if c.startswith("cell=")} == {f"cell={c}" for c in CELLS} - {
            f"cell={reference['cell'][0]}"
        }
    unreachable = sorted(f"{row.task} {row.change}" for row in rows if not row.runnable)
    assert unreachable == ["counting cell=gru", "counting cell=lstm"]


@pytest.mark.slow
def test_every_pairing_reaches_the_result_on_seeds_0_to_2(tmp_path: Path):
    """The whole atlas on seeds 0-2, two runs at a time -> every pairing reaches its task's result on every seed;
    docs/atlas.md's table and picture are written, and the runs are children of one parent run."""
    result = subprocess.run(
        [sys.executable, "-m", "framework", "atlas", "--seeds", "3", "--jobs", "2", "--output", "out"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.strip().endswith("every pairing reached the result on every seed")
    page = (tmp_path / "out" / "atlas.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| ") and not line.startswith("| task")]
    runnable = [row for row in rows if "| cannot:" not in row]
    assert len(runnable) == 34 and all("| 3/3 |" in row for row in runnable), page
    assert (tmp_path / "out" / "atlas.png").read_bytes().startswith(b"\x89PNG")
    from mlflow import MlflowClient

    store = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    parent, children = sweep_runs(store, "atlas")
    assert len(children) == 34 * 3 and {c.info.status for c in children} == {"FINISHED"}
    assert {a.path for a in store.list_artifacts(parent.info.run_id)} >= {"atlas.json", "atlas.png", "atlas.md"}
    assert runs_of(store, "atlas")
