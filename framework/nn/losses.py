"""Losses on a model's raw outputs, each returning (L, dL/d outputs)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framework.config import param
from framework.hookspecs import hookimpl

REDUCTIONS = ("mean", "sum")


@dataclass
class MSEConfig:
    """Squared error: L = sum_i m_i (y_i - t_i)^2 / N."""

    reduction: str = param("mean", choices=REDUCTIONS, doc="mean: N = number of (unmasked) elements; sum: N = 1")


class MeanSquaredError:
    """L = sum_i m_i (y_i - t_i)^2 / N,  dL/dy_i = 2 m_i (y_i - t_i) / N.

    The mask m (B, T), when given, weights every element of each time step.
    """

    def __init__(self, config: MSEConfig) -> None:
        self.reduction = config.reduction

    def __call__(
        self, outputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[float, np.ndarray]:
        diff = outputs - targets
        weights = np.ones_like(diff) if mask is None else np.broadcast_to(mask[..., None], diff.shape)
        count = float(weights.sum()) if self.reduction == "mean" else 1.0
        weighted = weights * diff
        return float(np.sum(weighted * diff) / count), 2.0 * weighted / count

    def random_targets(self, outputs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Real-valued targets t ~ N(0, 1) of the outputs' shape."""
        return rng.standard_normal(outputs.shape)


@hookimpl
def framework_register_losses(register) -> None:
    """The built-in losses."""
    register("mse", MeanSquaredError, MSEConfig)
