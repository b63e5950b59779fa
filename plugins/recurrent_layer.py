"""The vector recurrent layer and its BPTT, checked by hand (docs/tasks.md, "recurrent layer").

    s_t = f(U x_t + W s_{t-1}),   U (hidden, input), W (hidden, hidden),   f = ReLU or identity

(in the engine's batch-major notation U = Wx^T and W = Wh^T). With an all-ones
error at the last step (L = sum of s_T), the error terms delta_t = dL/ds_t run
back through every step, and dL/dW, summed over all steps, agrees with central
differences. The run logs the error terms and the gradient-check table (analytic
against numerical, every entry of U and W) as artifacts. ``train.steps``
updates then fit s_T to zero, only to give the run a loss curve.

A lesson in the numbers: with ``cell.activation=relu`` and weights of 1e-4,
the default step eps = 1e-3 crosses ReLU's kink at 0 and the check disagrees
(relative error ~0.3); ``task.eps=1e-8`` agrees to ~1e-9.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from framework.core.config import param
from framework.core.data import ArrayDataset
from framework.core.gradcheck import numerical_gradient, relative_error
from framework.core.hookspecs import hookimpl
from framework.core.protocols import Evaluation, Parts
from framework.core.registry import Recipe
from framework.nn.model import RecurrentModel

INPUTS = ((1.0, 2.0, 3.0), (2.0, 3.0, 4.0))


@dataclass
class TwoStepsConfig:
    """The inputs x_1 = (1, 2, 3), x_2 = (2, 3, 4), with a zero target for s_2."""


def make_two_steps(config: TwoStepsConfig, rng: np.random.Generator, dtype: np.dtype) -> ArrayDataset:
    """x (1, 2, 3); target (1, 2) = 0."""
    return ArrayDataset(np.array([INPUTS], dtype=dtype), np.zeros((1, 2), dtype=dtype))


@dataclass
class RecurrentLayerConfig:
    """The vector RNN layer s_t = f(U x_t + W s_{t-1}) and its BPTT checked by central differences."""

    hidden_size: int = param(2, ge=1, doc="hidden units")
    eps: float = param(1e-3, gt=0, doc="step of the central differences")


class RecurrentLayerTask:
    """Error terms delta_t and the gradient-check table of the layer, for L = sum(s_T)."""

    objective = "max_relative_error"
    maximize = False

    def __init__(self, config: RecurrentLayerConfig, parts: Parts) -> None:
        self.config = config
        self.data: ArrayDataset = parts.dataset
        self.cell = parts.make_cell(self.data.input_size, config.hidden_size)
        self.model = RecurrentModel(self.cell, parts.loss, last_only=True)

    def trace(self, loss: float) -> dict[str, float]:
        return {}

    def sum_of_last_state(self) -> float:
        """L = sum(s_T)."""
        h, _, _ = self.cell.forward(self.data.inputs, self.cell.zero_state(1))
        return float(h[:, -1].sum())

    def evaluate(self, step: int, history: Mapping[str, Sequence[float]], final: bool) -> Evaluation:
        """delta_t for every step and analytic against numerical dL/dU, dL/dW."""
        x = self.data.inputs
        h, _, cache = self.cell.forward(x, self.cell.zero_state(1))
        error = np.zeros_like(h)
        error[:, -1] = 1.0  # the all-ones error at the last step
        grads = self.cell.backward(cache, error, None)
        rows: dict[str, list] = {"parameter": [], "entry": [], "analytic": [], "numerical": [], "relative_error": []}
        for name in ("Wx", "Wh"):
            numeric = numerical_gradient(self.sum_of_last_state, self.cell.params[name], self.config.eps)
            for index in np.ndindex(numeric.shape):
                rows["parameter"].append(name)
                rows["entry"].append(str(index))
                rows["analytic"].append(float(grads.params[name][index]))
                rows["numerical"].append(float(numeric[index]))
                rows["relative_error"].append(relative_error(grads.params[name][index], numeric[index]))
        deltas = {"t": list(range(1, x.shape[1] + 1)), "delta_t": [list(map(float, d)) for d in grads.states[0]]}
        metrics = {"max_relative_error": max(rows["relative_error"]), "loss": history["loss"][-1]}
        return Evaluation(metrics=metrics, tables={"gradient_check": rows, "error_terms": deltas})


@hookimpl
def framework_register_datasets(register) -> None:
    register("two_steps", make_two_steps, TwoStepsConfig)


@hookimpl
def framework_register_tasks(register) -> None:
    tutorial_cell = {"activation": "identity", "bias": False, "init": {"scheme": "uniform", "low": -1e-4, "high": 1e-4}}
    register(
        "recurrent_layer",
        RecurrentLayerTask,
        RecurrentLayerConfig,
        Recipe(dataset="two_steps", cell=("rnn", tutorial_cell), loss="mse", optim="sgd", train={"steps": 1}),
    )
