"""The sigmoid and softmax functions, shared by cells, losses and tasks."""

from __future__ import annotations

import numpy as np


def sigmoid(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """1 / (1 + exp(-z)), computed as (1 + tanh(z / 2)) / 2: no overflow, keeps the dtype; into ``out`` if given."""
    out = np.multiply(z, 0.5, out=out)
    np.tanh(out, out=out)
    out += 1.0
    out *= 0.5
    return out


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log softmax(z) = z - max z - log sum exp(z - max z) over the last axis: no overflow for large logits."""
    shifted = z - np.max(z, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def softmax(z: np.ndarray) -> np.ndarray:
    """softmax(z) = exp(z) / sum exp(z) over the last axis, computed as exp(log_softmax(z))."""
    return np.exp(log_softmax(z))
