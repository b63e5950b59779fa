"""The dinosaur-names tutorial (charlm): the data layout, the sampling, the CLI run and the reference result."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_no_runs, one_line, runs_of

from framework.core import engine, plugins
from framework.core.errors import ConfigError
from framework.core.protocols import Batch
from plugins.charlm import NamesConfig, NamesDataset, make_names

DTYPE = np.dtype("float64")


def build(compose, *overrides: str) -> engine.Run:
    return engine.build(compose("task=charlm", "tracking.enabled=false", *overrides), plugins.manager())


@pytest.fixture(scope="module")
def dinos() -> NamesDataset:
    return make_names(NamesConfig(), np.random.default_rng(0), DTYPE)


# -- the data ------------------------------------------------------------------


def test_the_shipped_dinosaurs_and_their_vocabulary(dinos):
    assert len(dinos.names) == 1543
    assert dinos.names[:2] == ["aachenosaurus", "aardonyx"]
    assert list(dinos.vocabulary) == ["\n", *"abcdefghijklmnopqrstuvwxyz"]
    assert dinos.input_size == 27


def test_one_name_is_none_plus_characters_in_and_characters_plus_newline_out(dinos):
    inputs, targets = dinos.sequences[1]  # "aardonyx"
    symbols = [dinos.vocabulary.tolist().index(c) for c in "aardonyx"]
    assert inputs.shape == (1, 9, 27) and targets.shape == (1, 9)
    assert not inputs[0, 0].any()  # the "none" step: an all-zero input
    np.testing.assert_array_equal(inputs[0, 1:].argmax(axis=-1), symbols)
    np.testing.assert_array_equal(inputs[0].sum(axis=-1), [0] + [1] * 8)
    np.testing.assert_array_equal(targets[0], [*symbols, 0])  # Y = chars + newline (symbol 0)
    assert dinos.decode(targets[0]) == "aardonyx"


def test_the_padded_set_holds_every_name_with_its_mask(dinos):
    whole = dinos.everything
    longest = max(map(len, dinos.names)) + 1
    assert whole.inputs.shape == (1543, longest, 27) and whole.targets.shape == whole.mask.shape == (1543, longest)
    assert whole.mask.sum() == sum(len(n) + 1 for n in dinos.names)
    for i in (0, 700, 1542):
        inputs, targets = dinos.sequences[i]
        n = targets.shape[1]
        np.testing.assert_array_equal(whole.inputs[i, :n], inputs[0])
        np.testing.assert_array_equal(whole.targets[i, :n], targets[0])
        assert not whole.inputs[i, n:].any() and not whole.mask[i, n:].any()


def test_one_name_per_step_in_an_order_shuffled_once_with_the_state_carried(dinos):
    stream = dinos.batches(1, np.random.default_rng(5))
    count = len(dinos.names)
    batches = [next(stream) for _ in range(count + 3)]
    firsts = [dinos.decode(b.targets[0]) for b in batches]
    assert sorted(firsts[:count]) == sorted(dinos.names)  # each name once per pass
    assert firsts[:count] != dinos.names  # shuffled
    assert firsts[count:] == firsts[:3]  # ... once: the same order again
    assert [b.new_sequence for b in batches[:3]] == [True, False, False]
    assert all(b.mask is None for b in batches)


def test_minibatches_are_padded_masked_and_start_from_zero(dinos):
    batch = next(dinos.batches(4, np.random.default_rng(0)))
    lengths = batch.mask.sum(axis=1)
    assert batch.inputs.shape[:2] == batch.mask.shape == (4, lengths.max()) and batch.new_sequence
    assert next(dinos.batches(0, np.random.default_rng(0))) is dinos.everything


def test_any_text_file_lower_cased_one_example_per_line(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("Bob\n\n  ALICE \nEve", encoding="utf-8")
    data = make_names(NamesConfig(path=str(path)), np.random.default_rng(0), DTYPE)
    assert data.names == ["bob", "alice", "eve"]
    assert list(data.vocabulary) == ["\n", "a", "b", "c", "e", "i", "l", "o", "v"]


@pytest.mark.parametrize(
    ("content", "reason"), [(None, "No such file"), (b"\n  \n", "it has none"), (b"caf\xe9\n", "not UTF-8")]
)
def test_a_bad_file_is_a_one_line_error_naming_the_path(tmp_path, content, reason):
    path = tmp_path / "names.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=reason) as error:
        make_names(NamesConfig(path=str(path)), np.random.default_rng(0), DTYPE)
    assert str(error.value).startswith(f"dataset.path={str(path)!r}: expected a UTF-8 text file")


def test_the_cli_refuses_a_missing_file_before_any_run(cli, tmp_path):
    result = cli("task=charlm", "dataset.path=missing.txt")
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        "framework: error: dataset.path='missing.txt': expected the path of a readable file "
        f"(No such file or directory: {tmp_path.resolve() / 'missing.txt'})"
    )
    assert_no_runs(tmp_path / "mlruns" / "mlflow.db")


# -- the model, its metrics and its samples ---------------------------------------


def test_the_tutorials_model_and_smoothed_loss(compose):
    run = build(compose)
    params = {k: v.shape for k, v in run.task.model.params.items()}
    assert params == {
        "cell.Wx": (27, 50),
        "cell.Wh": (50, 50),
        "cell.b": (50,),
        "readout.W": (50, 27),
        "readout.b": (27,),
    }
    assert 0.008 < run.task.model.params["readout.W"].std() < 0.012
    assert 0.008 < run.task.model.params["cell.Wh"].std() < 0.012
    start = 7 * math.log(27)
    assert run.task.smooth_loss == pytest.approx(23.0709, abs=1e-4)
    assert run.task.trace(30.0) == {"smooth_loss": pytest.approx(0.999 * start + 0.001 * 30.0)}


def test_bits_per_char_is_the_summed_loss_per_character_from_a_zero_state(compose, tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("ab\nba\nabba\n")
    task = build(compose, f"dataset.path={path}").task
    summed = sum(task.model.loss_and_grads(Batch(x, t), None).loss for x, t in task.data.sequences)
    assert task.bits_per_char() == pytest.approx(summed / (3 + 3 + 5) / math.log(2), rel=1e-12)


def test_the_first_names_are_random_letters_and_reproducible(compose):
    first, again, other = (build(compose, f"seed={s}").task.written[0] for s in (0, 0, 1))
    assert first.step == 0 and len(first.names) == 7
    assert first.names == again.names and first.names != other.names
    assert max(map(len, first.names)) == 50  # an untrained model rarely ends a name: cut at 50
    assert str(first).startswith("before training (smooth loss 23.07):\n")


def test_top_1_writes_the_most_likely_character_every_time(compose):
    task = build(compose, "task.top_k=1", "task.samples=2").task
    task.model.params["readout.b"][...] = np.random.default_rng(0).normal(size=27)  # no ties among the logits
    greedy = np.zeros((1, 1, 27))
    state, expected = None, ""
    for _ in range(50):
        z, state, _ = task.model.outputs(greedy, state)
        best = int(z[0, 0].argmax())
        if best == 0:
            break
        expected += task.data.vocabulary[best]
        greedy = np.eye(27)[None, [best]]
    assert task.write() == [expected, expected]


def test_a_low_temperature_writes_the_most_likely_names(compose):
    hot, cold = (build(compose, f"task.temperature={t}").task for t in (1.0, 0.01))
    for task in (hot, cold):
        task.model.params["readout.b"][...] = np.random.default_rng(0).normal(size=27)
    assert len(set(hot.write())) == 7
    assert len(set(cold.write())) == 1  # almost greedy: the same name every time


def test_units_that_tell_the_end_of_a_name_and_vowels_colour_the_names(compose):
    """Trained a little (minibatches of 16, Adam), one unit follows vowels closely and a direction of the state the
    end of a name; the names are written out with each character coloured by such a unit's state after it."""
    run = build(compose, "optim=adam")
    final = engine.train(run, plugins.manager().hook)
    units = dict(zip(final.tables["hidden_units"]["signal"], range(2), strict=True))
    table = final.tables["hidden_units"]
    assert list(units) == ["the end of a name", "a vowel"]
    assert abs(table["r"][units["a vowel"]]) > 0.7 and table["direction_r"][units["a vowel"]] > 0.9
    assert table["direction_r"][units["the end of a name"]] > 0.7
    figure = final.figures["telling_units"]()
    shown = [run.task.data.names[i] for i in np.linspace(0, len(run.task.data.names) - 1, 8).astype(int)]
    for ax, k in zip(figure.axes, range(2), strict=True):
        assert ax.get_title(loc="left").startswith(f"unit {table['unit'][k]}: {table['signal'][k]} (r = ")
        assert "".join(text.get_text() for text in ax.texts) == "".join(shown)
        colours = ax.images[0].get_array()
        h = run.task.model.outputs(run.task.data.sequences[run.task.data.names.index(shown[0])][0])[2][1]
        np.testing.assert_allclose(colours[0, : len(shown[0])], h[0, 1:, table["unit"][k]], rtol=1e-10)


def test_it_trains_with_an_lstm_and_minibatches(compose):
    run = build(compose, "cell=lstm", "train.steps=20", "train.batch_size=8")
    final = engine.train(run, plugins.manager().hook)
    assert math.isfinite(final.metrics["bits_per_char"])


def test_a_short_run_through_the_cli(cli, default_store):
    result = cli("task=charlm", "train.steps=300", "train.eval_every=100", "tracking.log_every=1")
    assert result.returncode == 0, result.stderr
    (run,) = runs_of(default_store, "charlm")
    assert run.info.status == "FINISHED"
    history = {k: default_store.get_metric_history(run.info.run_id, k) for k in ("loss", "smooth_loss")}
    assert [m.step for m in history["smooth_loss"]] == list(range(300))
    loss_0 = history["loss"][0].value
    assert loss_0 > 20  # about log(27) per character of a name
    assert history["smooth_loss"][0].value == pytest.approx(0.999 * 7 * math.log(27) + 0.001 * loss_0)
    (bits,) = default_store.get_metric_history(run.info.run_id, "bits_per_char")
    assert bits.step == 300 and 2.5 < bits.value < math.log2(27)

    def artifact(path: str) -> str:
        return Path(default_store.download_artifacts(run.info.run_id, path)).read_text()

    first = artifact("samples/step_0000100/names.txt")
    assert first.startswith("before training (smooth loss 23.07):\n") and "\nstep 100 (smooth loss " in first
    headers = [line for line in artifact("samples/names.txt").splitlines() if line and not line.startswith("  ")]
    smooth = {s: history["smooth_loss"][s - 1].value for s in (100, 200, 300)}  # after the step's update
    assert headers == [
        "before training (smooth loss 23.07):",
        *(f"step {s} (smooth loss {value:.2f}):" for s, value in smooth.items()),
    ]
    table = json.loads(artifact("tables/names_by_step.json"))
    assert table["columns"] == ["step", "smooth_loss", "names"]
    assert [row[0] for row in table["data"]] == [0, 100, 200, 300]
    assert all(len(row[2].split(", ")) == 7 for row in table["data"])


# -- the tutorial's result ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_the_reference_recipe_reaches_the_tutorials_bits_per_char(compose, seed):
    """docs/tasks.md: 35000 names, SGD 0.01, clipping at 5: bits_per_char <= 2.6 (reference port: 2.45-2.55)."""
    run = build(compose, f"seed={seed}")
    final = engine.train(run, plugins.manager().hook)
    assert final.metrics["bits_per_char"] <= 2.6
    assert 21 < run.task.smooth_loss < 24  # the tutorial prints about 22 at the end
    late = [name for written in run.task.written[-3:] for name in written.names]
    assert any(name.endswith("saurus") for name in late), late
