"""Recurrent cells with explicit backpropagation through time.

Elman cell (``rnn``), and its special case the linear cell (``linear``) of the
counting tutorial:

    z_t = x_t Wx + h_{t-1} Wh + b          h_t = f(z_t)

Backward, from the gradient dh_t arriving at each output and the gradient
flowing back from step t+1:

    dh_t  = dL/dh_t (outputs) + dz_{t+1} Wh^T      dz_t = dh_t * f'(h_t)
    dWx   = sum_t x_t^T dz_t     dWh = sum_t h_{t-1}^T dz_t     db = sum_t dz_t
    dx_t  = dz_t Wx^T            dh_0 = dz_1 Wh^T

LSTM (``lstm``), state s_t = (h_t, c_t), the four gates fused in one matrix
in PyTorch's order i, f, g, o (a_t = [a_i, a_f, a_g, a_o], each (B, H)):

    a_t = x_t Wx + h_{t-1} Wh + b
    i = sigmoid(a_i)   f = sigmoid(a_f)   g = tanh(a_g)   o = sigmoid(a_o)
    c_t = f * c_{t-1} + i * g            h_t = o * tanh(c_t)

Backward (dh_t and dc_t are the total gradients arriving at h_t and c_t):

    dh_t  = dL/dh_t (outputs) + da_{t+1} Wh^T
    dc_t  = dc_{t+1} * f_{t+1} + dh_t * o * (1 - tanh^2(c_t))
    da_i  = dc_t * g * i (1 - i)        da_f = dc_t * c_{t-1} * f (1 - f)
    da_g  = dc_t * i * (1 - g^2)        da_o = dh_t * tanh(c_t) * o (1 - o)
    dWx   = sum_t x_t^T da_t   dWh = sum_t h_{t-1}^T da_t   db = sum_t da_t   dx_t = da_t Wx^T

GRU (``gru``), PyTorch's convention, gates in the order r, z, n; the hidden
projection keeps its own bias because r multiplies it inside n:

    u_t = x_t Wx + bx = [u_r, u_z, u_n]       v_t = h_{t-1} Wh + bh = [v_r, v_z, v_n]
    r = sigmoid(u_r + v_r)   z = sigmoid(u_z + v_z)   n = tanh(u_n + r * v_n)
    h_t = (1 - z) * n + z * h_{t-1}

Backward:

    dh_t  = dL/dh_t (outputs) + dh_{t+1} * z_{t+1} + dv_{t+1} Wh^T
    du_n  = dh_t * (1 - z) * (1 - n^2)     dv_n = du_n * r
    du_r  = dv_r = du_n * v_n * r (1 - r)  du_z = dv_z = dh_t * (h_{t-1} - n) * z (1 - z)
    dWx   = sum_t x_t^T du_t   dbx = sum_t du_t   dWh = sum_t h_{t-1}^T dv_t   dbh = sum_t dv_t
    dx_t  = du_t Wx^T
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from framework.core.config import param
from framework.core.errors import ConfigError
from framework.core.hookspecs import hookimpl
from framework.core.protocols import CellGradients
from framework.nn.functions import column_sums, sigmoid
from framework.nn.init import InitConfig, init_weights


def sigmoid_of_half(u: np.ndarray, out: np.ndarray) -> None:
    """h = sigmoid(z) = (1 + tanh(u)) / 2 from u = z / 2, into ``out``: :func:`~framework.nn.functions.sigmoid`
    without its first step, the halving, which the Elman cell folds into its weights."""
    np.tanh(u, out=out)
    out += 1.0
    out *= 0.5


@dataclass(frozen=True)
class Activation:
    """h = f(z) computed from s z, s a power of two that the cell folds into its weights (exactly: z / 2 from the
    weights halved is the halved z, to the last bit), and f's derivative in terms of h."""

    scale: float  # s
    of_scaled: Callable[[np.ndarray, np.ndarray], object]  # (s z, out) -> f(z) into out
    derivative: Callable[[np.ndarray], np.ndarray]  # h -> f'(z)


ACTIVATIONS: dict[str, Activation] = {
    "identity": Activation(1.0, lambda z, out: np.copyto(out, z), np.ones_like),
    "tanh": Activation(1.0, lambda z, out: np.tanh(z, out=out), lambda h: 1.0 - h * h),
    "sigmoid": Activation(0.5, sigmoid_of_half, lambda h: h * (1.0 - h)),
    "relu": Activation(1.0, lambda z, out: np.maximum(z, 0.0, out=out), lambda h: (h > 0).astype(h.dtype)),
}

# The cells work time-major inside: a sequence of (B, T, .) arrives and leaves batch-major, as the
# models and losses see it, while every array a cell keeps per step is (T, B, .), so that step t is
# one contiguous block for its matmul and element-wise work (a strided (B, .) slice of a (B, T, .)
# array costs up to three times as much per element-wise operation, measured at B=32, 4H=1024).
# The per-step gradients dL/dh_k (and dL/dc_k) leave as (B, T, H) views of their time-major arrays.
# Each step's recurrent product is np.dot, not np.matmul or @: for 2-D operands it skips the ufunc
# dispatch, 0.35 us of a 2.5 us product at 32 x 50 @ 50 x 50, and the recurrences make one per step.


KERNELS = ("numpy", "numba")  # the Elman cells' time loops: numpy's, or framework/nn/numba_kernels.py

FACTOR_BYTES = 1024 * 1024  # the LSTM's backward precomputes its gate factors in spans of about this size (L2)


def swap_time_and_batch(a: np.ndarray) -> np.ndarray:
    """(B, T, ...) <-> (T, B, ...), contiguous: batch-major in, time-major out, and back."""
    return np.ascontiguousarray(a.swapaxes(0, 1))


def inputs_with_ones(x: np.ndarray, bias: bool) -> np.ndarray:
    """x time-major, (B, T, I) -> (T, B, I), with a last column of ones when ``bias``: (T, B, I + 1).

    The bias then folds into the input projection, [x 1] [Wx; b] = x Wx + b, and its
    gradient into the input weights' gradient, [x 1]^T dz = [dWx; db]: one matmul each
    instead of a matmul and a pass over every pre-activation (0.9 ms of a large LSTM's
    step, 6 µs of charlm's at batch 32, in float32).
    """
    if not bias:
        return swap_time_and_batch(x)
    held = np.empty((x.shape[1], x.shape[0], x.shape[2] + 1), dtype=x.dtype)
    held[..., :-1] = x.swapaxes(0, 1)
    held[..., -1] = 1.0
    return held


def input_weights(Wx: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """[Wx; b], (I + 1, G): the input weights for :func:`inputs_with_ones` (Wx itself without a bias)."""
    return Wx if b is None else np.concatenate([Wx, b[None]])


def input_weight_grads(inputs: np.ndarray, d_pre: np.ndarray, Wx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(dWx, db) from the one product [x 1]^T dz = [dWx; db] (inputs from :func:`inputs_with_ones`; db None without)."""
    grads, rows = weight_grad(inputs, d_pre), Wx.shape[0]
    return grads[:rows], (grads[rows] if grads.shape[0] > rows else None)


def project(inputs: np.ndarray, W: np.ndarray, out: np.ndarray) -> None:
    """out = inputs W for every step in one matmul: (T, B, I) -> out (T, B, G)."""
    np.matmul(inputs.reshape(-1, inputs.shape[-1]), W, out=out.reshape(-1, W.shape[1]))


def recurrent_weights(Wh: np.ndarray) -> np.ndarray:
    """Wh^T, contiguous: the recurrent weights of both passes over a sequence, from one copy.

    The backward's (B, G H) @ (G H, H) product of every step takes Wh^T itself; the
    forward's (B, H) @ (H, G H) product takes its transpose, a view: Wh in Fortran
    order, up to 25% faster than Wh (float64, H=256). One transposing copy per
    sequence, not one per pass (0.54 ms at 256 x 1024).
    """
    return np.ascontiguousarray(Wh.T)


def per_row(vector: np.ndarray, batch: int) -> np.ndarray:
    """The vector repeated for every row of a batch, (G,) -> (B, G), contiguous.

    An element-wise operation with a same-shape operand is about twice as fast as
    one broadcasting a vector (3.9 against 7.9 µs for a multiply and an add at
    32 x 1024 in float32), and a cell applies these vectors at every step.
    """
    return np.ascontiguousarray(np.broadcast_to(vector, (batch, vector.shape[0])))


def with_initial(state: np.ndarray, steps: int) -> np.ndarray:
    """An empty (T + 1, B, H) array whose [0] is ``state``: [t] will hold s_t, [:-1] the previous states."""
    held = np.empty((steps + 1, *state.shape), dtype=state.dtype)
    held[0] = state
    return held


def weight_grad(inputs: np.ndarray, d_out: np.ndarray) -> np.ndarray:
    """dW = sum over steps and batch of inputs^T d_out: (T, B, I), (T, B, G) -> (I, G)."""
    return inputs.reshape(-1, inputs.shape[-1]).T @ d_out.reshape(-1, d_out.shape[-1])


def input_grads(d_pre: np.ndarray, W: np.ndarray) -> Callable[[], np.ndarray]:
    """dL/dx = d_pre W^T, batch-major (B, T, I), computed when asked (a model whose inputs are data never asks)."""
    return lambda: swap_time_and_batch(d_pre @ W.T)


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
        kernel: str = "numpy",
    ) -> None:
        self.hidden_size = hidden_size
        self.activation = ACTIVATIONS[activation]
        self.compiled = None  # numpy's loops; or framework/nn/numba_kernels.py and f's number there
        if kernel == "numba":
            from framework.nn import numba_kernels

            self.compiled, self.activation_code = numba_kernels, numba_kernels.ACTIVATION_CODES[activation]
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
        s, f_of_scaled = self.activation.scale, self.activation.of_scaled
        Wh_T = recurrent_weights(self.params["Wh"])
        W_in = input_weights(self.params["Wx"], self.params.get("b"))
        x_steps = inputs_with_ones(x, "b" in self.params)
        h = with_initial(state, x.shape[1])  # h[t] = h_t, h[0] = h_0
        project(x_steps, W_in if s == 1 else W_in * s, out=h[1:])  # s z_t, activated below
        if self.compiled:  # the same loop, compiled (framework/nn/numba_kernels.py), on s Wh in C order
            Wh = self.params["Wh"] if s == 1 else self.params["Wh"] * s
            self.compiled.elman_forward_steps(h, Wh, self.activation_code)
        else:
            Wh = (Wh_T if s == 1 else Wh_T * s).T  # s Wh: every product gives s z_t directly
            recurrent = np.empty_like(state)
            for t in range(1, h.shape[0]):
                z_t = h[t]
                z_t += np.dot(h[t - 1], Wh, out=recurrent)
                f_of_scaled(z_t, z_t)
        return swap_time_and_batch(h[1:]), h[-1], (x_steps, h, Wh_T)

    def states_and_gates(self, cache: tuple) -> dict[str, np.ndarray]:
        """h_t = f(z_t) of every step of the forward pass that made ``cache``: {"h": (B, T, H)}."""
        return {"h": swap_time_and_batch(cache[1][1:])}

    def backward(self, cache: tuple, d_outputs: np.ndarray, d_state: np.ndarray | None) -> CellGradients:
        """BPTT: the gradients of Wx, Wh, b, the inputs and h_0 (equations in the module docstring)."""
        x_steps, h, Wh_T = cache
        d_out = swap_time_and_batch(d_outputs)
        dz = self.activation.derivative(h[1:])  # f'(z_t) of every step at once, times dh_t in place below
        dh_steps = np.empty_like(dz)
        dh_next = np.zeros_like(h[0]) if d_state is None else d_state
        if self.compiled:  # the same loop, compiled (framework/nn/numba_kernels.py)
            dh_next = self.compiled.elman_backward_steps(dz, d_out, dh_steps, dh_next, Wh_T)
        else:
            back = np.empty_like(h[0])  # dz_t Wh^T, read by the next step before it is overwritten
            for t in range(dz.shape[0] - 1, -1, -1):
                dh, dz_t = dh_steps[t], dz[t]
                np.add(d_out[t], dh_next, out=dh)  # total dL/dh_t
                dz_t *= dh
                dh_next = np.dot(dz_t, Wh_T, out=back)
        dWx, db = input_weight_grads(x_steps, dz, self.params["Wx"])
        grads = {"Wx": dWx, "Wh": weight_grad(h[:-1], dz)}
        if db is not None:
            grads["b"] = db
        return CellGradients(
            params=grads, inputs=input_grads(dz, self.params["Wx"]), state=dh_next, states=dh_steps.swapaxes(0, 1)
        )


class LSTMCell:
    """c_t = f * c_{t-1} + i * g,  h_t = o * tanh(c_t); the state is the pair (h, c)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool,
        forget_bias: float,
        init: InitConfig,
        rng: np.random.Generator,
        dtype: np.dtype,
    ) -> None:
        H = self.hidden_size = hidden_size
        self.params = {
            "Wx": init_weights((input_size, 4 * H), init, H, rng, dtype),
            "Wh": init_weights((H, 4 * H), init, H, rng, dtype),
        }
        if bias:
            b = self.params["b"] = np.zeros(4 * H, dtype=dtype)
            b[H : 2 * H] = forget_bias  # the f block
        # sigmoid(a) = (1 + tanh(a / 2)) / 2 for i, f, o and tanh(a) for g: one tanh for all four gates,
        # between a scaling by (1/2, 1/2, 1, 1/2) and an affine map with these halves and offsets
        self.halves = np.full(4 * H, 0.5, dtype=dtype)
        self.halves[2 * H : 3 * H] = 1.0
        self.offsets = np.full(4 * H, 0.5, dtype=dtype)
        self.offsets[2 * H : 3 * H] = 0.0

    def zero_state(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """s_0 = (h_0, c_0) = (0, 0): two (B, H) arrays."""
        shape, dtype = (batch_size, self.hidden_size), self.params["Wh"].dtype
        return np.zeros(shape, dtype=dtype), np.zeros(shape, dtype=dtype)

    def forward(
        self, x: np.ndarray, state: tuple[np.ndarray, np.ndarray]
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], tuple]:
        """h_t for t = 1..T from x (B, T, I) and (h_0, c_0) = ``state``; the final state is (h_T, c_T)."""
        halves = self.halves
        # the weights scaled by the halves (exactly: a power of two) give a_t scaled for the tanh directly
        Wh_T = recurrent_weights(self.params["Wh"])
        Wh = (Wh_T * halves[:, None]).T
        H, steps = self.hidden_size, x.shape[1]
        x_steps = inputs_with_ones(x, "b" in self.params)
        h, c = with_initial(state[0], steps), with_initial(state[1], steps)  # [t] = h_t, c_t; [0] = h_0, c_0
        gates = np.empty((steps, x.shape[0], 4 * H), dtype=Wh.dtype)  # a_t, activated in place below
        project(x_steps, input_weights(self.params["Wx"], self.params.get("b")) * halves, out=gates)
        row_halves, row_offsets = per_row(halves, x.shape[0]), per_row(self.offsets, x.shape[0])
        tanh_c = np.empty_like(h[1:])
        recurrent, ig = np.empty((x.shape[0], 4 * H), dtype=Wh.dtype), np.empty_like(state[1])
        for t in range(steps):
            a = gates[t]
            a += np.dot(h[t], Wh, out=recurrent)
            np.tanh(a, out=a)
            a *= row_halves
            a += row_offsets  # i, f, o = sigmoid(a_i, a_f, a_o), g = tanh(a_g)
            i, f, g, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
            c_t = np.multiply(f, c[t], out=c[t + 1])
            c_t += np.multiply(i, g, out=ig)
            np.multiply(o, np.tanh(c_t, out=tanh_c[t]), out=h[t + 1])
        return swap_time_and_batch(h[1:]), (h[-1], c[-1]), (x_steps, gates, h, c, tanh_c, Wh_T)

    def states_and_gates(self, cache: tuple) -> dict[str, np.ndarray]:
        """h_t, c_t and the gates i = sigmoid(a_i), f = sigmoid(a_f), o = sigmoid(a_o) of every step of the forward
        pass that made ``cache``: name -> (B, T, H)."""
        _, gates, h, c, _, _ = cache
        H = self.hidden_size
        i, f, o = (gates[..., k * H : (k + 1) * H] for k in (0, 1, 3))
        return {name: swap_time_and_batch(v) for name, v in {"h": h[1:], "c": c[1:], "i": i, "f": f, "o": o}.items()}

    def backward(
        self, cache: tuple, d_outputs: np.ndarray, d_state: tuple[np.ndarray, np.ndarray] | None
    ) -> CellGradients:
        """BPTT: the gradients of Wx, Wh, b, the inputs, (h_0, c_0), and dL/dc_k (equations in the module docstring)."""
        x_steps, gates, h, c, tanh_c, Wh_T = cache
        steps, batch, H = tanh_c.shape
        d_out = swap_time_and_batch(d_outputs)
        da = np.empty_like(gates)  # dL/da_t, the gate pre-activations
        da_blocks = da.reshape(steps, batch, 4, H)
        dh_steps, dc_steps = np.empty_like(tanh_c), np.empty_like(tanh_c)
        dh_next, dc_next = (np.zeros_like(h[0]), np.zeros_like(c[0])) if d_state is None else d_state
        back = np.empty_like(h[0])  # da_t Wh^T, read by the next step before it is overwritten
        # the factors of the gate gradients that do not depend on dc_t or dh_t, computed in place for a span
        # of steps at once: all of them for short sequences (few numpy calls), a few at a time for large ones
        # (in cache); each factor contiguous, those of da_i, da_f, da_g side by side for one product per step
        span = min(steps, max(1, FACTOR_BYTES // (5 * batch * H * gates.itemsize)))
        factors = np.empty((5, span, batch, H), dtype=gates.dtype)
        for end in range(steps, 0, -span):
            first = max(0, end - span)
            i, f, g, o = (gates[first:end, :, k * H : (k + 1) * H] for k in range(4))
            tanh_span = tanh_c[first:end]
            by_dc, (i_by_dc, f_by_dc, g_by_dc, o_by_dh, dc_by_dh) = factors[:3], factors[:, : end - first]
            np.subtract(1.0, i, out=i_by_dc)
            i_by_dc *= i
            i_by_dc *= g  # g i (1 - i)
            np.subtract(1.0, f, out=f_by_dc)
            f_by_dc *= f
            f_by_dc *= c[first:end]  # c_{t-1} f (1 - f)
            np.multiply(g, g, out=g_by_dc)
            np.subtract(1.0, g_by_dc, out=g_by_dc)
            g_by_dc *= i  # i (1 - g^2)
            np.subtract(1.0, o, out=o_by_dh)
            o_by_dh *= o
            o_by_dh *= tanh_span  # tanh(c_t) o (1 - o)
            np.multiply(tanh_span, tanh_span, out=dc_by_dh)
            np.subtract(1.0, dc_by_dh, out=dc_by_dh)
            dc_by_dh *= o  # o (1 - tanh^2(c_t))
            for t in range(end - 1, first - 1, -1):
                k = t - first
                dh, dc = dh_steps[t], dc_steps[t]
                np.add(d_out[t], dh_next, out=dh)
                np.multiply(dh, dc_by_dh[k], out=dc)
                dc += dc_next
                np.multiply(dc, by_dc[:, k], out=da_blocks[t].transpose(1, 0, 2)[:3])  # da_i, da_f, da_g
                np.multiply(dh, o_by_dh[k], out=da_blocks[t, :, 3])  # da_o
                dc_next = dc * f[k]
                dh_next = np.dot(da[t], Wh_T, out=back)
        dWx, db = input_weight_grads(x_steps, da, self.params["Wx"])
        grads = {"Wx": dWx, "Wh": weight_grad(h[:-1], da)}
        if db is not None:
            grads["b"] = db
        return CellGradients(
            params=grads,
            inputs=input_grads(da, self.params["Wx"]),
            state=(dh_next, dc_next),
            states=dh_steps.swapaxes(0, 1),
            cell_states=dc_steps.swapaxes(0, 1),
        )


class GRUCell:
    """h_t = (1 - z) * n + z * h_{t-1} with reset gate r, update gate z, candidate n (PyTorch's convention)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool,
        init: InitConfig,
        rng: np.random.Generator,
        dtype: np.dtype,
    ) -> None:
        H = self.hidden_size = hidden_size
        self.params = {
            "Wx": init_weights((input_size, 3 * H), init, H, rng, dtype),
            "Wh": init_weights((H, 3 * H), init, H, rng, dtype),
        }
        if bias:
            self.params["bx"] = np.zeros(3 * H, dtype=dtype)
            self.params["bh"] = np.zeros(3 * H, dtype=dtype)

    def zero_state(self, batch_size: int) -> np.ndarray:
        """s_0 = 0: (B, H)."""
        return np.zeros((batch_size, self.hidden_size), dtype=self.params["Wh"].dtype)

    def forward(self, x: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
        """h_t for t = 1..T from x (B, T, I) and h_0 = ``state``."""
        Wh_T, H, steps = recurrent_weights(self.params["Wh"]), self.hidden_size, x.shape[1]
        Wh = Wh_T.T
        bh = per_row(self.params["bh"], x.shape[0]) if "bh" in self.params else None
        x_steps = inputs_with_ones(x, "bx" in self.params)
        h = with_initial(state, steps)  # h[t] = h_t, h[0] = h_0
        gates = np.empty((steps, x.shape[0], 3 * H), dtype=Wh.dtype)  # u_t, turned into r, z, n in place below
        project(x_steps, input_weights(self.params["Wx"], self.params.get("bx")), out=gates)
        v = np.empty_like(gates)  # v_t = h_{t-1} Wh + bh; r multiplies its n block
        for t in range(steps):
            a, v_t = gates[t], v[t]
            np.dot(h[t], Wh, out=v_t)
            if bh is not None:
                v_t += bh
            rz, n = a[:, : 2 * H], a[:, 2 * H :]
            rz += v_t[:, : 2 * H]
            sigmoid(rz, out=rz)  # r, z
            r, z = a[:, :H], a[:, H : 2 * H]
            n += np.multiply(r, v_t[:, 2 * H :], out=h[t + 1])
            np.tanh(n, out=n)
            h_t = np.subtract(h[t], n, out=h[t + 1])
            h_t *= z
            h_t += n
        return swap_time_and_batch(h[1:]), h[-1], (x_steps, gates, v[..., 2 * H :], h, Wh_T)

    def states_and_gates(self, cache: tuple) -> dict[str, np.ndarray]:
        """h_t and the gates r = sigmoid(u_r + v_r), z = sigmoid(u_z + v_z) of every step of the forward pass that
        made ``cache``: name -> (B, T, H)."""
        _, gates, _, h, _ = cache
        H = self.hidden_size
        return {
            "h": swap_time_and_batch(h[1:]),
            "r": swap_time_and_batch(gates[..., :H]),
            "z": swap_time_and_batch(gates[..., H : 2 * H]),
        }

    def backward(self, cache: tuple, d_outputs: np.ndarray, d_state: np.ndarray | None) -> CellGradients:
        """BPTT: the gradients of Wx, Wh, bx, bh, the inputs and h_0 (equations in the module docstring)."""
        x_steps, gates, v_n, h, Wh_T = cache
        steps, H = v_n.shape[0], self.hidden_size
        r, z, n = (gates[..., k * H : (k + 1) * H] for k in range(3))
        d_out = swap_time_and_batch(d_outputs)
        # the factors that do not depend on dh_t, for every step at once
        du_by_dh = (1.0 - z) * (1.0 - n * n)
        dvr_by_du = v_n * r * (1.0 - r)
        dvz_by_dh = (h[:-1] - n) * z * (1.0 - z)
        du = np.empty_like(gates)  # dL/du_t; its r and z blocks are dv_r and dv_z
        dv = np.empty_like(gates)  # dL/dv_t, the hidden projections
        dh_steps = np.empty_like(v_n)
        dh_next = np.zeros_like(h[0]) if d_state is None else d_state
        carry, back = np.empty_like(h[0]), np.empty_like(h[0])  # dh_t z_t + dv_t Wh^T, read by the next step first
        for t in range(steps - 1, -1, -1):
            dh, du_t, dv_t = dh_steps[t], du[t], dv[t]
            np.add(d_out[t], dh_next, out=dh)
            du_n = np.multiply(dh, du_by_dh[t], out=du_t[:, 2 * H :])
            np.multiply(du_n, dvr_by_du[t], out=du_t[:, :H])
            np.multiply(dh, dvz_by_dh[t], out=du_t[:, H : 2 * H])
            dv_t[:, : 2 * H] = du_t[:, : 2 * H]
            np.multiply(du_n, r[t], out=dv_t[:, 2 * H :])
            dh_next = np.multiply(dh, z[t], out=carry)
            dh_next += np.dot(dv_t, Wh_T, out=back)
        dWx, dbx = input_weight_grads(x_steps, du, self.params["Wx"])
        grads = {"Wx": dWx, "Wh": weight_grad(h[:-1], dv)}
        if dbx is not None:
            grads["bx"] = dbx
            grads["bh"] = column_sums(dv)
        return CellGradients(
            params=grads, inputs=input_grads(du, self.params["Wx"]), state=dh_next, states=dh_steps.swapaxes(0, 1)
        )


def kernel_param() -> str:
    """The ``kernel`` option of the Elman cells: numpy's loops, or the same loops compiled with numba."""
    return param(
        "numpy",
        choices=KERNELS,
        doc="the time loops: numpy (the reference) or numba (the same loops compiled: faster at the tutorials' "
        "sizes, slower from a few thousand units per step, see docs/performance.md; needs numba: pip install numba)",
    )


def check_kernel(kernel: str) -> None:
    """kernel=numba needs numba installed: one line saying so, before anything trains."""
    if kernel == "numba" and importlib.util.find_spec("numba") is None:
        raise ConfigError("kernel", kernel, "numpy, or numba once it is installed (pip install numba)")


@dataclass
class LinearConfig:
    """The linear cell of the counting tutorial: h_t = x_t Wx + h_{t-1} Wh."""

    kernel: str = kernel_param()
    init: InitConfig = field(default_factory=InitConfig)

    def __post_init__(self) -> None:
        check_kernel(self.kernel)


@dataclass
class RNNConfig:
    """The Elman cell: h_t = f(x_t Wx + h_{t-1} Wh + b)."""

    activation: str = param("tanh", choices=tuple(ACTIVATIONS), doc="the non-linearity f")
    bias: bool = param(True, doc="learn the bias b")
    kernel: str = kernel_param()
    init: InitConfig = field(default_factory=InitConfig)

    def __post_init__(self) -> None:
        check_kernel(self.kernel)


def make_linear(config: LinearConfig, input_size: int, hidden_size: int, rng, dtype) -> ElmanCell:
    """The linear cell of the counting tutorial, generalised to vectors:

    h_t = x_t Wx + h_{t-1} Wh
    dh_t = dL/dh_t + dh_{t+1} Wh^T    dWx = sum_t x_t^T dh_t    dWh = sum_t h_{t-1}^T dh_t
    """
    return ElmanCell(input_size, hidden_size, "identity", False, config.init, rng, dtype, config.kernel)


def make_rnn(config: RNNConfig, input_size: int, hidden_size: int, rng, dtype) -> ElmanCell:
    """The Elman cell, f = tanh, relu, sigmoid or identity:

    z_t = x_t Wx + h_{t-1} Wh + b    h_t = f(z_t)
    dh_t = dL/dh_t + dz_{t+1} Wh^T    dz_t = dh_t * f'(h_t)
    dWx = sum_t x_t^T dz_t    dWh = sum_t h_{t-1}^T dz_t    db = sum_t dz_t    dx_t = dz_t Wx^T
    """
    return ElmanCell(input_size, hidden_size, config.activation, config.bias, config.init, rng, dtype, config.kernel)


@dataclass
class LSTMConfig:
    """Long short-term memory: c_t = f*c_{t-1} + i*g, h_t = o*tanh(c_t); gates fused in the order i, f, g, o."""

    bias: bool = param(True, doc="learn the gate biases b")
    forget_bias: float = param(0.0, doc="added to the initial forget-gate bias (1.0: remember by default)")
    init: InitConfig = field(default_factory=InitConfig)

    def __post_init__(self) -> None:
        if not self.bias and self.forget_bias != 0.0:
            raise ConfigError("forget_bias", self.forget_bias, "0 when bias is false (there is no bias to add it to)")


@dataclass
class GRUConfig:
    """GRU (PyTorch's): h_t = (1-z)*n + z*h_{t-1}, n = tanh(x_t W_in + b_in + r*(h_{t-1} W_hn + b_hn))."""

    bias: bool = param(True, doc="learn the biases bx and bh")
    init: InitConfig = field(default_factory=InitConfig)


def make_lstm(config: LSTMConfig, input_size: int, hidden_size: int, rng, dtype) -> LSTMCell:
    """The LSTM cell; state (h, c), the gates fused in Wx, Wh, b in the order i, f, g, o:

    i = sigmoid(a_i)   f = sigmoid(a_f)   g = tanh(a_g)   o = sigmoid(a_o),   a = x_t Wx + h_{t-1} Wh + b
    c_t = f * c_{t-1} + i * g              h_t = o * tanh(c_t)
    b starts at 0 with forget_bias added to its f block
    """
    return LSTMCell(input_size, hidden_size, config.bias, config.forget_bias, config.init, rng, dtype)


def make_gru(config: GRUConfig, input_size: int, hidden_size: int, rng, dtype) -> GRUCell:
    """The GRU cell (PyTorch's convention); gates fused in the order r, z, n:

    r = sigmoid(x_t W_ir + b_ir + h_{t-1} W_hr + b_hr)
    z = sigmoid(x_t W_iz + b_iz + h_{t-1} W_hz + b_hz)
    n = tanh(x_t W_in + b_in + r * (h_{t-1} W_hn + b_hn))
    h_t = (1 - z) * n + z * h_{t-1}
    Wx = [W_ir W_iz W_in]   Wh = [W_hr W_hz W_hn]   bx = [b_ir b_iz b_in]   bh = [b_hr b_hz b_hn]
    """
    return GRUCell(input_size, hidden_size, config.bias, config.init, rng, dtype)


@hookimpl
def framework_register_cells(register) -> None:
    """The built-in cells."""
    register("linear", make_linear, LinearConfig)
    register("rnn", make_rnn, RNNConfig)
    register("lstm", make_lstm, LSTMConfig)
    register("gru", make_gru, GRUConfig)
