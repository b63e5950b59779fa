"""The one gradient check: analytic gradients against central differences.

    df/dp_i ~= (f(p + eps e_i) - f(p - eps e_i)) / (2 eps)

Every cell, loss and task model is checked with :func:`check_gradients`, in
float64, with the fourth-order central differences of :func:`numerical_gradient`;
the helpers below only say what ``f`` is for each kind of component.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from framework.core.protocols import Batch, Cell, Loss, Model

EPS = 1e-4  # the step h of the fourth-order differences: truncation O(h^4), round-off ~1e-16 |f| / h
POINTS = 4


def numerical_gradient(
    f: Callable[[], float], array: np.ndarray, eps: float, points: int = 2, entries: np.ndarray | None = None
) -> np.ndarray:
    """Central differences of ``f()`` for the entries of ``array`` (perturbed in place, then restored).

    points=2: (f(p + h) - f(p - h)) / 2h, error O(h^2), the tutorials' check;
    points=4: (-f(p + 2h) + 8 f(p + h) - 8 f(p - h) + f(p - 2h)) / 12h, error O(h^4),
    so a step large enough to keep round-off small stays exact.
    ``entries`` (flat indices) limits the work to those entries; the others stay 0.
    """
    offsets, weights = ((1, -1), (1, -1)) if points == 2 else ((2, 1, -1, -2), (-1, 8, -8, 1))
    scale = 2 * eps if points == 2 else 12 * eps
    grad = np.zeros_like(array, dtype=np.float64)
    flat, flat_grad = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size) if entries is None else entries:
        saved = flat[i]
        total = 0.0
        for offset, weight in zip(offsets, weights, strict=True):
            flat[i] = saved + offset * eps
            total += weight * f()
        flat[i] = saved
        flat_grad[i] = total / scale
    return grad


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """||a - n|| / max(||a|| + ||n||, 1e-12) over the whole array: 0 when they agree.

    Measured per array rather than per entry, so that entries many orders of
    magnitude below the array's scale (where central differences carry only
    round-off) do not dominate; for a single number it is |a - n| / (|a| + |n|).
    """
    a, n = np.asarray(analytic, dtype=np.float64), np.asarray(numeric, dtype=np.float64)
    return float(np.linalg.norm(a - n) / max(np.linalg.norm(a) + np.linalg.norm(n), 1e-12))


def check_gradients(
    f: Callable[[], float],
    arrays: Mapping[str, np.ndarray],
    analytic: Mapping[str, np.ndarray],
    max_entries: int | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, float]:
    """The relative error of each analytic gradient against central differences of ``f``.

    ``arrays`` are the inputs of ``f``, perturbed in place; ``analytic`` holds
    df/d(array) under the same names. Fourth-order differences with h = 1e-4
    (see :func:`numerical_gradient`). With ``max_entries``, a larger array is
    checked on that many entries drawn from ``rng``.
    """
    rng = rng or np.random.default_rng(0)
    errors = {}
    for name, array in arrays.items():
        entries = None
        if max_entries is not None and array.size > max_entries:
            entries = np.sort(rng.choice(array.size, size=max_entries, replace=False))
        numeric = numerical_gradient(f, array, EPS, POINTS, entries)
        chosen = slice(None) if entries is None else entries
        errors[name] = relative_error(analytic[name].reshape(-1)[chosen], numeric.reshape(-1)[chosen])
    return errors


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
        f, {**cell.params, "x": x, **state_parts}, {**grads.params, "x": grads.input_grads(), **d_state_parts}
    )


def check_loss(loss: Loss, outputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Check dL/d outputs of a loss."""
    _, analytic = loss(outputs, targets, mask)
    return check_gradients(lambda: loss(outputs, targets, mask)[0], {"outputs": outputs}, {"outputs": analytic})[
        "outputs"
    ]


def check_model(
    model: Model,
    batch: Batch,
    state: object = None,
    max_entries: int | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, float]:
    """Check a task model's gradients of the training loss on ``batch`` (on ``max_entries`` per parameter)."""
    result = model.loss_and_grads(batch, state)
    return check_gradients(
        lambda: model.loss_and_grads(batch, state).loss, model.params, result.grads, max_entries, rng
    )


def _parts(state: object) -> tuple[np.ndarray, ...]:
    return tuple(state) if isinstance(state, tuple) else (state,)


def _like(state: object, rng: np.random.Generator) -> object:
    parts = tuple(rng.standard_normal(s.shape) for s in _parts(state))
    return parts if isinstance(state, tuple) else parts[0]


def _dot(a: object, b: object) -> float:
    return float(sum(np.sum(p * q) for p, q in zip(_parts(a), _parts(b), strict=True)))
