"""What the hidden state holds: the states and gates of every step of one sequence, as heatmaps.

A model that can report them (``hidden_states(batch)``: the built-in models with the built-in cells, see
:class:`framework.core.protocols.ReportsStates`) gets, at the final evaluation of every run, the figure
``hidden_states``: one panel per quantity over the time steps t (x) and the units (y), for the first sequence of
the last training batch run from the zero state:

    h_t            the hidden state (every cell)
    c_t            the memory (LSTM)
    i_t, f_t, o_t  the input, forget and output gates (LSTM), in [0, 1]
    r_t, z_t       the reset and update gates (GRU), in [0, 1]

The states are computed with the final evaluation (one forward pass over one sequence); the figure is drawn only
when figures are recorded. A task's own pictures of its hidden units come in addition, from its evaluation; it
finds the unit that tracks a signal s (the carry, the echoed bit, ...) over samples n with :func:`tracking`:

    r_u = corr(h_u, s) = sum_n (h_nu - mean h_u)(s_n - mean s) / sqrt(sum_n (h_nu - mean h_u)^2 sum_n (s_n - mean s)^2)
    the unit:       u* = argmax_u |r_u|
    the direction:  R = corr(h w + b, s), (w, b) the least-squares fit of s on [h 1]  (|r_u*| <= R <= 1)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from framework.core.protocols import Batch

log = logging.getLogger(__name__)

FIGURE = "hidden_states"
GATES = {"i": "input gate", "f": "forget gate", "o": "output gate", "r": "reset gate", "z": "update gate"}
STATES = {"h": "hidden state", "c": "memory"}


def first_sequence(batch: Batch) -> Batch:
    """The batch's first sequence, cut to its own steps where a mask says where it ends."""
    steps = batch.inputs.shape[1] if batch.mask is None else int(np.count_nonzero(batch.mask[0]))
    mask = None if batch.mask is None else batch.mask[:1, :steps]
    return Batch(batch.inputs[:1, :steps], batch.targets[:1, :steps], mask)


def figures(model: Any, batch: Batch | None, task: str) -> dict[str, Callable[[], Any]]:
    """{'hidden_states': a function drawing the heatmaps} for the first sequence of ``batch``; {} without a batch
    or when the model does not report its states (logged once)."""
    report = getattr(model, "hidden_states", None)
    values = None if report is None or batch is None else report(first_sequence(batch))
    if not values:
        if batch is not None:
            log.info("task %s: its model reports no per-step states (hidden_states); no figure %s", task, FIGURE)
        return {}
    return {FIGURE: partial(heatmaps, {name: v[0] for name, v in values.items()}, task)}


def heatmaps(values: dict[str, np.ndarray], task: str):
    """One heatmap per quantity (T, H): units (y) over time steps t = 1..T (x); the gates on [0, 1], the states on a
    diverging scale symmetric about 0, each panel's scale in its title.

    Panels on a grid with fixed margins and no colour bars: the layout engine and a colour bar per panel took 0.6 s
    of the 0.9 s of an LSTM's five panels.
    """
    from matplotlib.figure import Figure

    height = 1.1 + 1.4 * len(values)  # inches: 0.5 for the x axis, 0.6 for the title, 1.4 a panel
    figure = Figure(figsize=(8, height))
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.5 / height, top=1 - 0.75 / height, hspace=0.45)
    axes = figure.subplots(len(values), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, v) in zip(axes, values.items(), strict=True):
        steps, units = v.shape
        if name in GATES:
            scale, legend = {"cmap": "viridis", "vmin": 0.0, "vmax": 1.0}, "dark 0, yellow 1"
        else:
            bound = float(np.max(np.abs(v))) or 1.0
            scale, legend = {"cmap": "RdBu_r", "vmin": -bound, "vmax": bound}, f"blue {-bound:.3g}, red {bound:.3g}"
        extent = (0.5, steps + 0.5, -0.5, units - 0.5)
        ax.imshow(v.T, aspect="auto", interpolation="nearest", origin="lower", extent=extent, **scale)
        ax.set_ylabel("unit")
        ax.set_title(f"{GATES.get(name) or STATES.get(name, name)} ${name}_t$ ({legend})", fontsize=9, loc="left")
    axes[-1].set_xlabel("time step t")
    figure.suptitle(f"{task}: what the hidden units do over one sequence")
    return figure


@dataclass(frozen=True)
class Tracked:
    """Which unit of the hidden state tracks a signal best, and how well a direction of it can."""

    signal: str  # what is tracked, in words: "the carry"
    unit: int  # u*
    r: float  # r_u* (its sign says whether the unit rises or falls with the signal)
    direction_r: float  # R


def unit_correlations(h: np.ndarray, s: np.ndarray) -> np.ndarray:
    """r_u = corr(h_u, s) of every unit over the samples: h (N, H), s (N,) -> (H,); NaN where h_u or s is constant."""
    h_centred, s_centred = h - h.mean(axis=0), s - s.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return (h_centred.T @ s_centred) / np.sqrt((h_centred**2).sum(axis=0) * (s_centred**2).sum())


def direction_correlation(h: np.ndarray, s: np.ndarray) -> float:
    """R = corr(h w + b, s), (w, b) = argmin ||[h 1] (w, b) - s||^2: how well any direction of the state tracks s.

    The fit solves the normal equations X^T X (w, b) = X^T s, X = [h 1], by least squares (X^T X may be singular):
    a (H+1, H+1) system, where lstsq on X itself took 0.23 s of the adder's 114688 x 17.
    """
    features = np.column_stack([h, np.ones(len(h))])
    fit, *_ = np.linalg.lstsq(features.T @ features, features.T @ s, rcond=None)
    return float(unit_correlations((features @ fit)[:, None], s)[0])


def tracking(h: np.ndarray, s: np.ndarray, signal: str) -> Tracked:
    """The unit u* = argmax_u |r_u| of h (N, H) that tracks s (N,) best, and R of the best direction."""
    r = unit_correlations(h.astype(np.float64), s.astype(np.float64))
    unit = int(np.nanargmax(np.abs(r))) if np.isfinite(r).any() else 0
    return Tracked(signal, unit, float(r[unit]), direction_correlation(h.astype(np.float64), s.astype(np.float64)))


def tracking_table(tracked: Sequence[Tracked]) -> dict[str, list]:
    """The table ``hidden_units``: for each signal, the unit that tracks it, its r and the best direction's R."""
    return {
        "signal": [t.signal for t in tracked],
        "unit": [t.unit for t in tracked],
        "r": [round(t.r, 4) for t in tracked],
        "direction_r": [round(t.direction_r, 4) for t in tracked],
    }
