"""The one gradient check: analytic gradients against central differences.

    df/dp_i ~= (f(p + eps e_i) - f(p - eps e_i)) / (2 eps)

Every cell, loss and task model is checked with :func:`check_gradients`, in
float64; the helpers below only say what ``f`` is for each kind of component.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from framework.protocols import Batch, Cell, Loss, Model


def numerical_gradient(f: Callable[[], float], array: np.ndarray, eps: float) -> np.ndarray:
    """Central differences of ``f()`` with respect to every entry of ``array`` (perturbed in place)."""
    grad = np.zeros_like(array, dtype=np.float64)
    flat, flat_grad = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + eps
        plus = f()
        flat[i] = saved - eps
        minus = f()
        flat[i] = saved
        flat_grad[i] = (plus - minus) / (2 * eps)
    return grad


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max |a - n| / max(|a| + |n|, 1e-12) over entries: 0 when they agree."""
    scale = np.maximum(np.abs(analytic) + np.abs(numeric), 1e-12)
    return float(np.max(np.abs(analytic - numeric) / scale)) if analytic.size else 0.0


def check_gradients(
    f: Callable[[], float], arrays: Mapping[str, np.ndarray], analytic: Mapping[str, np.ndarray], eps: float = 1e-6
) -> dict[str, float]:
    """The relative error of each analytic gradient against central differences of ``f``.

    ``arrays`` are the inputs of ``f``, perturbed in place; ``analytic`` holds
    df/d(array) under the same names.
    """
    return {name: relative_error(analytic[name], numerical_gradient(f, array, eps)) for name, array in arrays.items()}


def check_cell(cell: Cell, x: np.ndarray, state: object, rng: np.random.Generator) -> dict[str, float]:
    """Check a cell's BPTT on f = sum(R * h) + sum(R_s * s_T) with random weights R, R_s.

    Covers every parameter, the inputs x and each part of the initial state.
    """
    outputs, final, cache = cell.forward(x, state)
    r_out = rng.standard_normal(outputs.shape)
    r_final = _like(final, rng)

    def f() -> float:
        h, s, _ = cell.forward(x, state)
        return float(np.sum(r_out * h) + _dot(r_final, s))

    grads = cell.backward(cache, r_out, r_final)
    state_parts = {f"state[{i}]": s for i, s in enumerate(_parts(state))}
    d_state_parts = {f"state[{i}]": d for i, d in enumerate(_parts(grads.state))}
    return check_gradients(
        f, {**cell.params, "x": x, **state_parts}, {**grads.params, "x": grads.inputs, **d_state_parts}
    )


def check_loss(loss: Loss, outputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Check dL/d outputs of a loss."""
    _, analytic = loss(outputs, targets, mask)
    return relative_error(analytic, numerical_gradient(lambda: loss(outputs, targets, mask)[0], outputs, 1e-6))


def check_model(model: Model, batch: Batch, state: object = None, eps: float = 1e-6) -> dict[str, float]:
    """Check a task model's gradients of the training loss on ``batch``."""
    result = model.loss_and_grads(batch, state)
    return check_gradients(lambda: model.loss_and_grads(batch, state).loss, model.params, result.grads, eps)


def _parts(state: object) -> tuple[np.ndarray, ...]:
    return tuple(state) if isinstance(state, tuple) else (state,)


def _like(state: object, rng: np.random.Generator) -> object:
    parts = tuple(rng.standard_normal(s.shape) for s in _parts(state))
    return parts if isinstance(state, tuple) else parts[0]


def _dot(a: object, b: object) -> float:
    return float(sum(np.sum(p * q) for p, q in zip(_parts(a), _parts(b), strict=True)))
