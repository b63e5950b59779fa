"""The built-in cells beyond their gradient check: shapes, state structure, dtypes, options, state carry-over.

(Gradients against central differences: test_gradients.py; against PyTorch: test_parity_cells.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from framework.core.config import build
from framework.core.errors import ConfigError
from framework.core.gradcheck import check_cell
from framework.core.plugins import manager
from framework.nn import cells
from framework.nn.cells import GRUConfig, LSTMConfig, make_gru, make_lstm
from framework.nn.functions import sigmoid

CELLS = ["linear", "rnn", "lstm", "gru"]
B, T, I, H = 3, 6, 4, 5  # noqa: E741 (batch, steps, inputs, hidden units, as in the math)


def make(name: str, dtype: str = "float64", options: dict | None = None, seed: int = 0):
    component = manager().registry.get("cell", name)
    config = build(component.config_class, options or {}, prefix="cell")
    return component.factory(config, I, H, np.random.default_rng(seed), np.dtype(dtype))


def parts(state) -> tuple[np.ndarray, ...]:
    return state if isinstance(state, tuple) else (state,)


def random_like(state, rng: np.random.Generator):
    filled = tuple((rng.standard_normal(s.shape) * 0.5).astype(s.dtype) for s in parts(state))
    return filled if isinstance(state, tuple) else filled[0]


def lstm_problem(rng: np.random.Generator):
    """An LSTM (forget_bias 1), inputs x, a random initial state, random gradients at the outputs and final state."""
    cell = make("lstm", options={"forget_bias": 1.0})
    x = rng.standard_normal((B, T, I))
    state = random_like(cell.zero_state(B), rng)
    return cell, x, state, rng.standard_normal((B, T, H)), random_like(state, rng)


def run(cell, x, state, d_outputs, d_state):
    h, final, cache = cell.forward(x, state)
    return h, final, cell.backward(cache, d_outputs, d_state)


def test_lstm_and_gru_are_registered():
    names = {c.name for c in manager().registry.of_kind("cell")}
    assert {"lstm", "gru"} <= names


def test_lstm_parameters_and_initialisation():
    cell = make("lstm")
    assert {k: v.shape for k, v in cell.params.items()} == {"Wx": (I, 4 * H), "Wh": (H, 4 * H), "b": (4 * H,)}
    bound = 1 / np.sqrt(H)  # the default scheme: U(-1/sqrt(H), 1/sqrt(H))
    assert all(np.abs(cell.params[k]).max() <= bound for k in ("Wx", "Wh"))
    assert np.all(cell.params["b"] == 0)
    assert set(make("lstm", options={"bias": False}).params) == {"Wx", "Wh"}


def test_lstm_forget_bias_sets_the_f_block_only():
    b = make("lstm", options={"forget_bias": 1.0}).params["b"]
    i, f, g, o = b.reshape(4, H)  # gate order i, f, g, o
    assert np.all(f == 1.0)
    assert np.all(i == 0) and np.all(g == 0) and np.all(o == 0)


def test_lstm_forget_bias_without_bias_is_rejected():
    with pytest.raises(ConfigError, match=r"cell\.forget_bias=1\.0"):
        build(LSTMConfig, {"bias": False, "forget_bias": 1.0}, prefix="cell")


def test_gru_parameters():
    cell = make("gru")
    shapes = {k: v.shape for k, v in cell.params.items()}
    assert shapes == {"Wx": (I, 3 * H), "Wh": (H, 3 * H), "bx": (3 * H,), "bh": (3 * H,)}
    assert set(make("gru", options={"bias": False}).params) == {"Wx", "Wh"}


def test_the_init_scheme_applies_to_every_weight():
    cell = make("gru", options={"init": {"scheme": "uniform", "low": 0.5, "high": 0.6}})
    assert all(cell.params[k].min() >= 0.5 and cell.params[k].max() <= 0.6 for k in ("Wx", "Wh"))


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_shapes_and_dtypes_are_kept(name, dtype):
    """Outputs, final state and every gradient in the cell's dtype: no silent upcast of float32."""
    rng = np.random.default_rng(1)
    cell = make(name, dtype)
    zero = cell.zero_state(B)
    assert all(s.shape == (B, H) and s.dtype == dtype for s in parts(zero))
    assert isinstance(zero, tuple) == (name == "lstm")
    x = rng.standard_normal((B, T, I)).astype(dtype)
    d_out = rng.standard_normal((B, T, H)).astype(dtype)
    state = random_like(zero, rng)
    h, final, grads = run(cell, x, state, d_out, random_like(zero, rng))
    assert h.shape == (B, T, H) and h.dtype == dtype
    assert isinstance(final, tuple) == isinstance(zero, tuple)
    assert all(s.shape == (B, H) and s.dtype == dtype for s in parts(final))
    np.testing.assert_array_equal(parts(final)[0], h[:, -1])  # the final h is the last output
    dx = grads.input_grads()
    assert dx.shape == x.shape and dx.dtype == dtype
    assert grads.states.shape == (B, T, H) and grads.states.dtype == dtype
    assert isinstance(grads.state, tuple) == isinstance(zero, tuple)
    assert all(g.shape == (B, H) and g.dtype == dtype for g in parts(grads.state))
    for k, p in cell.params.items():
        assert grads.params[k].shape == p.shape and grads.params[k].dtype == dtype, k
    if name == "lstm":
        assert grads.cell_states.shape == (B, T, H) and grads.cell_states.dtype == dtype
    _, _, no_d_state = run(cell, x, state, d_out, None)  # None: no gradient on the final state
    assert all(g.dtype == dtype for g in parts(no_d_state.state))


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_float32_agrees_with_float64(name):
    rng = np.random.default_rng(2)
    cells = {dtype: make(name, dtype) for dtype in ("float32", "float64")}
    x = rng.standard_normal((B, T, I))
    d_out = rng.standard_normal((B, T, H))
    results = {
        dtype: run(cell, x.astype(dtype), cell.zero_state(B), d_out.astype(dtype), None)
        for dtype, cell in cells.items()
    }
    (h32, _, g32), (h64, _, g64) = results["float32"], results["float64"]
    np.testing.assert_allclose(h32, h64, rtol=1e-4, atol=1e-5)
    for k in g64.params:
        np.testing.assert_allclose(g32.params[k], g64.params[k], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", CELLS)
def test_two_halves_with_the_state_carried_equal_one_pass(name):
    """Forward carries the final state; backward carries d(initial state) into the earlier half's d_state."""
    rng = np.random.default_rng(3)
    cell = make(name)
    x = rng.standard_normal((B, T, I))
    d_out = rng.standard_normal((B, T, H))
    state = random_like(cell.zero_state(B), rng)
    d_final = random_like(state, rng)
    h, final, whole = run(cell, x, state, d_out, d_final)
    k = T // 2
    h1, mid, cache1 = cell.forward(x[:, :k], state)
    h2, final2, second = run(cell, x[:, k:], mid, d_out[:, k:], d_final)
    first = cell.backward(cache1, d_out[:, :k], second.state)
    np.testing.assert_allclose(np.concatenate([h1, h2], axis=1), h, rtol=1e-12)
    for a, b in zip(parts(final2), parts(final), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    for key in cell.params:
        np.testing.assert_allclose(first.params[key] + second.params[key], whole.params[key], rtol=1e-10)
    dx = np.concatenate([first.input_grads(), second.input_grads()], axis=1)
    np.testing.assert_allclose(dx, whole.input_grads(), rtol=1e-10)
    np.testing.assert_allclose(np.concatenate([first.states, second.states], axis=1), whole.states, rtol=1e-10)
    for a, b in zip(parts(first.state), parts(whole.state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10)
    if name == "lstm":
        both = np.concatenate([first.cell_states, second.cell_states], axis=1)
        np.testing.assert_allclose(both, whole.cell_states, rtol=1e-10)


def test_lstm_cell_state_gradient_is_the_total_gradient_at_c():
    """dL/dc_T = R_c + dL/dh_T * o_T * (1 - tanh^2 c_T), and dL/dc_0 = dL/dc_1 * f_1."""
    rng = np.random.default_rng(4)
    cell, x, state, d_out, d_final = lstm_problem(rng)
    _, (h_T, c_T), grads = run(cell, x, state, d_out, d_final)
    assert grads.cell_states is not None
    o_T = h_T / np.tanh(c_T)
    expected = d_final[1] + grads.states[:, -1] * o_T * (1 - np.tanh(c_T) ** 2)
    np.testing.assert_allclose(grads.cell_states[:, -1], expected, rtol=1e-10)
    # f_1 from the first step alone: c_1 = f_1 c_0 + i_1 g_1, so dc_0 / dc_1 = f_1
    _, (_, c1_a), _ = cell.forward(x[:, :1], state)
    _, (_, c1_b), _ = cell.forward(x[:, :1], (state[0], state[1] + 1.0))
    np.testing.assert_allclose(grads.state[1], grads.cell_states[:, 0] * (c1_b - c1_a), rtol=1e-10)


@pytest.mark.parametrize("make_cell, config", [(make_lstm, LSTMConfig(bias=False)), (make_gru, GRUConfig(bias=False))])
def test_gradients_without_bias(make_cell, config):
    rng = np.random.default_rng(5)
    cell = make_cell(config, 3, 4, rng, np.dtype("float64"))
    x = rng.standard_normal((2, 5, 3))
    errors = check_cell(cell, x, random_like(cell.zero_state(2), rng), rng)
    assert max(errors.values()) < 1e-6, errors


def test_lstm_gradients_with_forget_bias():
    rng = np.random.default_rng(6)
    cell = make_lstm(LSTMConfig(forget_bias=1.0), 3, 4, rng, np.dtype("float64"))
    cell.params["b"] += rng.uniform(-0.5, 0.5, cell.params["b"].shape)
    x = rng.standard_normal((2, 5, 3))
    errors = check_cell(cell, x, random_like(cell.zero_state(2), rng), rng)
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("span_bytes", [1, 2 * 8 * 5 * B * H])  # spans of 1 step, and of 2 steps (float64)
def test_lstm_backward_in_spans_of_steps_equals_one_span(monkeypatch, span_bytes):
    """A long sequence's gate factors are computed a span of steps at a time (cells.FACTOR_BYTES): the gradients
    are those of one span over every step, and they pass the gradient check."""
    rng = np.random.default_rng(7)
    cell, x, state, d_out, d_final = lstm_problem(rng)
    _, _, whole = run(cell, x, state, d_out, d_final)
    monkeypatch.setattr(cells, "FACTOR_BYTES", span_bytes)
    _, _, spans = run(cell, x, state, d_out, d_final)
    for key, value in whole.params.items():
        np.testing.assert_array_equal(spans.params[key], value, err_msg=key)
    np.testing.assert_array_equal(spans.states, whole.states)
    np.testing.assert_array_equal(spans.cell_states, whole.cell_states)
    for a, b in zip(spans.state, whole.state, strict=True):
        np.testing.assert_array_equal(a, b)
    errors = check_cell(cell, x, state, rng)
    assert max(errors.values()) < 1e-6, errors


def by_the_equations(name: str, cell, x: np.ndarray, state) -> dict[str, np.ndarray]:
    """h_t (and c_t, the gates) of every step, computed one step at a time from the module's equations: (B, T, H)."""
    p, steps = cell.params, {}
    h, c = (state, None) if name != "lstm" else state
    for t in range(x.shape[1]):
        x_t = x[:, t]
        if name in ("linear", "rnn"):
            h = x_t @ p["Wx"] + h @ p["Wh"] + p.get("b", 0.0)
            h = h if name == "linear" else np.tanh(h)
            values = {"h": h}
        elif name == "lstm":
            a = x_t @ p["Wx"] + h @ p["Wh"] + p["b"]
            i, f, g, o = (a[:, k * H : (k + 1) * H] for k in range(4))
            i, f, o, g = sigmoid(i), sigmoid(f), sigmoid(o), np.tanh(g)
            c = f * c + i * g
            h = o * np.tanh(c)
            values = {"h": h, "c": c, "i": i, "f": f, "o": o}
        else:
            u, v = x_t @ p["Wx"] + p["bx"], h @ p["Wh"] + p["bh"]
            r, z = sigmoid(u[:, :H] + v[:, :H]), sigmoid(u[:, H : 2 * H] + v[:, H : 2 * H])
            n = np.tanh(u[:, 2 * H :] + r * v[:, 2 * H :])
            h = (1 - z) * n + z * h
            values = {"h": h, "r": r, "z": z}
        for key, value in values.items():
            steps.setdefault(key, []).append(value)
    return {key: np.stack(values, axis=1) for key, values in steps.items()}


@pytest.mark.parametrize("name", CELLS)
def test_every_cell_reports_its_states_and_gates_at_every_step(name):
    """states_and_gates(cache) of a forward pass: h_t (the outputs), the LSTM's c_t, i, f, o and the GRU's r, z."""
    rng = np.random.default_rng(4)
    cell = make(name, options={"bias": True} if name == "gru" else None)
    x = rng.standard_normal((B, T, I))
    state = random_like(cell.zero_state(B), rng)
    outputs, _, cache = cell.forward(x, state)
    reported = cell.states_and_gates(cache)
    expected = by_the_equations(name, cell, x, state)
    assert list(reported) == list(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(reported[key], value, rtol=1e-12, atol=1e-14, err_msg=key)
    np.testing.assert_array_equal(reported["h"], outputs)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_sigmoid_cell_folds_the_halving_into_its_weights_to_the_last_bit(dtype, monkeypatch):
    """h_t = sigmoid(z_t) with the weights halved and sigmoid_of_half equals the same cell computing z_t and then
    functions.sigmoid(z_t) (which halves z_t itself), bit for bit: forward states and every gradient."""
    from framework.nn.functions import sigmoid

    rng = np.random.default_rng(1)
    x, h_0 = rng.standard_normal((B, T, I)).astype(dtype), rng.standard_normal((B, H)).astype(dtype)
    d_outputs, d_state = rng.standard_normal((B, T, H)).astype(dtype), rng.standard_normal((B, H)).astype(dtype)
    folded = run(make("rnn", dtype, {"activation": "sigmoid"}), x, h_0, d_outputs, d_state)
    written = cells.Activation(1.0, lambda z, out: sigmoid(z, out=out), cells.ACTIVATIONS["sigmoid"].derivative)
    monkeypatch.setitem(cells.ACTIVATIONS, "sigmoid", written)
    plain = run(make("rnn", dtype, {"activation": "sigmoid"}), x, h_0, d_outputs, d_state)
    assert np.array_equal(folded[0], plain[0]) and np.array_equal(folded[1], plain[1])
    for name, grad in plain[2].params.items():
        assert np.array_equal(folded[2].params[name], grad), name
    assert np.array_equal(folded[2].state, plain[2].state)
