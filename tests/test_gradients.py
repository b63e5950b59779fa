"""Every gradient the engine computes, checked against central differences.

Parametrized over the live registry: a cell, loss or task that an installed
plugin registers is checked by these same tests.
"""

from __future__ import annotations

import numpy as np
import pytest

from framework.core import engine, plugins
from framework.core.config import build
from framework.core.gradcheck import check_cell, check_gradients, check_loss, check_model, numerical_gradient
from framework.nn.cells import ACTIVATIONS, KERNELS, RNNConfig, make_rnn

REGISTRY = plugins.manager().registry
CELLS = [c.name for c in REGISTRY.of_kind("cell")]
LOSSES = [c.name for c in REGISTRY.of_kind("loss")]
TASKS = [c.name for c in REGISTRY.of_kind("task")]
TOLERANCE = 1e-6  # relative error in float64


def make_cell(name: str, input_size: int = 3, hidden_size: int = 4, options: dict | None = None):
    component = REGISTRY.get("cell", name)
    config = build(component.config_class, options or {}, prefix="cell")
    return component.factory(config, input_size, hidden_size, np.random.default_rng(0), np.dtype("float64"))


def random_state(cell, batch: int, rng: np.random.Generator):
    zero = cell.zero_state(batch)
    parts = zero if isinstance(zero, tuple) else (zero,)
    filled = tuple(rng.standard_normal(p.shape) * 0.5 for p in parts)
    return filled if isinstance(zero, tuple) else filled[0]


@pytest.mark.parametrize("name", CELLS)
def test_cell_gradients(name):
    rng = np.random.default_rng(1)
    cell = make_cell(name)
    x = rng.standard_normal((2, 5, 3))
    errors = check_cell(cell, x, random_state(cell, 2, rng), rng)
    assert set(errors) >= {*cell.params, "x", "state[0]"}
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("bias", [True, False])
def test_rnn_gradients_for_every_activation(activation, bias, kernel):
    """Both time loops of the Elman cell: numpy's and the compiled one (cell.kernel=numba)."""
    if kernel == "numba":
        pytest.importorskip("numba", reason="cell.kernel=numba needs numba (pip install numba)")
    rng = np.random.default_rng(2)
    config = RNNConfig(activation=activation, bias=bias, kernel=kernel)
    cell = make_rnn(config, 3, 4, rng, np.dtype("float64"))
    x = rng.standard_normal((2, 6, 3))
    errors = check_cell(cell, x, random_state(cell, 2, rng), rng)
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("shape", [(4, 1), (3, 5, 2)])
def test_loss_gradients(name, shape):
    rng = np.random.default_rng(3)
    component = REGISTRY.get("loss", name)
    loss = component.factory(build(component.config_class, {}, prefix="loss"))
    outputs = rng.standard_normal(shape)
    targets = loss.random_targets(outputs, rng)
    assert check_loss(loss, outputs, targets) < TOLERANCE
    if len(shape) == 3:  # a padding mask over (B, T)
        mask = (rng.random(shape[:2]) < 0.7).astype(float)
        assert check_loss(loss, outputs, targets, mask) < TOLERANCE


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("task", TASKS)
def test_task_model_gradients(compose, task, cell):
    """The task's whole model (with any cell) on a real batch of two sequences of its dataset (a recipe's larger
    batch would check the same equations, only slower); 24 entries of each parameter."""
    cfg = compose(f"task={task}", f"cell={cell}", "tracking.enabled=false", "dtype=float64", "train.batch_size=2")
    run = engine.build(cfg, plugins.manager())
    batch = next(run.dataset.batches(run.settings.train.batch_size, np.random.default_rng(4)))
    errors = check_model(run.task.model, batch, max_entries=24, rng=np.random.default_rng(5))
    assert errors and max(errors.values()) < TOLERANCE, errors


def test_counting_gradient_check_of_the_tutorial(compose):
    """docs/tasks.md: at (w_x, w_rec) = (1.2, 1.2), central differences with eps 1e-7 agree with BPTT."""
    run = engine.build(compose("task=counting", "task.w_x=1.2", "task.w_rec=1.2"), plugins.manager())
    model, data = run.task.model, run.dataset
    batch = next(data.batches(0, np.random.default_rng(0)))
    result = model.loss_and_grads(batch, None)
    numeric = {
        k: numerical_gradient(lambda: model.loss_and_grads(batch, None).loss, p, 1e-7) for k, p in model.params.items()
    }
    for name in model.params:
        np.testing.assert_allclose(result.grads[name], numeric[name], rtol=1e-6)
    # and both equal the tutorial's closed form: dL/dy = 2 (y - t) / N, grad_{k-1} = grad_k w_rec
    x, t = data.inputs[:, :, 0], data.targets[:, 0]
    n = x.shape[1]
    s = np.zeros((len(x), n + 1))
    for k in range(n):
        s[:, k + 1] = x[:, k] * 1.2 + s[:, k] * 1.2
    grad = 2 * (s[:, -1] - t) / len(x)
    d_wx = d_wrec = 0.0
    for k in range(n, 0, -1):
        d_wx += np.sum(grad * x[:, k - 1])
        d_wrec += np.sum(grad * s[:, k - 1])
        grad = grad * 1.2
    np.testing.assert_allclose(
        [result.grads["cell.Wx"][0, 0], result.grads["cell.Wh"][0, 0]], [d_wx, d_wrec], rtol=1e-12
    )


def test_gradient_check_catches_a_wrong_gradient():
    """The check itself fails when the analytic gradient is off."""
    w = np.array([1.0, -2.0, 3.0])
    errors = check_gradients(lambda: float(np.sum(w**3)), {"w": w}, {"w": 3 * w**2 * 1.001})
    assert errors["w"] > 1e-4
