"""Recurrent cells with explicit backpropagation through time.

Elman cell (``rnn``), and its special case the linear cell (``linear``) of the
counting tutorial:

    z_t = x_t Wx + h_{t-1} Wh + b          h_t = f(z_t)

Backward, from the gradient dh_t arriving at each output and the gradient
flowing back from step t+1:

    dh_t  = dL/dh_t (outputs) + dz_{t+1} Wh^T      dz_t = dh_t * f'(h_t)
    dWx   = sum_t x_t^T dz_t     dWh = sum_t h_{t-1}^T dz_t     db = sum_t dz_t
    dx_t  = dz_t Wx^T            dh_0 = dz_1 Wh^T
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from framework.config import param
from framework.hookspecs import hookimpl
from framework.nn.init import InitConfig, init_weights
from framework.protocols import CellGradients


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + exp(-z)), without overflow


# activation f and its derivative written in terms of the output h = f(z)
ACTIVATIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "identity": (lambda z: z, np.ones_like),
    "tanh": (np.tanh, lambda h: 1.0 - h * h),
    "sigmoid": (_sigmoid, lambda h: h * (1.0 - h)),
    "relu": (lambda z: np.maximum(z, 0.0), lambda h: (h > 0).astype(h.dtype)),
}


class ElmanCell:
    """h_t = f(x_t Wx + h_{t-1} Wh + b)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        activation: str,
        bias: bool,
        init: InitConfig,
        rng: np.random.Generator,
        dtype: np.dtype,
    ) -> None:
        self.hidden_size = hidden_size
        self.f, self.f_prime = ACTIVATIONS[activation]
        self.params = {
            "Wx": init_weights((input_size, hidden_size), init, hidden_size, rng, dtype),
            "Wh": init_weights((hidden_size, hidden_size), init, hidden_size, rng, dtype),
        }
        if bias:
            self.params["b"] = np.zeros(hidden_size, dtype=dtype)

    def zero_state(self, batch_size: int) -> np.ndarray:
        """s_0 = 0: (B, H)."""
        return np.zeros((batch_size, self.hidden_size), dtype=self.params["Wh"].dtype)

    def forward(self, x: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
        """h_t for t = 1..T from x (B, T, I) and h_0 = ``state``."""
        Wx, Wh = self.params["Wx"], self.params["Wh"]
        z = x @ Wx  # input projections of every step in one matmul: (B, T, H)
        if "b" in self.params:
            z += self.params["b"]
        h = np.empty_like(z)
        h_prev = state
        for t in range(x.shape[1]):
            z_t = z[:, t]
            z_t += h_prev @ Wh
            h_prev = h[:, t] = self.f(z_t)
        return h, h_prev, (x, state, h)

    def backward(self, cache: tuple, d_outputs: np.ndarray, d_state: np.ndarray | None) -> CellGradients:
        """BPTT: the gradients of Wx, Wh, b, the inputs and h_0 (equations in the module docstring)."""
        x, h0, h = cache
        Wx, Wh = self.params["Wx"], self.params["Wh"]
        batch, steps, hidden = h.shape
        dz = np.empty_like(h)
        dh_steps = np.empty_like(h)
        dh_next = np.zeros_like(h0) if d_state is None else d_state
        for t in reversed(range(steps)):
            dh = dh_steps[:, t] = d_outputs[:, t] + dh_next  # total dL/dh_t
            dz[:, t] = dh * self.f_prime(h[:, t])
            dh_next = dz[:, t] @ Wh.T
        h_prev = np.concatenate([h0[:, None], h[:, :-1]], axis=1)
        dz_flat = dz.reshape(-1, hidden)
        grads = {
            "Wx": x.reshape(batch * steps, -1).T @ dz_flat,
            "Wh": h_prev.reshape(-1, hidden).T @ dz_flat,
        }
        if "b" in self.params:
            grads["b"] = dz_flat.sum(axis=0)
        return CellGradients(params=grads, inputs=dz @ Wx.T, state=dh_next, states=dh_steps)


@dataclass
class LinearConfig:
    """The linear cell of the counting tutorial: h_t = x_t Wx + h_{t-1} Wh."""

    init: InitConfig = field(default_factory=InitConfig)


@dataclass
class RNNConfig:
    """The Elman cell: h_t = f(x_t Wx + h_{t-1} Wh + b)."""

    activation: str = param("tanh", choices=tuple(ACTIVATIONS), doc="the non-linearity f")
    bias: bool = param(True, doc="learn the bias b")
    init: InitConfig = field(default_factory=InitConfig)


def make_linear(config: LinearConfig, input_size: int, hidden_size: int, rng, dtype) -> ElmanCell:
    """The linear cell: an Elman cell with f = identity and no bias."""
    return ElmanCell(input_size, hidden_size, "identity", False, config.init, rng, dtype)


def make_rnn(config: RNNConfig, input_size: int, hidden_size: int, rng, dtype) -> ElmanCell:
    """The Elman cell with the configured activation."""
    return ElmanCell(input_size, hidden_size, config.activation, config.bias, config.init, rng, dtype)


@hookimpl
def framework_register_cells(register) -> None:
    """The built-in cells."""
    register("linear", make_linear, LinearConfig)
    register("rnn", make_rnn, RNNConfig)
