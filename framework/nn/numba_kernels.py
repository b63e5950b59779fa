"""The Elman cell's two time loops compiled with numba: ``cell.kernel=numba`` (``pip install -e ".[fast]"``).

The numpy loops of :class:`framework.nn.cells.ElmanCell` are the reference; these compute the same
equations, element by element, in one call per sequence instead of three numpy calls per step:

    forward, t = 1..T:    s z_t = s (x_t Wx + b) + h_{t-1} (s Wh)      h_t = f(s z_t)
    backward, t = T..1:   dh_t = dL/dh_t + dz_{t+1} Wh^T               dz_t = dh_t * f'(h_t)

At the tutorials' sizes (a batch of 1-5 sequences, 4-50 hidden units) numpy's per-call cost is most of
a step and these loops are 3-5x faster; from a few thousand units per step (batch x hidden) numpy's
vectorized tanh and BLAS win (docs/performance.md). They agree with the numpy loops to float rounding,
not to the bit: the sums run in another order and tanh is the C library's (tests/test_numba_kernels.py).
Compiled on first use and cached beside this file (numba's ``cache=True``).
"""

from __future__ import annotations

import numba
import numpy as np

# f's of framework.nn.cells.ACTIVATIONS, by number, applied to the scaled pre-activation s z
IDENTITY, TANH, SIGMOID_OF_HALF, RELU = range(4)
ACTIVATION_CODES = {"identity": IDENTITY, "tanh": TANH, "sigmoid": SIGMOID_OF_HALF, "relu": RELU}


@numba.njit(cache=True)
def activate(u: float, code: int) -> float:
    """f(z) from u = s z: u, tanh(u), (1 + tanh(u)) / 2 (the sigmoid of z = 2u), or max(u, 0) (NaN stays NaN)."""
    if code == TANH:
        return np.tanh(u)
    if code == SIGMOID_OF_HALF:
        return (np.tanh(u) + 1.0) * 0.5
    if code == RELU:
        return 0.0 if u < 0.0 else u
    return u


@numba.njit(cache=True)
def elman_forward_steps(h: np.ndarray, Wh: np.ndarray, code: int) -> None:
    """h_t = f(h[t] + h_{t-1} Wh) in place for t = 1..T: h (T + 1, B, H) with h[0] = h_0 and h[t] = s (x_t Wx + b)
    on entry; Wh (H, H) is s Wh."""
    batch, hidden = h.shape[1], h.shape[2]
    recurrent = np.empty(hidden, dtype=h.dtype)  # h_{t-1} Wh of one sequence
    for t in range(1, h.shape[0]):
        for b in range(batch):
            recurrent[:] = 0.0
            for k in range(hidden):
                h_k = h[t - 1, b, k]
                for j in range(hidden):
                    recurrent[j] += h_k * Wh[k, j]
            for j in range(hidden):
                h[t, b, j] = activate(h[t, b, j] + recurrent[j], code)


@numba.njit(cache=True)
def elman_backward_steps(
    dz: np.ndarray, d_out: np.ndarray, dh_steps: np.ndarray, dh_next: np.ndarray, Wh_T: np.ndarray
) -> np.ndarray:
    """dh_t = d_out[t] + dz_{t+1} Wh^T into dh_steps[t] and dz_t = dh_t * dz[t] in place, for t = T..1.

    Time-major (T, B, H); dz holds f'(z_t) on entry, dh_next the gradient reaching h_T from beyond the
    sequence. Returns dh_0 = dz_1 Wh^T.
    """
    batch, hidden = dz.shape[1], dz.shape[2]
    back = dh_next.copy()  # dz_{t+1} Wh^T, and dL/dh_T from beyond the sequence before the first step
    for t in range(dz.shape[0] - 1, -1, -1):
        for b in range(batch):
            for j in range(hidden):
                dh = d_out[t, b, j] + back[b, j]
                dh_steps[t, b, j] = dh
                dz[t, b, j] *= dh
            back[b, :] = 0.0
            for j in range(hidden):
                dz_j = dz[t, b, j]
                for k in range(hidden):
                    back[b, k] += dz_j * Wh_T[j, k]
    return back
