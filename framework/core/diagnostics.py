"""Gradient flow through time: how much of the loss's gradient reaches each step of a window.

A model's backward pass computes dL/dh_k for every step k = 1..T of its batch
(``StepResult.state_grads``; for an LSTM also dL/dc_k of its memory,
``cell_state_grads``). The flow is their norm per step, averaged over the B
sequences of the batch:

    n_k = (1/B) sum_b ||dL/dh_{b,k}||_2        (and m_k likewise for dL/dc_{b,k})

    grad_flow_ratio = n_1 / n_T                (grad_flow_ratio_c = m_1 / m_T)

Below 1 the gradient shrinks on its way back from the last step of the window
to the first (it vanishes); above 1 it grows (it explodes, or, when every step
is scored, the losses of later steps still reach the first one and add up).
n_1 and n_T are the issue's ||dL/dh_0|| and ||dL/dh_T||: the first and the last
state of the window; a ratio whose n_T is 0 is not reported.

:class:`FlowRecorder` measures it every ``diagnostics.every`` updates from the
gradients training computes anyway (nothing is recomputed, no number of the
run changes) and gives the metrics of those updates and, at the end, the
heatmap ``gradient_flow`` (training step x time step, log colour scale). A
model that reports no per-step gradients (a third-party cell or model) is
skipped with one log line. A resumed run's heatmap starts where it resumed
(the metric's earlier values are already in the run).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from framework.core.protocols import StepResult

log = logging.getLogger(__name__)

RATIO = "grad_flow_ratio"
MEMORY_RATIO = "grad_flow_ratio_c"
FIGURE = "gradient_flow"


@dataclass(frozen=True)
class Flow:
    """The flow of one backward pass: n_k of the hidden state h_k and, for a cell with a memory, m_k of c_k."""

    hidden: np.ndarray  # (T,)
    memory: np.ndarray | None = None  # (T,)


def step_norms(grads: np.ndarray) -> np.ndarray:
    """n_k = (1/B) sum_b ||g_{b,k}||_2 of per-step gradients g (B, T, H): shape (T,), float64.

    Written out, the very operations of ``np.linalg.norm(g, axis=-1).mean(axis=0)`` (the same numbers) without
    their Python overhead: half of the time at the adder's size.
    """
    g = grads.astype(np.float64, copy=False)
    norms = np.sqrt(np.add.reduce(g * g, axis=-1))  # ||g_{b,k}||_2, (B, T)
    return np.add.reduce(norms, axis=0) / norms.shape[0]


def per_step(grads: Any) -> bool:
    """Whether ``grads`` is an array of per-step gradients (B, T, H) with B, T >= 1."""
    return isinstance(grads, np.ndarray) and grads.ndim == 3 and grads.shape[0] >= 1 and grads.shape[1] >= 1


def flow_of(result: StepResult) -> Flow | None:
    """The flow of a model's ``StepResult``; None when it holds no per-step gradients of shape (B, T, H)."""
    hidden = getattr(result, "state_grads", None)
    if not per_step(hidden):
        return None
    memory = result.cell_state_grads
    return Flow(step_norms(hidden), step_norms(memory) if per_step(memory) else None)


def ratio(norms: np.ndarray) -> float | None:
    """n_1 / n_T; None when n_T is 0 or the ratio is not finite."""
    value = float(norms[0] / norms[-1]) if norms[-1] > 0 else math.nan
    return value if math.isfinite(value) else None


class FlowRecorder:
    """Measures the flow every ``every`` updates (0: never); the metrics of those updates and the heatmap."""

    def __init__(self, every: int, task: str) -> None:
        self.every, self.task = every, task
        self.steps: list[int] = []
        self.flows: list[Flow] = []

    def metrics(self, step: int, result: StepResult) -> dict[str, float]:
        """Record the flow of update ``step`` (0-based) when it is due: ``grad_flow_ratio`` (and
        ``grad_flow_ratio_c``) where defined; {} otherwise."""
        if not self.every or step % self.every:
            return {}
        flow = flow_of(result)
        if flow is None:
            log.warning(
                "diagnostics: the model of task %s reports no per-step gradients dL/dh_k (StepResult.state_grads "
                "of shape (B, T, H)); no gradient flow is recorded in this run",
                self.task,
            )
            self.every = 0
            return {}
        self.steps.append(step)
        self.flows.append(flow)
        ratios = {RATIO: ratio(flow.hidden), MEMORY_RATIO: None if flow.memory is None else ratio(flow.memory)}
        return {name: value for name, value in ratios.items() if value is not None}

    def figures(self) -> dict[str, Callable[[], Any]]:
        """{'gradient_flow': a function drawing the heatmap} once a flow with a positive norm was recorded, else {}."""
        panels = {"$\\|\\partial L / \\partial h_k\\|$": matrix([f.hidden for f in self.flows])}
        memories = [f.memory for f in self.flows if f.memory is not None]
        if len(memories) == len(self.flows):
            panels["$\\|\\partial L / \\partial c_k\\|$ (memory)"] = matrix(memories)
        panels = {name: values for name, values in panels.items() if np.any(values > 0)}
        if not panels:
            return {}
        return {FIGURE: partial(heatmap, np.array(self.steps), panels, self.task)}


def matrix(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of norms (T may differ between batches) as one array (steps, max T), NaN where a row is shorter."""
    values = np.full((len(rows), max((len(r) for r in rows), default=0)), np.nan)
    for i, row in enumerate(rows):
        values[i, : len(row)] = row
    return values


def heatmap(steps: np.ndarray, panels: dict[str, np.ndarray], task: str):
    """Norms n_k over training steps (x) and time steps k (y), log colour scale; one panel per state."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 2.2 + 2.6 * len(panels)), layout="constrained")
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    half = (steps[1] - steps[0]) / 2 if len(steps) > 1 else 0.5
    for ax, (label, values) in zip(axes, panels.items(), strict=True):
        shown = np.ma.masked_where(~(values > 0), values)  # a zero or missing norm has no colour on a log scale
        extent = (steps[0] - half, steps[-1] + half, 0.5, values.shape[1] + 0.5)
        image = ax.imshow(
            shown.T,
            origin="lower",
            aspect="auto",
            interpolation="nearest",
            extent=extent,
            norm=LogNorm(vmin=shown.min(), vmax=shown.max()),
            cmap="viridis",
        )
        figure.colorbar(image, ax=ax, label=label + " (log scale)")
        ax.set_ylabel("time step k")
    axes[-1].set_xlabel("training step (update)")
    figure.suptitle(f"{task}: gradient flowing back through time, mean norm over the batch")
    return figure
