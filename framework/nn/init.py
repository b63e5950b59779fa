"""Weight initialisation: one option block shared by every layer.

In a config it is a nested node, e.g. ``cell.init.scheme=uniform
cell.init.low=-1 cell.init.high=1`` (the adder tutorial) or
``cell.init.scheme=normal cell.init.std=0.01`` (the dinosaur tutorial).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framework.core.config import param
from framework.core.errors import ConfigError

SCHEMES = ("default", "uniform", "normal")


@dataclass
class InitConfig:
    """How the weights of a layer start (biases start at 0)."""

    scheme: str = param(
        "default",
        choices=SCHEMES,
        doc="default: U(-k, k) with k = 1/sqrt(fan), as PyTorch; uniform: U(low, high); normal: N(0, std^2)",
    )
    low: float = param(-0.1, doc="lower bound of the uniform scheme")
    high: float = param(0.1, doc="upper bound of the uniform scheme")
    std: float = param(0.01, gt=0, doc="standard deviation of the normal scheme")

    def __post_init__(self) -> None:
        if self.high <= self.low:
            raise ConfigError("high", self.high, f"a number > low ({self.low})")


def init_weights(
    shape: tuple[int, ...], config: InitConfig, fan: int, rng: np.random.Generator, dtype: np.dtype
) -> np.ndarray:
    """W ~ U(-1/sqrt(fan), 1/sqrt(fan)) (default), U(low, high) (uniform) or N(0, std^2) (normal)."""
    if config.scheme == "uniform":
        weights = rng.uniform(config.low, config.high, size=shape)
    elif config.scheme == "normal":
        weights = config.std * rng.standard_normal(shape)
    else:
        bound = 1.0 / np.sqrt(fan)
        weights = rng.uniform(-bound, bound, size=shape)
    return weights.astype(dtype)
