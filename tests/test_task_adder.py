"""The adder task (docs/tasks.md, "adder"): data layout, the tutorial's update, the tracked run, the expected result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_no_runs, hook_of, one_line, runs_of

from framework.core import engine, plugins
from framework.core.hookspecs import hookimpl
from framework.nn.functions import sigmoid
from plugins.adder import PAIRS_PER_DRAW, AdditionDataset, bit_string, carries, from_bits, to_bits

CELLS = [c.name for c in plugins.manager().registry.of_kind("cell")]


def build(compose, *overrides: str) -> engine.Run:
    return engine.build(compose("task=adder", "tracking.enabled=false", *overrides), plugins.manager())


class FirstSolved:
    """An observer that remembers the step of the first evaluation with accuracy 1."""

    def __init__(self) -> None:
        self.step: int | None = None

    @hookimpl
    def framework_evaluation(self, run, step, evaluation, final) -> None:
        if self.step is None and evaluation.metrics["accuracy"] == 1.0:
            self.step = step


# -- the data -----------------------------------------------------------------


def test_bits_least_significant_first():
    assert to_bits(np.array(69), 8).tolist() == [1, 0, 1, 0, 0, 0, 1, 0]  # 69 = 1 + 4 + 64
    assert bit_string(to_bits(np.array(69), 8)) == "01000101"  # printed as the tutorial: most significant first
    n = np.arange(256)
    assert np.array_equal(from_bits(to_bits(n, 8)), n)


def test_the_tutorials_layout_9_plus_60():
    batch = AdditionDataset(8, np.dtype("float64")).encode(np.array([9]), np.array([60]))
    assert batch.inputs.shape == (1, 8, 2) and batch.targets.shape == (1, 8, 1)
    assert batch.inputs[0, :, 0].tolist() == [1, 0, 0, 1, 0, 0, 0, 0]  # a = 9, step 1 reads the lowest bit
    assert batch.inputs[0, :, 1].tolist() == [0, 0, 1, 1, 1, 1, 0, 0]  # b = 60
    assert from_bits(batch.targets[0, :, 0]) == 69


@pytest.mark.parametrize("bits", [8, 12])
def test_random_batches_are_fresh_pairs_and_their_sums(compose, bits):
    run = build(compose, f"dataset.bits={bits}", "train.batch_size=64")
    stream = run.dataset.batches(64, np.random.default_rng(0))
    first, second = next(stream), next(stream)
    assert first.inputs.shape == (64, bits, 2) and first.targets.shape == (64, bits, 1)
    a, b = from_bits(first.inputs[..., 0]), from_bits(first.inputs[..., 1])
    assert a.max() < 2 ** (bits - 1) and b.max() < 2 ** (bits - 1)
    assert np.array_equal(from_bits(first.targets[..., 0]), a + b)
    assert not np.array_equal(first.inputs, second.inputs)


@pytest.mark.parametrize(("bits", "batch_size"), [(8, 1), (8, 3), (40, 32)])
def test_random_batches_are_the_pairs_of_a_draw_per_step(bits, batch_size):
    """Drawn many steps at a time, the batches are still those of the tutorial's draw of (a, b) per step,
    across the blocks drawn at once: the same seed trains on the same pairs as before."""
    dataset, per_step = AdditionDataset(bits, np.dtype("float64")), np.random.default_rng(7)
    stream = dataset.batches(batch_size, np.random.default_rng(7))
    for _ in range(2 * PAIRS_PER_DRAW // batch_size + 5):
        a, b = per_step.integers(0, 2 ** (bits - 1), size=(2, batch_size))
        batch = next(stream)
        assert np.array_equal(from_bits(batch.inputs[..., 0]), a) and np.array_equal(from_bits(batch.inputs[..., 1]), b)
        assert np.array_equal(from_bits(batch.targets[..., 0]), a + b)


def test_full_batch_is_every_pair(compose):
    run = build(compose, "train.batch_size=0")
    whole = next(run.dataset.batches(0, np.random.default_rng(0)))
    a, b = from_bits(whole.inputs[..., 0]), from_bits(whole.inputs[..., 1])
    assert len(set(zip(a.tolist(), b.tolist(), strict=True))) == 128 * 128


def test_same_seed_same_run(compose):
    first, second = build(compose, "seed=3"), build(compose, "seed=3")
    for name, array in first.task.model.params.items():
        assert np.array_equal(array, second.task.model.params[name])
    assert np.array_equal(next(first.batches).inputs, next(second.batches).inputs)


# -- the model and the tutorial's update ----------------------------------------


def tutorial_update(x: np.ndarray, t: np.ndarray, U: np.ndarray, W: np.ndarray, V: np.ndarray, alpha: float):
    """Trask's loop for one pair, as written in the tutorial: the updates alpha * sum over steps of the deltas."""
    hidden = [np.zeros(W.shape[0])]
    deltas = []
    for k in range(len(x)):
        hidden.append(sigmoid(x[k] @ U + hidden[-1] @ W))
        y = sigmoid(hidden[-1] @ V)
        deltas.append((t[k] - y) * y * (1 - y))  # layer_2_error * sigmoid_output_to_derivative
    dU, dW, dV = np.zeros_like(U), np.zeros_like(W), np.zeros_like(V)
    future = np.zeros(W.shape[0])
    for k in reversed(range(len(x))):
        h, h_prev = hidden[k + 1], hidden[k]
        delta = (future @ W.T + deltas[k] @ V.T) * h * (1 - h)
        dV += np.outer(h, deltas[k])
        dW += np.outer(h_prev, delta)
        dU += np.outer(x[k], delta)
        future = delta
    return alpha * dU, alpha * dW, alpha * dV


def test_one_step_is_the_tutorials_update(compose):
    """SGD lr 0.1 on sigmoid_squared_error with reduction=sum moves the weights exactly as the tutorial's loop."""
    run = build(compose)
    params = run.task.model.params
    before = {k: v.copy() for k, v in params.items()}
    batch = next(run.dataset.batches(1, np.random.default_rng(5)))
    result = run.task.model.loss_and_grads(batch, None)
    run.optimizer.step(params, result.grads, result.loss)
    expected = tutorial_update(
        batch.inputs[0], batch.targets[0], before["cell.Wx"], before["cell.Wh"], before["readout.W"], alpha=0.1
    )
    for name, update in zip(("cell.Wx", "cell.Wh", "readout.W"), expected, strict=True):
        np.testing.assert_allclose(params[name] - before[name], update, rtol=1e-12, atol=1e-15)
    assert set(params) == {"cell.Wx", "cell.Wh", "readout.W"}  # no biases, as in the tutorial
    assert all(np.abs(v).max() <= 1 for v in before.values())  # U(-1, 1)


# -- evaluation -------------------------------------------------------------------


def test_evaluation_of_an_untrained_model(compose):
    run = build(compose, "task.shown=3")
    evaluation = run.task.evaluate(0, {"loss": [1.0]}, final=True)
    assert set(evaluation.metrics) == {"accuracy", "bit_accuracy", "error"}
    assert 0 <= evaluation.metrics["accuracy"] < 0.1 and 0 < evaluation.metrics["bit_accuracy"] < 1
    table = evaluation.tables["sums"]
    assert len(table["a"]) == 3
    for a, b, c, out, pred, true, right in zip(
        table["a"], table["b"], table["a + b"], table["out"], table["pred"], table["true"], table["right"], strict=True
    ):
        assert c == a + b and int(true, 2) == c and int(pred, 2) == out and right == (out == c)
        assert f"{a} + {b} = {out}" in evaluation.samples["sums"]
    assert "right_sums" in evaluation.figures


def test_the_reference_run_holds_the_carry_and_draws_it(compose):
    """After the reference recipe a direction of the hidden state tracks the carry out of every bit (R > 0.95), and
    one unit alone nearly does; the figure shows every unit's correlation at every position and that unit."""
    run = build(compose, "seed=0")
    final = engine.train(run, hook_of(FirstSolved()))
    assert final.metrics["accuracy"] == 1.0
    units = final.tables["hidden_units"]
    assert units["signal"] == ["the carry out of bit k"]
    assert units["direction_r"][0] > 0.95 and 0.7 < abs(units["r"][0]) <= units["direction_r"][0]
    unit = units["unit"][0]
    _, _, h = run.task.read(run.task.pairs.inputs)
    carry = carries(run.task.a, run.task.b, 8)
    (i,) = np.flatnonzero((run.task.a == 127) & (run.task.b == 1))
    assert carry[i].tolist() == [1, 1, 1, 1, 1, 1, 1, 0]  # 127 + 1 = 128 carries out of bits 0 to 6
    figure = final.figures["carry"]()
    every_unit, the_unit = figure.axes[:2]
    r = every_unit.images[0].get_array()
    assert r.shape == (16, 8) and np.ma.getmaskarray(r)[:, 7].all()  # no carry out of the top bit: no colour
    np.testing.assert_allclose(r[unit, 3], np.corrcoef(h[:, 3, unit], carry[:, 3])[0, 1], rtol=1e-10)
    assert [line.get_label() for line in the_unit.get_lines()] == ["carry 0", "carry 1"]
    assert the_unit.get_title().startswith(f"unit {unit} tracks the carry: r = {units['r'][0]:.3f}")


def test_wide_numbers_are_evaluated_on_a_fixed_sample(compose):
    run = build(compose, "dataset.bits=16", "task.eval_pairs=500")
    assert len(run.task.a) == 500 and not run.task.every_pair
    first = run.task.evaluate(0, {}, final=True)
    assert set(first.figures) == {"carry"}  # not every pair: no grid of right sums
    assert run.task.evaluate(0, {}, final=True).metrics == first.metrics  # the same pairs every time


def test_minibatches_of_32_learn(compose):
    """train.batch_size=32 with the same lr 0.1 (a step per pair, summed over the batch) solves it fast."""
    run = build(compose, "train.batch_size=32", "train.steps=1000", "task.stop_when_solved=true")
    final = engine.train(run, hook_of(FirstSolved()))
    assert final.metrics["accuracy"] == 1.0 and final.stop


# -- the tracked run and user errors -------------------------------------------------


def test_tracked_run_logs_accuracy_sums_and_figure(cli, default_store):
    result = cli("task=adder", "train.steps=2000")
    assert result.returncode == 0, result.stderr
    (run,) = runs_of(default_store, "adder")
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert [m.step for m in default_store.get_metric_history(run_id, "accuracy")] == [1000, 2000]
    assert [m.step for m in default_store.get_metric_history(run_id, "loss")] == [*range(0, 2000, 10), 1999]
    assert {"bit_accuracy", "error"} <= set(run.data.metrics)

    def artifact(path: str) -> str:
        return Path(default_store.download_artifacts(run_id, path)).read_text()

    text = artifact("samples/step_0001000/sums.txt")
    assert text.startswith("after 1000 steps") and text.count("Pred: ") == 4 and text.count("True: ") == 4
    assert "after 2000 steps" in artifact("samples/sums.txt")
    table = json.loads(artifact("tables/step_0001000/sums.json"))
    assert table["columns"] == ["a", "b", "a + b", "out", "pred", "true", "error", "right"]
    figures = [p.path for p in default_store.list_artifacts(run_id, "figures")]
    assert figures == [f"figures/{name}.png" for name in ("carry", "gradient_flow", "hidden_states", "right_sums")]
    units = json.loads(artifact("tables/hidden_units.json"))
    assert units["columns"] == ["signal", "unit", "r", "direction_r"]


def test_a_short_tracked_run_sends_its_metrics_in_one_message(default_store, tmp_path, monkeypatch):
    """Metrics go to the recording process every 5 s or by the 1000 (one store transaction each): a run of a second
    sends them once, at its end, every value still recorded."""
    import framework
    from framework.tracking.connection import RecordingProcess

    sent = []
    send = RecordingProcess.send
    monkeypatch.setattr(RecordingProcess, "send", lambda self, op, **kw: (sent.append(op), send(self, op, **kw)))
    monkeypatch.chdir(tmp_path)
    result = framework.run("adder", "task.stop_when_solved=false", train={"steps": 300, "eval_every": 100})
    assert sent.count("metrics") == 1
    assert [m.step for m in default_store.get_metric_history(result.run_id, "accuracy")] == [100, 200, 300]
    assert [m.step for m in default_store.get_metric_history(result.run_id, "loss")] == [*range(0, 300, 10), 299]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["dataset.bits=1"], "dataset.bits=1"),
        (["dataset=counting_bits"], "dataset="),
        (["dataset.bits=16", "train.batch_size=0"], "train.batch_size=0"),
    ],
)
def test_user_mistakes_are_one_line(cli, tmp_path, overrides, key):
    result = cli("task=adder", *overrides)
    assert result.returncode == 2
    assert one_line(result.stderr).startswith(f"framework: error: {key}")
    assert_no_runs(tmp_path / "mlruns" / "mlflow.db")


# -- the expected result (full length) ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_reference_recipe_adds_every_pair(compose, seed):
    """docs/tasks.md: after 10000 one-pair steps every one of the 128 x 128 sums is right."""
    run = build(compose, f"seed={seed}")
    solved = FirstSolved()
    final = engine.train(run, hook_of(solved))
    assert final.metrics["accuracy"] == 1.0
    assert solved.step is not None and solved.step <= 9000


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_minibatch_32_adds_every_pair(compose, seed):
    run = build(compose, f"seed={seed}", "train.batch_size=32", "train.steps=2000")
    assert engine.train(run, hook_of(FirstSolved())).metrics["accuracy"] == 1.0
