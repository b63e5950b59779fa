"""What the hidden state holds, for every run (framework/core/hidden.py): the heatmaps of the states and gates of one
sequence at the final evaluation, for every task and cell; what they show; a model that cannot report them; and the
unit that tracks a signal."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import installed

from framework.core import engine, plugins
from framework.core.hidden import FIGURE, direction_correlation, tracking, unit_correlations
from framework.core.hookspecs import hookimpl
from framework.nn.cells import ElmanCell
from framework.nn.init import InitConfig

REGISTRY = plugins.manager().registry
TASKS = [c.name for c in REGISTRY.of_kind("task")]
PANELS = {
    "rnn": ["hidden state $h_t$"],
    "lstm": ["hidden state $h_t$", "memory $c_t$", "input gate $i_t$", "forget gate $f_t$", "output gate $o_t$"],
    "gru": ["hidden state $h_t$", "reset gate $r_t$", "update gate $z_t$"],
}


class Final:
    """Keeps the final evaluation."""

    evaluation = None

    @hookimpl
    def framework_evaluation(self, run, step, evaluation, final):
        if final:
            self.evaluation = evaluation

    @hookimpl
    def framework_metrics(self, run, step, metrics):
        pass


def trained(compose, *overrides: str):
    """(run, the final evaluation, the last batch) of a short untracked run."""
    final = Final()
    with installed(final, "final") as pm:
        run = engine.build(compose("tracking.enabled=false", *overrides), pm)
        batches = []
        run.batches = (batches.append(b) or b for b in run.batches)  # remember what training reads
        engine.train(run, pm.hook)
    return run, final.evaluation, batches[-1]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("task", TASKS)
def test_every_task_and_cell_draws_its_hidden_states_and_gates(compose, task, cell):
    """One panel per quantity, units (y) over the time steps of the last batch's first sequence (x)."""
    short = {"echo": ("dataset.total_length=200",), "charlm": ("task.samples=1", "train.batch_size=4")}.get(task, ())
    _, final, batch = trained(compose, f"task={task}", f"cell={cell}", "train.steps=2", *short)
    figure = final.figures[FIGURE]()
    panels = [ax for ax in figure.axes if ax.images]
    assert [ax.get_title(loc="left").split(" (")[0] for ax in panels] == PANELS[cell]  # and the colours' scale
    steps = batch.inputs.shape[1] if batch.mask is None else int(batch.mask[0].sum())
    units = {ax.images[0].get_array().shape for ax in panels}
    assert len(units) == 1 and units.pop()[1] == steps  # (H, T)


def test_the_counting_picture_shows_the_count_so_far(compose):
    """The linear cell's h_t = sum_{j <= t} x_j w_x w_rec^(t - j): about the number of ones read so far."""
    _, final, batch = trained(compose, "task=counting")
    drawn = final.figures[FIGURE]().axes[0].images[0].get_array()[0]  # one unit
    w_x, w_rec = final.metrics["w_x"], final.metrics["w_rec"]
    x = batch.inputs[0, :, 0]
    expected = [sum(x[j] * w_x * w_rec ** (t - j) for j in range(t + 1)) for t in range(len(x))]
    np.testing.assert_allclose(drawn, expected, rtol=1e-12)
    np.testing.assert_allclose(drawn, np.cumsum(x), atol=0.02)


@dataclass
class BareConfig:
    """A cell that does not report its states."""


class BareCell(ElmanCell):
    states_and_gates = None  # a third-party cell without the method


def test_a_cell_that_does_not_report_its_states_gets_no_heatmaps(compose, caplog):
    class Plugin:
        @hookimpl
        def framework_register_cells(self, register):
            register("bare", lambda c, i, h, rng, dt: BareCell(i, h, "tanh", True, InitConfig(), rng, dt), BareConfig)

    with installed(Plugin(), "bare"), caplog.at_level(logging.INFO, logger="framework.core.hidden"):
        _, final, _ = trained(compose, "task=adder", "cell=bare", "train.steps=3")
    assert FIGURE not in final.figures and "right_sums" in final.figures  # the task's own pictures still come
    assert [r.getMessage() for r in caplog.records] == [
        "task adder: its model reports no per-step states (hidden_states); no figure hidden_states"
    ]


def test_the_unit_and_the_direction_that_track_a_signal():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 2, 2000).astype(float)
    noise = rng.standard_normal((2000, 3))
    h = np.column_stack([noise[:, 0], -s + 0.5 * noise[:, 1], s + noise[:, 1] + noise[:, 2]])
    r = unit_correlations(h, s)
    np.testing.assert_allclose(r, [np.corrcoef(h[:, u], s)[0, 1] for u in range(3)], rtol=1e-12)
    tracked = tracking(h, s, "s")
    assert (tracked.signal, tracked.unit) == ("s", 1) and tracked.r == pytest.approx(r[1])
    # s = 2 h_2 + h_1 ... up to the noise of unit 0: a direction of h holds it better than any unit
    assert abs(tracked.r) < tracked.direction_r
    assert direction_correlation(np.column_stack([h, s]), s) == pytest.approx(1.0)
    assert np.isnan(unit_correlations(np.ones((5, 1)), np.arange(5.0))[0])  # a constant unit tracks nothing
