"""Losses on a model's raw outputs, each returning (L, dL/d outputs).

Every loss is a sum of per-item terms l_i weighted by the mask and divided by N:

    L = sum_i m_i l_i / N,   dL/dz = m dl/dz / N

with N the number of unmasked items for ``reduction: mean`` (1 for ``sum``).
An item is one output element for the element-wise losses (mse, sigmoid
squared error, binary cross-entropy) and one position (a K-vector of logits)
for the softmax cross-entropy. The mask, when given, has the outputs' shape
without the last axis (``(B, T)`` for ``(B, T, K)`` outputs) and weights every
element of a position. :func:`reduce` is that shared reduction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from framework.core.config import param
from framework.core.hookspecs import hookimpl
from framework.nn.functions import sigmoid, softmax_terms

REDUCTIONS = ("mean", "sum")


def item_weights(
    mask: np.ndarray | None, items: tuple[int, ...], dtype: np.dtype, reduction: str
) -> np.ndarray | float:
    """w = m / N: the weight of every item in L = sum w l (a scalar 1 / N without a mask).

    ``items`` is the shape of the per-item losses: the outputs' shape or that
    shape without the last axis. The mask's trailing axes are broadcast over the
    rest; w has the mask's shape. N counts the unmasked items for ``mean`` (at
    least 1: a fully masked batch gives L = 0 and a zero gradient) and is 1 for ``sum``.
    """
    if mask is None:
        return 1.0 / max(math.prod(items), 1) if reduction == "mean" else 1.0
    m = np.asarray(mask, dtype=dtype)
    if m.shape != items[: m.ndim]:
        raise ValueError(f"mask of shape {m.shape} does not fit outputs of shape {items}")
    if reduction != "mean":
        return m
    count = float(m.sum()) * (math.prod(items) // max(m.size, 1))
    return m / np.asarray(max(count, 1), dtype=dtype)


def reduce(losses: np.ndarray, grads: np.ndarray, mask: np.ndarray | None, reduction: str) -> tuple[float, np.ndarray]:
    """(sum w l, w dl/dz) from per-item losses ``l`` and their gradients ``dl/dz``, w = m / N (:func:`item_weights`).

    ``losses`` has the outputs' shape (element-wise losses) or that shape without
    the last axis (one loss per position); ``grads`` has the outputs' shape and is
    scaled in place (each loss passes an array of its own).
    """
    w = item_weights(mask, losses.shape, grads.dtype, reduction)
    if np.ndim(w) == 0:
        if w != 1:
            grads *= np.asarray(w, dtype=grads.dtype)
        return float(np.sum(losses)) * w, grads

    def spread(ndim: int) -> np.ndarray:  # w with size-1 trailing axes up to ``ndim``: broadcast over the rest
        return w.reshape(w.shape + (1,) * (ndim - w.ndim))

    total = float(np.vdot(np.broadcast_to(spread(losses.ndim), losses.shape), losses))
    grads *= spread(grads.ndim)
    return total, grads


def reduction_option(items: str) -> Any:
    """The ``reduction`` option of a loss whose N counts unmasked ``items``."""
    return param("mean", choices=REDUCTIONS, doc=f"mean: N = number of unmasked {items}; sum: N = 1")


@dataclass
class MSEConfig:
    """Squared error: L = sum_i m_i (y_i - t_i)^2 / N."""

    reduction: str = reduction_option("elements")


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
        return reduce(diff * diff, 2.0 * diff, mask, self.reduction)

    def random_targets(self, outputs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Real-valued targets t ~ N(0, 1) of the outputs' shape."""
        return rng.standard_normal(outputs.shape)


@dataclass
class SoftmaxCrossEntropyConfig:
    """Softmax cross-entropy on logits (..., K) with integer class targets: L = -sum m log softmax(z)[t] / N."""

    reduction: str = reduction_option("positions")


class SoftmaxCrossEntropy:
    """p = softmax(z) over the last axis;  L = -sum_i m_i log p_i[t_i] / N;  dL/dz_i = m_i (p_i - onehot(t_i)) / N.

    The outputs z are logits (..., K); the targets t are class indices in
    [0, K) of shape z.shape[:-1] (targets of masked positions are ignored).
    log p = z - M - log sum exp(z - M) with M the largest logit, so large logits do not overflow.
    """

    def __init__(self, config: SoftmaxCrossEntropyConfig) -> None:
        self.reduction = config.reduction

    def __call__(
        self, outputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[float, np.ndarray]:
        classes = outputs.shape[-1]
        if np.shape(targets) != outputs.shape[:-1]:
            raise ValueError(
                f"softmax_cross_entropy: targets of shape {np.shape(targets)} for logits of shape {outputs.shape}; "
                f"expected class indices of shape {outputs.shape[:-1]}"
            )
        t = np.asarray(targets).astype(np.intp)
        if mask is not None:
            t = np.where(np.asarray(mask) != 0, t, 0)  # padding may carry any target
        if t.size and t.view(np.uintp).max() >= classes:  # a negative index reads as a huge unsigned one
            raise ValueError(f"softmax_cross_entropy: target indices must be in [0, {classes})")
        w = item_weights(mask, t.shape, outputs.dtype, self.reduction)  # a scalar, or one weight per position
        w = w.reshape(-1) if np.ndim(w) else w
        shifted, p, sums = softmax_terms(outputs.reshape(-1, classes))  # one row per position; p / sums = softmax
        at_targets = np.arange(0, p.size, classes) + t.reshape(-1)  # flat index of z_i[t_i]
        losses = np.log(sums) - shifted.reshape(-1)[at_targets]  # -log p[t] = log sum exp(z - M) - (z[t] - M)
        p *= (w / sums)[:, None]  # dL/dz_i = w_i p_i - w_i onehot(t_i), in one pass over the logits
        p.reshape(-1)[at_targets] -= w
        total = float(np.dot(w, losses)) if np.ndim(w) else w * float(losses.sum())
        return total, p.reshape(outputs.shape)

    def random_targets(self, outputs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Class indices drawn uniformly from [0, K), of shape outputs.shape[:-1]."""
        return rng.integers(0, outputs.shape[-1], size=outputs.shape[:-1])


@dataclass
class SigmoidSquaredErrorConfig:
    """Squared error of sigmoid outputs (the adder tutorial): L = sum m 0.5 (sigmoid(z) - t)^2 / N."""

    reduction: str = reduction_option("elements")


class SigmoidSquaredError:
    """y = sigmoid(z);  L = sum_i m_i 0.5 (y_i - t_i)^2 / N;  dL/dz_i = m_i (y_i - t_i) y_i (1 - y_i) / N.

    The outputs z are logits, the targets t in [0, 1]; N counts unmasked elements.
    """

    def __init__(self, config: SigmoidSquaredErrorConfig) -> None:
        self.reduction = config.reduction

    def __call__(
        self, outputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[float, np.ndarray]:
        y = sigmoid(outputs)
        diff = y - targets
        return reduce(0.5 * diff * diff, diff * y * (1.0 - y), mask, self.reduction)

    def random_targets(self, outputs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Targets t ~ U[0, 1) of the outputs' shape."""
        return rng.random(outputs.shape)


@dataclass
class BinaryCrossEntropyConfig:
    """Binary cross-entropy on logits: L = -sum m [t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))] / N."""

    reduction: str = reduction_option("elements")


class BinaryCrossEntropy:
    """L = sum_i m_i [max(z_i, 0) - z_i t_i + log(1 + exp(-|z_i|))] / N;  dL/dz_i = m_i (sigmoid(z_i) - t_i) / N.

    That is -[t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))] written so that no
    exp overflows. The outputs z are logits, the targets t in [0, 1].
    """

    def __init__(self, config: BinaryCrossEntropyConfig) -> None:
        self.reduction = config.reduction

    def __call__(
        self, outputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[float, np.ndarray]:
        losses = np.maximum(outputs, 0.0) - outputs * targets + np.log1p(np.exp(-np.abs(outputs)))
        return reduce(losses, sigmoid(outputs) - targets, mask, self.reduction)

    def random_targets(self, outputs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Targets t ~ U[0, 1) of the outputs' shape (soft labels; bits are a special case)."""
        return rng.random(outputs.shape)


@hookimpl
def framework_register_losses(register) -> None:
    """The built-in losses."""
    register("mse", MeanSquaredError, MSEConfig)
    register("softmax_cross_entropy", SoftmaxCrossEntropy, SoftmaxCrossEntropyConfig)
    register("sigmoid_squared_error", SigmoidSquaredError, SigmoidSquaredErrorConfig)
    register("binary_cross_entropy", BinaryCrossEntropy, BinaryCrossEntropyConfig)
