"""The echo task (docs/tasks.md, "echo"): the data layout, truncated BPTT windows, the recorded run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import assert_no_runs, one_line, runs_of

from framework.core import engine, plugins
from framework.core.errors import ConfigError
from plugins.echo import EchoSeries, EchoSeriesConfig, echo_accuracy, echo_series, learnt, windows_per_epoch

# a short run: 3000 // 5 // 15 = 40 windows per epoch, 3 epochs
SHORT = ("task=echo", "dataset.total_length=3000", "task.epochs=3", "task.stop_accuracy=null")


def build(compose, *overrides: str) -> engine.Run:
    return engine.build(compose("tracking.enabled=false", *overrides), plugins.manager())


def test_series_is_the_input_shifted_by_echo_step_then_cut_into_contiguous_rows():
    inputs, targets = echo_series(60, 3, 5, np.random.default_rng(0), np.dtype("float64"))
    assert inputs.shape == (5, 12, 1) and targets.shape == (5, 12)
    assert targets.dtype.kind == "i" and set(np.unique(inputs)) <= {0.0, 1.0}
    series = inputs[..., 0].reshape(-1)  # rows are consecutive pieces of one series
    np.testing.assert_array_equal(targets.reshape(-1), np.concatenate([[0, 0, 0], series[:-3]]))
    np.testing.assert_array_equal(targets[1:, :3], inputs[:-1, -3:, 0])  # a row's first targets echo the row before


def test_batches_are_consecutive_windows_with_a_new_series_every_epoch():
    data = EchoSeries(EchoSeriesConfig(total_length=300, echo_step=3, window=15), np.dtype("float64"))
    windows = windows_per_epoch(300, 5, 15)
    assert windows == 4 and windows_per_epoch(50000, 5, 15) == 666  # the tutorial's num_batches
    stream = data.batches(5, np.random.default_rng(1))
    epochs = [[next(stream) for _ in range(windows)] for _ in range(2)]
    for epoch in epochs:
        assert [b.new_sequence for b in epoch] == [True, False, False, False]  # reset only when a series starts
        assert all(b.inputs.shape == (5, 15, 1) and b.targets.shape == (5, 15) for b in epoch)
        inputs = np.concatenate([b.inputs for b in epoch], axis=1)[..., 0]
        targets = np.concatenate([b.targets for b in epoch], axis=1)
        np.testing.assert_array_equal(targets[:, 3:], inputs[:, :-3])  # window j+1 continues window j
    assert not np.array_equal(epochs[0][0].inputs, epochs[1][0].inputs)  # fresh data every epoch


def test_accuracy_ignores_the_first_echo_step_positions_of_each_row():
    targets = np.array([[1, 1, 0, 1, 0], [0, 1, 1, 0, 1]])
    predictions = targets.copy()
    predictions[:, :2] = 1 - predictions[:, :2]  # wrong only where the echo comes from another row
    assert echo_accuracy(predictions, targets, echo_step=2) == 1.0
    predictions[0, 4] = 1
    assert echo_accuracy(predictions, targets, echo_step=2) == pytest.approx(5 / 6)


def test_learnt_after_patience_epochs_at_the_stop_accuracy():
    assert not learnt([1.0], 0.999, patience=2)
    assert not learnt([1.0, 0.9985], 0.999, patience=2)
    assert learnt([0.5, 0.9995, 1.0], 0.999, patience=2)
    assert not learnt([1.0, 1.0, 1.0], None, patience=2)


def test_window_must_be_longer_than_echo_step():
    with pytest.raises(ConfigError, match="window=3"):
        EchoSeriesConfig(echo_step=3, window=3)


def test_recipe_steps_are_epochs_times_windows_and_train_steps_wins(compose):
    train = compose("task=echo").train
    assert (train.steps, train.eval_every, train.batch_size) == (100 * 666, 666, 5)  # the tutorial's 100 series
    train = compose("task=echo", "task.epochs=3", "dataset.window=30").train
    assert (train.steps, train.eval_every) == (3 * 333, 333)
    assert compose("task=echo", "train.steps=50").train.steps == 50


def test_the_tutorials_model_and_optimizer(compose):
    run = build(compose, "task=echo")
    params = run.task.model.params
    assert {k: v.shape for k, v in params.items()} == {
        "cell.Wx": (1, 4),
        "cell.Wh": (4, 4),
        "cell.b": (4,),
        "readout.W": (4, 2),
        "readout.b": (2,),
    }
    for name in ("cell.Wx", "cell.Wh", "readout.W"):
        assert np.all((params[name] >= 0) & (params[name] < 1))  # np.random.rand
    assert not params["cell.b"].any() and not params["readout.b"].any()
    assert (run.settings.train.steps, run.settings.train.batch_size) == (66600, 5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_other_cells_train(compose, cell):
    run = build(compose, *SHORT, f"cell={cell}", "train.steps=45")
    hook = plugins.manager().hook
    evaluation = engine.train(run, hook)
    assert 0 <= evaluation.metrics["accuracy"] <= 1


def test_a_run_records_accuracy_every_epoch_and_the_pictures(cli, default_store):
    result = cli(*SHORT)
    assert result.returncode == 0, result.stderr
    (run,) = runs_of(default_store, "echo")
    assert run.info.status == "FINISHED"
    run_id = run.info.run_id
    assert [m.step for m in default_store.get_metric_history(run_id, "accuracy")] == [40, 80, 120]
    assert [m.step for m in default_store.get_metric_history(run_id, "loss")] == [*range(0, 120, 10), 119]
    artifacts = Path(default_store.download_artifacts(run_id, ""))
    sample = (artifacts / "samples" / "window.txt").read_text()
    assert "row 5  input" in sample and "prediction" in sample and "target" in sample
    assert (artifacts / "samples" / "step_0000040" / "window.txt").is_file()
    for figure in ("loss", "window", "hidden_states"):
        assert (artifacts / "figures" / f"{figure}.png").read_bytes().startswith(b"\x89PNG")


def test_a_unit_holds_the_bit_it_echoes_and_the_window_shows_the_hidden_state(compose):
    """Once the echo is learnt (accuracy 1), a unit follows the input echo_step steps back (|r| > 0.9 on a fresh
    series), a direction of the state almost exactly; the tutorial's bars have each row's hidden state under them."""
    run = build(compose, "task=echo", "optim=adam", "seed=1")
    final = engine.train(run, plugins.manager().hook)
    assert final.metrics["accuracy"] == 1.0
    units = final.tables["hidden_units"]
    assert units["signal"] == ["the input 3 steps back"]
    assert abs(units["r"][0]) > 0.9 and units["direction_r"][0] > 0.98
    figure = final.figures["window"]()
    rows = [ax for ax in figure.axes if ax.get_ylabel().startswith("row ")]
    assert [ax.get_ylabel() for ax in rows] == [f"row {r}" for r in range(1, 6)]
    bars = [[collection.get_label() for collection in ax.collections] for ax in rows]
    assert bars == [["input", "target (echo)", "prediction"]] * 5  # one collection of bars a series
    ones = [len(ax.collections[0].get_paths()) for ax in rows]  # a bar for every 1 of the input in the window
    assert 0 < sum(ones) < 5 * 15
    assert all(ax.images[0].get_array().shape == (4, 15) for ax in rows)  # under them: units x the window's steps
    (memory,) = [ax for ax in figure.axes if ax.get_xlabel() == "k: the input k steps back"]
    lags = memory.images[0].get_array()
    assert lags.shape == (4, 4) and lags[units["unit"][0], 3] == pytest.approx(units["r"][0], abs=5e-5)
    assert f"unit {units['unit'][0]} holds" in memory.get_title()


def test_a_window_not_longer_than_echo_step_is_refused_in_one_line(cli, tmp_path):
    result = cli("task=echo", "dataset.window=3")
    assert result.returncode == 2
    assert "dataset.window=3" in one_line(result.stderr)
    assert_no_runs(tmp_path / "mlruns" / "mlflow.db")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_reference_run_learns_the_echo(compose, seed):
    run = build(compose, "task=echo", f"seed={seed}")
    evaluation = engine.train(run, plugins.manager().hook)
    assert evaluation.metrics["accuracy"] >= 0.99
