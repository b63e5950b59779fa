"""The simple recurrent network worked by hand (docs/tasks.md, "srn").

    h_t = f(W_in x_t + W_rec h_{t-1}),   y_t = W_out h_t,   s_0 = 0

Input (1,1), (1,1), (2,2); two hidden and two output units; every weight 1,
every bias 0. With f = identity the outputs are (4,4), (12,12), (32,32); with
f = tanh, h_1 = tanh(2) = 0.964028 and y_1 = 1.928055, and so on. The numbers
are those of the all-ones network before any training (``train.steps``
updates then fit the outputs to zero, only to give the run a loss curve).
Any registered cell can be worked the same way (``cell=lstm``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from framework.core.config import param
from framework.core.data import ArrayDataset
from framework.core.hookspecs import hookimpl
from framework.core.protocols import Evaluation, Parts
from framework.core.registry import Recipe
from framework.nn.init import InitConfig
from framework.nn.layers import Dense
from framework.nn.model import RecurrentModel

INPUTS = ((1.0, 1.0), (1.0, 1.0), (2.0, 2.0))


@dataclass
class SequenceConfig:
    """The hand-worked input sequence (1,1), (1,1), (2,2), with zero targets."""


def make_sequence(config: SequenceConfig, rng: np.random.Generator, dtype: np.dtype) -> ArrayDataset:
    """x (1, 3, 2) = the worked input; targets y = 0 (1, 3, 2)."""
    inputs = np.array([INPUTS], dtype=dtype)
    return ArrayDataset(inputs, np.zeros_like(inputs))


@dataclass
class SRNConfig:
    """The all-ones simple recurrent network worked by hand: h_t = f(W_in x_t + W_rec h_{t-1}), y_t = W_out h_t."""

    hidden_size: int = param(2, ge=1, doc="hidden units")


def fill_all_ones(params: dict[str, np.ndarray]) -> None:
    """Every weight 1, every bias (a parameter whose name starts with b) 0."""
    for name, array in params.items():
        array[...] = 0.0 if name.split(".")[-1].startswith("b") else 1.0


class SRNTask:
    """Logs h_t and y_t of the all-ones network as metrics and as a table."""

    objective = "loss"
    maximize = False

    def __init__(self, config: SRNConfig, parts: Parts) -> None:
        self.data: ArrayDataset = parts.dataset
        cell = parts.make_cell(self.data.input_size, config.hidden_size)
        outputs = self.data.targets.shape[-1]
        readout = Dense(config.hidden_size, outputs, False, InitConfig(), parts.rng("init"), parts.dtype)
        self.model = RecurrentModel(cell, parts.loss, last_only=False, readout=readout)
        fill_all_ones(self.model.params)
        y, _, (_, h) = self.model.outputs(self.data.inputs)
        self.worked = {"h": h[0], "y": y[0]}  # the hand-worked numbers, before training

    def trace(self, loss: float) -> dict[str, float]:
        return {}

    def evaluate(self, step: int, history: Mapping[str, Sequence[float]], final: bool) -> Evaluation:
        """h_t and y_t of the first unit as metrics (h_1 ... y_3), every unit in the table."""
        h, y = self.worked["h"], self.worked["y"]
        metrics = {f"{name}_{t + 1}": float(v[t, 0]) for name, v in self.worked.items() for t in range(len(h))}
        metrics["loss"] = history["loss"][-1]
        table = {
            "t": list(range(1, len(h) + 1)),
            "x_t": [str(list(x)) for x in INPUTS],
            "h_t": [[round(float(v), 6) for v in row] for row in h],
            "y_t": [[round(float(v), 6) for v in row] for row in y],
        }
        return Evaluation(metrics=metrics, tables={"worked_example": table})


@hookimpl
def framework_register_datasets(register) -> None:
    register("srn_sequence", make_sequence, SequenceConfig)


@hookimpl
def framework_register_tasks(register) -> None:
    register(
        "srn",
        SRNTask,
        SRNConfig,
        Recipe(dataset="srn_sequence", cell=("rnn", {"bias": False}), loss="mse", optim="sgd", train={"steps": 1}),
    )
