"""The long-dependency experiment (conf/experiment/long_dependency.yaml): the preset, and a shortened run of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_sweep import sweep_runs

PRESET = "+experiment=long_dependency"


def test_the_preset_sweeps_echo_step_for_three_cells_with_the_window_well_above_it(compose):
    cfg = compose(PRESET)
    assert cfg.task.state_size == 32 and cfg.diagnostics.every > 0
    from hydra import compose as hydra_compose

    hydra = hydra_compose(config_name="config", overrides=[PRESET], return_hydra_config=True).hydra
    params = hydra.sweeper.params
    assert params.cell.split(",") == ["rnn", "lstm", "gru"]
    assert len(str(params.seed).split(",")) >= 3
    steps = [int(s) for s in params["dataset.echo_step"].split(",")]
    assert cfg.dataset.window >= 2 * max(steps)
    assert hydra.launcher._target_.endswith("JoblibLauncher")
    assert dict(hydra.callbacks.sweep.plot) == {
        "x": "dataset.echo_step",
        "lines": "cell.name",
        "metrics": ["accuracy", "grad_flow_ratio"],
    }


def table_rows(client, run_id: str) -> list[dict]:
    """The parent's plot table as one dict per row."""
    with open(client.download_artifacts(run_id, "tables/by_echo_step.json")) as handle:
        table = json.load(handle)
    return [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]


@pytest.mark.slow
def test_a_shortened_experiment_plots_the_lstm_above_the_rnn(cli, default_store):
    """Echo steps 3 and 15, one seed, 3 series: the LSTM has started to learn echo_step 15, the RNN has not."""
    result = cli("--multirun", PRESET, "dataset.echo_step=3,15", "seed=0", "task.epochs=3", timeout=600)
    assert result.returncode == 0, result.stderr
    parent, children = sweep_runs(default_store, "echo")
    assert len(children) == 6 and parent.info.status == "FINISHED"
    run_id = parent.info.run_id
    figures = {a.path for a in default_store.list_artifacts(run_id, "figures")}
    assert figures == {"figures/accuracy_by_echo_step.png", "figures/grad_flow_ratio_by_echo_step.png"}
    for figure in figures:
        assert Path(default_store.download_artifacts(run_id, figure)).read_bytes().startswith(b"\x89PNG")
    rows = {(row["cell.name"], row["dataset.echo_step"]): row for row in table_rows(default_store, run_id)}
    assert set(rows) == {(cell, step) for cell in ("rnn", "lstm", "gru") for step in ("3", "15")}
    assert all(row["runs"] == 1 and row["grad_flow_ratio_mean"] > 0 for row in rows.values())
    assert rows[("lstm", "15")]["accuracy_mean"] > rows[("rnn", "15")]["accuracy_mean"] + 0.1
