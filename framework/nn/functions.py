"""The sigmoid and softmax functions and the bias gradients' sum, shared by cells, layers, losses and tasks."""

from __future__ import annotations

import numpy as np


def sigmoid(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """1 / (1 + exp(-z)), computed as (1 + tanh(z / 2)) / 2: no overflow, keeps the dtype; into ``out`` if given."""
    out = np.multiply(z, 0.5, out=out)
    np.tanh(out, out=out)
    out += 1.0
    out *= 0.5
    return out


def softmax_terms(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """s = z - M, e = exp(s), S = sum e for each row z of ``rows`` (N, K): softmax = e / S, log softmax = s - log S.

    The shift M keeps exp from overflowing for large logits; any M gives the same softmax. One M
    for all rows, the largest logit, takes a third of the time of each row's own maximum (numpy
    reduces many short rows one by one, 6x slower at 320 x 27). A row whose largest logit lies so
    far below M that its S nears the subnormal range (under tiny / eps), where e loses precision,
    gets its own maximum: all rows then, taken across the rows of the transpose.
    """
    ones = np.ones(rows.shape[1], dtype=rows.dtype)
    shifted = rows - rows.max(initial=-np.inf)
    exp = np.exp(shifted)
    sums = exp @ ones
    limits = np.finfo(rows.dtype)
    if sums.size and sums.min() < limits.tiny / limits.eps:
        shifted = np.subtract(rows, np.ascontiguousarray(rows.T).max(axis=0)[:, None], out=shifted)
        exp = np.exp(shifted, out=exp)
        sums = exp @ ones
    return shifted, exp, sums


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log softmax(z) = z - M - log sum exp(z - M) over the last axis, M a shift (:func:`softmax_terms`)."""
    shifted, _, sums = softmax_terms(z.reshape(-1, z.shape[-1]))
    return (shifted - np.log(sums)[:, None]).reshape(z.shape)


def softmax(z: np.ndarray) -> np.ndarray:
    """softmax(z) = exp(z) / sum exp(z) over the last axis, computed as exp(log_softmax(z))."""
    return np.exp(log_softmax(z))


def column_sums(a: np.ndarray) -> np.ndarray:
    """s_g = sum_n a[n, g] over every leading axis, (..., G) -> (G,), as the product ones^T a.

    A bias gradient: numpy's sum over the first axis of many short rows is 3 to 7
    times slower than this matrix-vector product at the tutorials' sizes.
    """
    rows = a.reshape(-1, a.shape[-1])
    return np.ones(rows.shape[0], dtype=a.dtype) @ rows
