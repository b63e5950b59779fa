"""Our numpy cells against PyTorch's: same weights, same batch, same outputs and gradients to 1e-10.

Weights map by a transpose (our Wx (I, G*H) is ``weight_ih_l0.T``, Wh is
``weight_hh_l0.T``; the gate blocks are in PyTorch's order already). The GRU's
bx and bh are ``bias_ih_l0`` and ``bias_hh_l0``; the Elman cell and the LSTM
have one bias b = ``bias_ih_l0`` with ``bias_hh_l0`` = 0.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch parity tests need torch==2.13.0 (pip install torch==2.13.0)")

from framework.nn.cells import GRUConfig, LSTMConfig, RNNConfig, make_gru, make_lstm, make_rnn  # noqa: E402

B, T, I, H = 3, 7, 4, 5  # noqa: E741 (batch, steps, inputs, hidden units, as in the math)
RTOL, ATOL = 1e-10, 1e-12
CASES = ["rnn-tanh", "rnn-relu", "lstm", "gru"]


def close(ours: np.ndarray, theirs) -> None:
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL)


def setup(case: str, bias: bool, seed: int = 0):
    """Our cell with random biases, a random batch, initial state and upstream gradients; PyTorch's twin."""
    rng = np.random.default_rng(seed)
    kind, _, activation = case.partition("-")
    f64 = np.dtype("float64")
    if kind == "rnn":
        cell = make_rnn(RNNConfig(activation=activation, bias=bias), I, H, rng, f64)
        module = torch.nn.RNN(I, H, nonlinearity=activation, bias=bias, batch_first=True, dtype=torch.float64)
    elif kind == "lstm":
        cell = make_lstm(LSTMConfig(bias=bias), I, H, rng, f64)
        module = torch.nn.LSTM(I, H, bias=bias, batch_first=True, dtype=torch.float64)
    else:
        cell = make_gru(GRUConfig(bias=bias), I, H, rng, f64)
        module = torch.nn.GRU(I, H, bias=bias, batch_first=True, dtype=torch.float64)
    for name in ("b", "bx", "bh"):  # biases start at 0; make them count
        if name in cell.params:
            cell.params[name][...] = rng.uniform(-0.5, 0.5, cell.params[name].shape)
    with torch.no_grad():
        for ours, theirs in names(cell).items():
            getattr(module, theirs).copy_(torch.from_numpy(cell.params[ours].T.copy()))
        if bias and "bh" not in cell.params:
            module.bias_hh_l0.zero_()
    x = rng.standard_normal((B, T, I))
    zero = cell.zero_state(B)
    state = random_like(zero, rng)
    upstream = rng.standard_normal((B, T, H))  # R on every output h_t
    d_state = random_like(zero, rng)  # R_s on the final state
    return cell, module, x, state, upstream, d_state


def random_like(state, rng: np.random.Generator):
    """A standard normal array, or tuple of arrays, of the state's structure."""
    if isinstance(state, tuple):
        return tuple(rng.standard_normal(s.shape) for s in state)
    return rng.standard_normal(state.shape)


def names(cell) -> dict[str, str]:
    """Our parameter name -> PyTorch's."""
    theirs = {"Wx": "weight_ih_l0", "Wh": "weight_hh_l0", "b": "bias_ih_l0", "bx": "bias_ih_l0", "bh": "bias_hh_l0"}
    return {name: theirs[name] for name in cell.params}


def as_tensor(array: np.ndarray):
    return torch.tensor(array, dtype=torch.float64, requires_grad=True)


def parity_errors(case: str, bias: bool) -> dict[str, float]:
    """Max |ours - PyTorch| of every compared array (asserted to 1e-10 by the test; reported for the record)."""
    cell, module, x, state, upstream, d_state = setup(case, bias)
    h, final, cache = cell.forward(x, state)
    grads = cell.backward(cache, upstream, d_state)

    x_t = as_tensor(x)
    parts = state if isinstance(state, tuple) else (state,)
    state_t = tuple(as_tensor(s[None]) for s in parts)  # (num_layers = 1, B, H)
    out, final_t = module(x_t, state_t if len(state_t) == 2 else state_t[0])
    final_t = final_t if isinstance(final_t, tuple) else (final_t,)
    d_parts = d_state if isinstance(d_state, tuple) else (d_state,)
    loss = (torch.from_numpy(upstream) * out).sum()
    for s, r in zip(final_t, d_parts, strict=True):
        loss = loss + (torch.from_numpy(r) * s[0]).sum()
    loss.backward()

    pairs = {"h": (h, out)}
    final_parts = final if isinstance(final, tuple) else (final,)
    for k, (ours, theirs) in enumerate(zip(final_parts, final_t, strict=True)):
        pairs[f"final[{k}]"] = (ours, theirs[0])
    for ours, theirs in names(cell).items():
        grad = getattr(module, theirs).grad
        pairs[f"d{ours}"] = (grads.params[ours], grad.T if grad.ndim == 2 else grad)
    pairs["dx"] = (grads.input_grads(), x_t.grad)
    grad_parts = grads.state if isinstance(grads.state, tuple) else (grads.state,)
    for k, (ours, theirs) in enumerate(zip(grad_parts, state_t, strict=True)):
        pairs[f"dstate[{k}]"] = (ours, theirs.grad[0])
    errors = {}
    for key, (ours, theirs) in pairs.items():
        close(ours, theirs)
        errors[key] = float(np.max(np.abs(ours - theirs.detach().numpy())))
    return errors


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_outputs_final_state_and_gradients_equal_pytorch(case, bias):
    """h, the final state, and dL/d(params, x, initial state) of L = sum(R h) + sum(R_s s_T)."""
    parity_errors(case, bias)


@pytest.mark.parametrize("case", CASES)
def test_gradients_at_every_step_equal_autograd(case):
    """``states`` (dL/dh_k) and, for the LSTM, ``cell_states`` (dL/dc_k): autograd's gradients of each step's h, c.

    PyTorch is stepped one time step at a time, keeping the gradient of every
    intermediate h_k (and c_k); the LSTM step is written out with PyTorch
    operations (PyTorch's documented equations), so that c_k is a tensor of its own.
    """
    cell, module, x, state, upstream, d_state = setup(case, bias=True, seed=1)
    h, _, cache = cell.forward(x, state)
    grads = cell.backward(cache, upstream, d_state)

    W_ih, W_hh, b_ih, b_hh = module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0
    if case != "lstm":  # PyTorch's own one-step cell, with the same weights
        kind = torch.nn.GRUCell if case == "gru" else torch.nn.RNNCell
        options = {} if case == "gru" else {"nonlinearity": case.partition("-")[2]}
        step = kind(I, H, dtype=torch.float64, **options)
        step.load_state_dict({"weight_ih": W_ih, "weight_hh": W_hh, "bias_ih": b_ih, "bias_hh": b_hh})
    parts = state if isinstance(state, tuple) else (state,)
    h_t, *c = (torch.from_numpy(s) for s in parts)
    c_t = c[0] if c else None
    hs, cs = [], []
    for t in range(T):
        x_t = torch.from_numpy(x[:, t])
        if case == "lstm":
            i, f, g, o = (x_t @ W_ih.T + b_ih + h_t @ W_hh.T + b_hh).chunk(4, dim=1)
            c_t = torch.sigmoid(f) * c_t + torch.sigmoid(i) * torch.tanh(g)
            h_t = torch.sigmoid(o) * torch.tanh(c_t)
            c_t.retain_grad()
            cs.append(c_t)
        else:
            h_t = step(x_t, h_t)
        h_t.retain_grad()
        hs.append(h_t)
    out = torch.stack(hs, dim=1)
    close(h, out)
    d_parts = d_state if isinstance(d_state, tuple) else (d_state,)
    loss = (torch.from_numpy(upstream) * out).sum() + (torch.from_numpy(d_parts[0]) * h_t).sum()
    if case == "lstm":
        loss = loss + (torch.from_numpy(d_parts[1]) * c_t).sum()
    loss.backward()
    close(grads.states, torch.stack([s.grad for s in hs], dim=1))
    if case == "lstm":
        close(grads.cell_states, torch.stack([s.grad for s in cs], dim=1))
