"""Gradient flow through time (framework/core/diagnostics.py): the per-step gradients it reads, checked against
central differences for every cell; the norms, the ratio and the heatmap; that it changes nothing in training;
every task and cell; a cell without per-step gradients; the counting figure; the CLI; a sweep's plots."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import installed, one_line, runs_of

from framework.core import engine, plugins
from framework.core.config import build
from framework.core.diagnostics import FIGURE, MEMORY_RATIO, RATIO, FlowRecorder, flow_of, ratio, step_norms
from framework.core.errors import ConfigError
from framework.core.gradcheck import check_gradients
from framework.core.hookspecs import hookimpl
from framework.core.protocols import CellGradients, StepResult
from framework.nn.cells import ElmanCell
from framework.nn.functions import sigmoid
from framework.nn.init import InitConfig
from framework.tracking.sweep import SweepPlot, plot_figure, plot_table

REGISTRY = plugins.manager().registry
CELLS = [c.name for c in REGISTRY.of_kind("cell")]
TASKS = [c.name for c in REGISTRY.of_kind("task")]
TOLERANCE = 1e-6  # relative error in float64, as test_gradients.py
B, T, I, H = 2, 5, 3, 4  # noqa: E741 (batch, steps, inputs, hidden units)


def stepped(hidden, memory=None) -> StepResult:
    """A model's step result holding only per-step gradients dL/dh_k (and dL/dc_k)."""
    return StepResult(loss=0.0, grads={}, state=None, state_grads=hidden, cell_state_grads=memory)


def make_cell(name: str):
    component = REGISTRY.get("cell", name)
    config = build(component.config_class, {}, prefix="cell")
    return component.factory(config, I, H, np.random.default_rng(0), np.dtype("float64"))


def state_after(cell, h: np.ndarray, c: np.ndarray | None):
    """The cell's state holding h_k (and c_k for a cell with a memory)."""
    return h if c is None else (h, c)


def future(cell, x: np.ndarray, k: int, state, r_out: np.ndarray, r_final) -> float:
    """sum_{t > k} r_t . h_t + r_final . s_T, run from the state after step k (0-based)."""
    h, final, _ = cell.forward(x[:, k + 1 :], state)
    finals = final if isinstance(final, tuple) else (final,)
    r_finals = r_final if isinstance(r_final, tuple) else (r_final,)
    return float(np.sum(r_out[:, k + 1 :] * h) + sum(np.sum(r * s) for r, s in zip(r_finals, finals, strict=True)))


@pytest.mark.parametrize("name", CELLS)
def test_per_step_gradients_match_central_differences(name):
    """dL/dh_k (and the LSTM's dL/dc_k) of every step k, for f = sum_t r_t . h_t + r_final . s_T.

    h_k is perturbed where it is produced: the outputs before step k do not depend on it, step k
    contributes r_k . h_k, and the steps after run from the perturbed state. For the memory,
    c_k is perturbed before h_k = o_k tanh(c_k) is computed from it.
    """
    rng = np.random.default_rng(3)
    cell = make_cell(name)
    x = rng.standard_normal((B, T, I))
    zero = cell.zero_state(B)
    state = tuple(rng.standard_normal(s.shape) * 0.5 for s in zero) if isinstance(zero, tuple) else zero + 0.3
    h, final, cache = cell.forward(x, state)
    r_out = rng.standard_normal(h.shape)
    r_final = tuple(rng.standard_normal(s.shape) for s in final) if isinstance(final, tuple) else h[:, -1] * 0 + 1
    grads = cell.backward(cache, r_out, r_final)
    memory = isinstance(final, tuple)
    if memory:  # the LSTM: the memory c_k of every step, and the output gate o_k, from its equations
        Wx, Wh, b = cell.params["Wx"], cell.params["Wh"], cell.params["b"]
        h_prev = np.concatenate([state[0][:, None], h[:, :-1]], axis=1)
        o = sigmoid((x @ Wx + h_prev @ Wh + b)[..., 3 * H :])
        c = np.stack([cell.forward(x[:, : k + 1], state)[1][1] for k in range(T)], axis=1)
    for k in range(T):
        h_k = h[:, k].copy()
        c_k = c[:, k].copy() if memory else None

        def through_h(k=k, h_k=h_k, c_k=c_k) -> float:
            return float(np.sum(r_out[:, k] * h_k)) + future(cell, x, k, state_after(cell, h_k, c_k), r_out, r_final)

        errors = check_gradients(through_h, {"h_k": h_k}, {"h_k": grads.states[:, k]})
        if memory:

            def through_c(k=k, c_k=c_k) -> float:
                h_from_c = o[:, k] * np.tanh(c_k)
                return float(np.sum(r_out[:, k] * h_from_c)) + future(cell, x, k, (h_from_c, c_k), r_out, r_final)

            errors.update(check_gradients(through_c, {"c_k": c_k}, {"c_k": grads.cell_states[:, k]}))
        assert max(errors.values()) < TOLERANCE, (k, errors)


def test_step_norms_ratio_and_flow():
    g = np.zeros((2, 3, 2))
    g[0, :, 0] = [3.0, 1.0, 2.0]
    g[1, :, 1] = [4.0, 0.0, 1.0]
    g[1, 0, 0] = 3.0  # ||(3, 4)|| = 5
    np.testing.assert_allclose(step_norms(g), [(3 + 5) / 2, 0.5, 1.5])  # n_k = mean_b ||g_bk||
    for shape, dtype in (((1, 8, 16), "float64"), ((32, 10, 50), "float32"), ((5, 15, 4), "float64")):
        wide = np.random.default_rng(0).standard_normal(shape).astype(dtype)
        expected = np.linalg.norm(wide.astype(np.float64), axis=-1).mean(axis=0)
        assert np.array_equal(step_norms(wide), expected)  # numpy's norm and mean, to the last bit
    assert ratio(np.array([8.0, 1.0, 2.0])) == 4.0
    assert ratio(np.array([1.0, 0.0])) is None and ratio(np.array([np.inf, 1.0])) is None
    assert flow_of(stepped(None)) is None
    assert flow_of(stepped(np.zeros((2, 3)))) is None
    flow = flow_of(stepped(g, 2 * g))
    np.testing.assert_allclose(flow.memory, 2 * flow.hidden)


def test_the_recorder_measures_when_due_and_draws_a_heatmap():
    recorder = FlowRecorder(every=2, task="t")
    lstm = stepped(np.ones((1, 3, 1)), np.full((1, 3, 1), 2.0))
    rnn = stepped(np.ones((1, 4, 1)))  # a longer window, no memory
    metrics = [recorder.metrics(step, rnn if step == 4 else lstm) for step in range(5)]
    assert metrics == [{RATIO: 1.0, MEMORY_RATIO: 1.0}, {}, {RATIO: 1.0, MEMORY_RATIO: 1.0}, {}, {RATIO: 1.0}]
    assert recorder.steps == [0, 2, 4]
    figure = recorder.figures()[FIGURE]()
    assert len(figure.axes) == 2  # one panel: h only, since the last flow has no memory (plus its colour bar)
    assert figure.axes[0].images[0].get_array().shape == (4, 3)  # the longest window x the measurements
    figure.savefig(io.BytesIO(), format="png")  # the same norm everywhere still renders on a log scale
    assert FlowRecorder(every=0, task="t").metrics(0, lstm) == {}
    assert FlowRecorder(every=1, task="t").figures() == {}


class Observer:
    """Records the metrics of every step and the final evaluation."""

    def __init__(self):
        self.metrics, self.final = {}, None

    @hookimpl
    def framework_metrics(self, run, step, metrics):
        self.metrics[step] = dict(metrics)

    @hookimpl
    def framework_evaluation(self, run, step, evaluation, final):
        if final:
            self.final = evaluation


@pytest.fixture
def observed(compose):
    """Build and train a run in-process from overrides, observed by an :class:`Observer`: (run, observer)."""

    def train(*overrides: str):
        observer = Observer()
        with installed(observer, "observer") as pm:
            run = engine.build(compose("tracking.enabled=false", *overrides), pm)
            engine.train(run, pm.hook)
        return run, observer

    return train


def test_diagnostics_change_no_number_of_training(observed):
    """Echo with an LSTM (truncated BPTT, a memory): the same parameters, bit for bit, with diagnostics on and off."""
    common = ("task=echo", "cell=lstm", "train.steps=60", "train.eval_every=0", "dataset.total_length=2000")
    off, seen_off = observed(*common, "diagnostics.every=0")
    on, seen_on = observed(*common, "diagnostics.every=1")
    for name, value in off.task.model.params.items():
        np.testing.assert_array_equal(on.task.model.params[name], value, err_msg=name)
    assert [m["loss"] for m in seen_on.metrics.values()] == [m["loss"] for m in seen_off.metrics.values()]
    assert all(RATIO not in m for m in seen_off.metrics.values()) and FIGURE not in seen_off.final.figures


def test_the_ratio_is_logged_at_every_interval_and_the_heatmap_at_the_end(observed):
    _, seen = observed("task=echo", "cell=lstm", "train.steps=10", "diagnostics.every=3", "dataset.total_length=2000")
    logged = {step: sorted(k for k in m if k.startswith(RATIO)) for step, m in seen.metrics.items()}
    assert logged == {step: [RATIO, MEMORY_RATIO] if step % 3 == 0 else [] for step in range(10)}
    figure = seen.final.figures[FIGURE]()
    assert [ax.get_ylabel() for ax in figure.axes[:2]] == ["time step k"] * 2  # h and c (then their colour bars)
    image = figure.axes[0].images[0].get_array()
    assert image.shape == (15, 4)  # time steps (the echo window) x measurements


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("task", TASKS)
def test_every_task_and_cell_records_the_flow(observed, task, cell):
    """Each task model reports dL/dh_k (seq2seq: the encoder's steps, then the decoder's)."""
    short = {"echo": ("dataset.total_length=200",), "charlm": ("task.samples=1",)}.get(task, ())
    _, seen = observed(f"task={task}", f"cell={cell}", "train.steps=2", "diagnostics.every=1", *short)
    assert all(np.isfinite(seen.metrics[step][RATIO]) for step in (0, 1)), seen.metrics
    assert (MEMORY_RATIO in seen.metrics[0]) == (cell == "lstm")
    assert FIGURE in seen.final.figures


@dataclass
class BareConfig:
    """A cell that does not report its per-step gradients."""


class BareCell(ElmanCell):
    def backward(self, cache, d_outputs, d_state):
        full = super().backward(cache, d_outputs, d_state)
        return CellGradients(params=full.params, inputs=full.inputs, state=full.state, states=None)


def test_a_cell_without_per_step_gradients_trains_without_diagnostics(observed, caplog):
    class Plugin:
        @hookimpl
        def framework_register_cells(self, register):
            register("bare", lambda c, i, h, rng, dt: BareCell(i, h, "tanh", True, InitConfig(), rng, dt), BareConfig)

    with installed(Plugin(), "bare"), caplog.at_level(logging.WARNING, logger="framework.core.diagnostics"):
        run, seen = observed("cell=bare", "train.steps=5", "diagnostics.every=1")
    assert run.step == 5 and all(RATIO not in m for m in seen.metrics.values())
    assert FIGURE not in seen.final.figures
    assert seen.final.figures["gradient_over_time"]().axes[0].get_lines() == []  # drawn, without what it cannot measure
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "no per-step gradients" in warnings[0]


def test_the_counting_figure_draws_the_flow(observed):
    """For the linear counting model dL/dS_k = dL/dS_n w_rec^(n-k): the drawn norms fall by |w_rec| per step back."""
    _, seen = observed("train.steps=1")
    lines = seen.final.figures["gradient_over_time"]().axes[0].get_lines()
    assert len(lines) == 6
    for line in lines:
        w_rec = float(line.get_label().split(", ")[-1].rstrip(")$"))
        y = line.get_ydata()
        np.testing.assert_allclose(y[:-1], y[1:] * abs(w_rec), rtol=1e-12, atol=1e-300)


def test_cli_logs_the_ratio_and_the_heatmap(cli, default_store):
    result = cli("diagnostics.every=40", "train.steps=100")
    assert result.returncode == 0, result.stderr
    (run,) = runs_of(default_store, "counting")
    history = default_store.get_metric_history(run.info.run_id, RATIO)
    assert [m.step for m in history] == [0, 40, 80]
    figures = {a.path for a in default_store.list_artifacts(run.info.run_id, "figures")}
    assert f"figures/{FIGURE}.png" in figures


def test_cli_refuses_a_negative_interval(cli):
    result = cli("diagnostics.every=-1", "tracking.enabled=false")
    assert result.returncode == 2
    assert one_line(result.stderr) == "framework: error: diagnostics.every=-1: expected an integer >= 0"


# -- the plots of a sweep's parent run --------------------------------------------


def child(cell: str, step: str, seed: str, accuracy: float | None, status: str = "FINISHED"):
    metrics = {} if accuracy is None else {"accuracy": accuracy}
    params = {"cell.name": cell, "dataset.echo_step": step, "seed": seed}
    return SimpleNamespace(
        info=SimpleNamespace(status=status, run_id=f"{cell}{step}{seed}"),
        data=SimpleNamespace(params=params, metrics=metrics),
    )


def test_plot_table_aggregates_over_the_other_params():
    children = [
        child("rnn", "10", "0", 0.5),
        child("rnn", "10", "1", 0.7),
        child("rnn", "3", "0", 1.0),
        child("lstm", "3", "0", None),
        child("lstm", "3", "1", 0.2, status="FAILED"),
    ]
    plot = SweepPlot("dataset.echo_step", ("accuracy",), "cell.name")
    table = plot_table(children, plot)
    assert table["cell.name"] == ["lstm", "rnn", "rnn"]
    assert table["dataset.echo_step"] == ["3", "3", "10"]  # numeric order
    assert table["runs"] == [1, 1, 2]
    assert table["accuracy_mean"] == [None, 1.0, pytest.approx(0.6)]
    assert table["accuracy_std"][2] == pytest.approx(0.1)
    assert (table["accuracy_min"][2], table["accuracy_max"][2]) == (0.5, 0.7)
    figure = plot_figure(table, plot, "accuracy")
    assert [line.get_label() for line in figure.axes[0].get_lines()] == ["rnn"]  # lstm has no value


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"x": "seed"}, "hydra.callbacks.sweep.plot.metrics=None: expected a non-empty list"),
        ({"x": 3, "metrics": ["loss"]}, "hydra.callbacks.sweep.plot.x=3: expected a parameter"),
        ({"x": "seed", "metrics": "loss"}, "plot.metrics='loss': expected a non-empty list"),
        ({"x": "seed", "metrics": ["loss"], "colour": 1}, "expected a mapping with keys x, metrics"),
    ],
)
def test_a_bad_plot_is_refused_in_one_line(node, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        SweepPlot.parse(node)
    assert SweepPlot.parse(None) is None


def test_a_plot_over_names_places_them_in_text_order():
    children = [child("rnn", "3", seed, accuracy) for seed, accuracy in (("b", 0.4), ("a", 0.8))]
    plot = SweepPlot("seed", ("accuracy",))
    table = plot_table(children, plot)
    assert table == {
        "seed": ["a", "b"],
        "runs": [1, 1],
        **{f"accuracy_{s}": [0.8, 0.4] for s in ("mean", "min", "max")},
        "accuracy_std": [0.0, 0.0],
    }
    ax = plot_figure(table, plot, "accuracy").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    assert list(ax.get_lines()[0].get_xdata()) == [0.0, 1.0]


def test_a_sweep_with_a_bad_plot_stops_in_one_line(cli, tmp_path):
    result = cli("--multirun", "seed=0,1", "train.steps=5", "+hydra.callbacks.sweep.plot.x=seed")
    assert result.returncode == 2
    expected = "hydra.callbacks.sweep.plot.metrics=None: expected a non-empty list of final metrics of the jobs"
    assert one_line(result.stderr) == f"framework: error: {expected}"
    assert not (tmp_path / "mlruns").exists()
