"""The seq2seq tutorial: word pairs, the encoder-decoder model, early stopping, what a run records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_no_runs, hook_of, one_line, runs_of

from framework.core import engine, plugins
from framework.core.errors import ConfigError
from framework.core.gradcheck import check_model
from framework.core.hookspecs import hookimpl
from plugins.seq2seq import ALPHABET, PairsConfig, make_pairs, read_output, split

CELLS = [c.name for c in plugins.manager().registry.of_kind("cell")]
PAIRS = {"man": "women", "black": "white", "king": "queen", "girl": "boy", "up": "down", "high": "low"}


def decode(row: np.ndarray) -> str:
    """One-hot rows (T, K) or indices (T,) back to text."""
    indices = row.argmax(axis=-1) if row.ndim == 2 else row
    return "".join(ALPHABET[k] for k in indices)


class Recorder:
    """An observer that keeps the steps of every metric and of every evaluation."""

    def __init__(self) -> None:
        self.metrics: dict[str, list[int]] = {}
        self.evaluations: list[tuple[int, bool]] = []

    @hookimpl
    def framework_metrics_block(self, run, block) -> None:
        for step, metrics in block:
            for name in metrics:
                self.metrics.setdefault(name, []).append(step)

    @hookimpl
    def framework_evaluation(self, run, step, evaluation, final) -> None:
        self.evaluations.append((step, final))


def build(compose, *overrides: str) -> engine.Run:
    return engine.build(compose("task=seq2seq", "tracking.enabled=false", *overrides), plugins.manager())


# -- the data ---------------------------------------------------------------------


def test_the_tutorials_data_layout():
    data = make_pairs(PairsConfig(), np.random.default_rng(0), np.dtype("float64"))
    assert ALPHABET[:3] == "SE?" and len(ALPHABET) == 29
    assert data.inputs.shape == (6, 12, 29) and data.targets.shape == (6, 6)
    assert np.all(data.inputs.sum(axis=-1) == 1.0)  # one-hot
    x_enc, x_dec = split(data.batches(0, np.random.default_rng(0)).__next__())
    assert [decode(x) for x in x_enc] == ["man??E", "blackE", "king?E", "girl?E", "up???E", "high?E"]
    assert [decode(x) for x in x_dec] == ["Swomen", "Swhite", "Squeen", "Sboy??", "Sdown?", "Slow??"]
    assert [decode(t) for t in data.targets] == ["womenE", "whiteE", "queenE", "boy??E", "down?E", "low??E"]
    assert data.pairs == list(PAIRS.items())


def test_minibatches_of_three_keep_encoder_decoder_and_targets_together():
    data = make_pairs(PairsConfig(), np.random.default_rng(0), np.dtype("float32"))
    batches = data.batches(3, np.random.default_rng(1))
    epoch = [next(batches) for _ in range(2)]
    assert all(b.inputs.shape == (3, 12, 29) and b.inputs.dtype == np.float32 for b in epoch)
    seen = set()
    for batch in epoch:
        x_enc, x_dec = split(batch)
        for enc, dec, target in zip(x_enc, x_dec, batch.targets, strict=True):
            word = decode(enc)[:-1].strip("?")
            assert decode(dec) == "S" + PAIRS[word].ljust(5, "?") and decode(target) == PAIRS[word].ljust(5, "?") + "E"
            seen.add(word)
    assert seen == set(PAIRS)  # one epoch is the six pairs


def test_reading_the_decoder_output():
    assert read_output("women") == "women"  # no 'E': the whole output
    assert read_output("boy??E") == "boy"
    assert read_output("wo?mEn?") == "wom"  # cut at the first 'E', drop the '?'s
    assert read_output("E") == ""


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"pairs": "man-women"}, "pairs"),
        ({"pairs": "Man:women"}, "pairs"),
        ({"pairs": ""}, "pairs"),
        ({"pairs": "man:women longer:word"}, "n_step"),
    ],
)
def test_bad_pairs_are_refused(options, key):
    with pytest.raises(ConfigError) as error:
        PairsConfig(**options)
    assert error.value.key == key


# -- the model --------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_of_encoder_and_decoder_with_every_cell(compose, cell):
    """The registry-wide check of tests/test_gradients.py, on a small hidden size to be quick."""
    run = build(compose, f"cell={cell}", "task.hidden_size=6", "dtype=float64")
    batch = next(run.dataset.batches(3, np.random.default_rng(4)))
    model = run.task.model
    assert {name.split(".")[0] for name in model.params} == {"encoder", "decoder", "readout"}
    errors = check_model(model, batch)
    assert set(errors) == set(model.params) and max(errors.values()) < 1e-6, errors
    assert model.loss_and_grads(batch, None).state_grads.shape == (3, 12, 6)


def test_the_decoder_starts_from_the_encoders_final_state(compose):
    run = build(compose)
    task = run.task
    probabilities = task.probabilities(["man", "king"])
    assert probabilities.shape == (2, 6, 29)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0)
    assert not np.allclose(probabilities[0], probabilities[1])  # same decoder input, different encoder input
    assert run.task.model.encoder is not run.task.model.decoder


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_the_encoders_final_states_of_the_words_and_their_opposites_in_two_dimensions(compose, cell):
    """The PCA of the encoder's final states h (an LSTM's h of (h, c)) of the six words and their six opposites: the
    coordinates on the two axes of largest variance, and a line from each word to its opposite."""
    task = build(compose, f"cell={cell}").task
    evaluation = task.evaluate(0, {}, final=True)
    words = [*PAIRS, *PAIRS.values()]
    table = evaluation.tables["encoder_pca"]
    assert table["word"] == words
    states = task.encoder_states(words)
    assert states.shape == (12, 128)
    centred = states - states.mean(axis=0)
    variances, axes = np.linalg.eigh(centred.T @ centred)  # ascending: the last two are the principal axes
    expected = centred @ axes[:, [-1, -2]]
    got = np.column_stack([table["pc1"], table["pc2"]])
    np.testing.assert_allclose(np.abs(got), np.abs(expected), atol=1e-4)  # each axis up to its sign
    figure = evaluation.figures["encoder_states"]()
    ax = figure.axes[0]
    joined = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    assert len(joined) == 6
    for line, (word, opposite) in zip(joined, PAIRS.items(), strict=True):
        ends = np.column_stack(line.get_data())
        np.testing.assert_allclose(ends, got[[words.index(word), words.index(opposite)]], atol=1e-4)
    share = variances[-1] / variances.sum()
    assert ax.get_xlabel() == f"principal axis 1 ({share:.0%} of the variance)"


# -- training ---------------------------------------------------------------------


def test_stops_when_solved_or_trains_on(compose):
    recorder = Recorder()
    run = build(compose, "train.steps=400", "train.eval_every=20")
    final = engine.train(run, hook_of(recorder))
    solved = int(final.metrics["solved_step"])
    assert final.metrics["accuracy"] == 1.0 and final.stop
    assert len(recorder.metrics["loss"]) == solved < 400
    assert recorder.evaluations[-1] == (solved, True)  # reported once, as the final evaluation
    assert (solved, False) not in recorder.evaluations

    recorder = Recorder()
    run = build(compose, "train.steps=400", "train.eval_every=20", "task.stop_when_solved=false")
    final = engine.train(run, hook_of(recorder))
    assert len(recorder.metrics["loss"]) == 400 and final.metrics["solved_step"] == solved  # same seed, same path
    assert recorder.evaluations[-1] == (400, True)


def test_a_default_run_records_accuracy_translations_and_the_figure(cli, default_store, tmp_path, monkeypatch):
    result = cli("task=seq2seq")
    assert result.returncode == 0, result.stderr
    (run,) = runs_of(default_store, "seq2seq")
    assert run.info.status == "FINISHED"
    assert run.data.params["task.stop_when_solved"] == "True" and run.data.params["train.batch_size"] == "3"
    client, run_id = default_store, run.info.run_id
    accuracy = client.get_metric_history(run_id, "accuracy")
    solved = int(run.data.metrics["solved_step"])
    assert accuracy[-1].value == 1.0 and accuracy[-1].step == solved < 10000  # stopped early, at this step
    assert sorted({m.step for m in accuracy}) == list(range(20, solved + 1, 20))
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [*range(0, solved, 10), solved - 1]
    text = Path(client.download_artifacts(run_id, "samples/translations.txt")).read_text()
    assert f"after {solved} steps, 6 of 6 pairs right" in text
    for word, target in PAIRS.items():
        assert f"-> {target}" in text and word in text
    assert "mans " in text and "upp " in text and "(unseen)" in text
    table = json.loads(Path(client.download_artifacts(run_id, "tables/translations.json")).read_text())
    assert table["columns"] == ["word", "translation", "expected", "result"]
    assert [row[:2] for row in table["data"][:6]] == [list(pair) for pair in PAIRS.items()]
    assert [row[0] for row in table["data"][6:]] == ["mans", "upp"]
    # every table is listed for MLflow's table view, and MLflow reads it back as it wrote its own
    tables = [f"tables/{step}translations.json" for step in [*(f"step_{s:07d}/" for s in range(20, solved, 20)), ""]]
    tables.append("tables/encoder_pca.json")  # the final evaluation's
    listed = json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    assert sorted(entry["path"] for entry in listed) == sorted(tables)
    assert {entry["type"] for entry in listed} == {"table"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")  # load_table's search
    frame = client.load_table(run.info.experiment_id, "tables/translations.json", run_ids=[run_id])
    assert frame.values.tolist() == table["data"]
    first = Path(client.download_artifacts(run_id, "samples/step_0000020/translations.txt")).read_text()
    assert first.startswith("after 20 steps")
    for name in ("decoder_probabilities", "encoder_states", "hidden_states"):
        figure = Path(client.download_artifacts(run_id, f"figures/{name}.png"))
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dataset.n_step=4", "dataset.n_step=4: expected an integer >= 5"),
        ("task.unseen=Mans", "task.unseen='Mans': expected space-separated words in a-z"),
        ("task.unseen=manhattan", "task.unseen='manhattan': expected words of at most n_step = 5 letters"),
    ],
)
def test_a_bad_option_is_one_line_and_no_run(cli, tmp_path, override, message):
    result = cli("task=seq2seq", override)
    assert result.returncode == 2
    assert message in one_line(result.stderr)
    assert_no_runs(tmp_path / "mlruns" / "mlflow.db")


# -- the expected result ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_every_pair_is_translated_for_seeds_0_to_4(compose, seed):
    """docs/tasks.md: man -> women, king -> queen, black -> white, up -> down ... (the reference ~140 epochs)."""
    run = build(compose, f"seed={seed}")
    final = engine.train(run, hook_of(Recorder()))
    assert final.metrics["accuracy"] == 1.0
    assert run.task.translate(list(PAIRS)) == list(PAIRS.values())


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_the_tutorials_5000_epochs_end_with_every_pair_right(compose, seed):
    """Without early stopping the run is the tutorial's: 10000 steps of 3 pairs, every pair right at the end."""
    run = build(compose, f"seed={seed}", "task.stop_when_solved=false", "train.eval_every=0")
    recorder = Recorder()
    final = engine.train(run, hook_of(recorder))
    assert len(recorder.metrics["loss"]) == 10000 and final.metrics["accuracy"] == 1.0
