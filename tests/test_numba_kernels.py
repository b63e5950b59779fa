"""``cell.kernel=numba``: the Elman cell's compiled time loops agree with numpy's, the reference, to float rounding.

The gradients of both are checked against central differences in tests/test_gradients.py.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from framework.core.config import build
from framework.core.errors import ConfigError, FrameworkError
from framework.nn.cells import ACTIVATIONS, LinearConfig, RNNConfig, make_linear, make_rnn

B, T, I, H = 3, 9, 4, 6  # noqa: E741 (batch, steps, inputs, hidden units)
RTOL = {"float64": 1e-12, "float32": 2e-5}


def twins(activation: str, bias: bool, dtype: str):
    """The same Elman cell (same weights) with numpy's loops and with the compiled ones."""
    config = {"activation": activation, "bias": bias}
    return [
        make_rnn(RNNConfig(**config, kernel=kernel), I, H, np.random.default_rng(0), np.dtype(dtype))
        for kernel in ("numpy", "numba")
    ]


@pytest.fixture(autouse=True)
def numba_installed():
    pytest.importorskip("numba", reason="cell.kernel=numba needs numba (pip install numba)")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_compiled_loops_agree_with_numpy(activation, bias, dtype):
    """Outputs, final state, every parameter's gradient, dL/dx, dL/dh_0 and dL/dh_k of every step."""
    reference, compiled = twins(activation, bias, dtype)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, T, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    d_outputs = rng.standard_normal((B, T, H)).astype(dtype)
    d_final = rng.standard_normal((B, H)).astype(dtype)
    passes = []
    for cell in (reference, compiled):
        outputs, final, cache = cell.forward(x, h0)
        grads = cell.backward(cache, d_outputs, d_final)
        passes.append({"outputs": outputs, "final": final, **grads.params, "x": grads.input_grads()})
        passes[-1].update({"h_0": grads.state, "states": np.asarray(grads.states)})
    expected, got = passes
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_allclose(got[name], value, rtol=RTOL[dtype], atol=RTOL[dtype] * 1e-2, err_msg=name)


def test_the_linear_cell_takes_the_kernel_too():
    """The counting tutorial's linear cell is the Elman cell with f = identity: the same compiled loops."""
    f64 = np.dtype("float64")
    cells = [make_linear(LinearConfig(kernel=k), 1, 1, np.random.default_rng(0), f64) for k in ("numpy", "numba")]
    x = np.random.default_rng(2).standard_normal((5, 10, 1))
    (a, _, _), (b, _, _) = (cell.forward(x, cell.zero_state(5)) for cell in cells)
    np.testing.assert_allclose(b, a, rtol=1e-12)


def test_a_run_with_the_compiled_kernel_learns_the_same(tmp_path, monkeypatch):
    """The echo tutorial's recipe (2664 updates) with each kernel: the same losses step by step, to the rounding
    that accumulates over the run (7.7e-10 here), and its result reached at the same step."""
    import framework

    monkeypatch.chdir(tmp_path)
    runs = [framework.run("echo", "tracking.enabled=false", f"cell.kernel={kernel}") for kernel in ("numpy", "numba")]
    losses = [np.array(r.history["loss"]) for r in runs]
    assert len(losses[0]) == len(losses[1]) == 2664
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-7)
    assert runs[0].verdict.status == runs[1].verdict.status == "reached"
    assert runs[0].verdict.step == runs[1].verdict.step


def test_a_large_batch_is_not_refused_for_what_loading_the_kernel_allocates(cli):
    """The check that a step fits in memory scales one sequence's step to the batch: numba's loading of the loops,
    once per process (a fresh one here), is not part of it (the adder's rprop recipe, batch 1024, was refused:
    "1024 sequences need about 24.4 GiB")."""
    result = cli("task=adder", "optim=rprop", "cell.kernel=numba", "train.steps=3", "tracking.enabled=false")
    assert result.returncode == 0, result.stderr


def test_kernel_numba_without_numba_is_one_clear_line(monkeypatch):
    """A machine without numba: the option names itself, what it accepts there and how to get numba."""
    monkeypatch.setitem(sys.modules, "numba", None)  # as if not installed: find_spec gives None, import fails
    for config_class in (RNNConfig, LinearConfig):
        with pytest.raises(ConfigError) as raised:
            build(config_class, {"kernel": "numba"}, prefix="cell")
        expected = "cell.kernel='numba': expected numpy, or numba once it is installed (pip install numba)"
        assert str(raised.value) == expected
    with pytest.raises(FrameworkError, match=r"cell.kernel='cuda': expected one of"):
        build(RNNConfig, {"kernel": "cuda"}, prefix="cell")
