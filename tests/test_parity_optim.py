"""Our optimizers and clipping against PyTorch's, step by step, in float64.

Each optimizer runs 50 updates of several parameters on the gradient field
g = A theta + noise_k (a fixed positive definite A per parameter and a fixed
noise sequence), ours and torch's each from its own parameters, so a
difference in any update changes every later gradient. The trajectories must
agree to 1e-10 (relative).
"""

from __future__ import annotations

import numpy as np
import pytest

from framework.core.config import build
from framework.nn.clipping import clip_by_norm, clip_by_value, global_norm
from framework.nn.optimizers import (
    SGD,
    Adagrad,
    AdagradConfig,
    Adam,
    AdamConfig,
    RMSprop,
    RMSpropConfig,
    Rprop,
    RpropConfig,
    SGDConfig,
)

torch = pytest.importorskip("torch", reason="PyTorch parity tests need torch==2.13.0 (pip install torch==2.13.0)")

STEPS = 50
SHAPES = {"W": (3, 4), "b": (4,), "c": (1,)}
RTOL, ATOL = 1e-10, 1e-12


class GradientField:
    """g(theta)_k = A theta + noise_k for every parameter, and the loss 0.5 theta^T A theta + noise_k . theta."""

    def __init__(self, seed: int, noise: float = 1.0) -> None:
        rng = np.random.default_rng(seed)
        self.start = {name: rng.standard_normal(shape) for name, shape in SHAPES.items()}
        self.A, self.noise = {}, {}
        for name, shape in SHAPES.items():
            n = int(np.prod(shape))
            M = rng.standard_normal((n, n))
            self.A[name] = M @ M.T / n + 0.5 * np.eye(n)
            self.noise[name] = noise * rng.standard_normal((STEPS, n))

    def grads(self, params: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
        return {
            name: (self.A[name] @ theta.ravel() + self.noise[name][k]).reshape(theta.shape)
            for name, theta in params.items()
        }

    def loss(self, params: dict[str, np.ndarray], k: int) -> float:
        return sum(
            float(0.5 * theta.ravel() @ self.A[name] @ theta.ravel() + self.noise[name][k] @ theta.ravel())
            for name, theta in params.items()
        )


def ours(optimizer, field: GradientField) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    params = {name: start.copy() for name, start in field.start.items()}
    path, grads_seen = [], []
    for k in range(STEPS):
        grads = field.grads(params, k)
        grads_seen.append(grads)
        optimizer.step(params, grads, field.loss(params, k))
        path.append(np.concatenate([p.ravel() for p in params.values()]))
    return np.array(path), grads_seen


def theirs(make_optimizer, field: GradientField) -> np.ndarray:
    tensors = {
        name: torch.nn.Parameter(torch.tensor(start, dtype=torch.float64)) for name, start in field.start.items()
    }
    optimizer = make_optimizer(list(tensors.values()))
    path = []
    for k in range(STEPS):
        arrays = {name: p.detach().numpy().copy() for name, p in tensors.items()}
        for name, g in field.grads(arrays, k).items():
            tensors[name].grad = torch.tensor(g, dtype=torch.float64)
        optimizer.step()
        path.append(np.concatenate([p.detach().numpy().ravel() for p in tensors.values()]))
    return np.array(path)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), ATOL / RTOL)))


CASES = {
    "sgd-momentum": (
        SGD,
        SGDConfig,
        {"lr": 0.05, "momentum": 0.9},
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    ),
    "sgd-nesterov": (
        SGD,
        SGDConfig,
        {"lr": 0.05, "momentum": 0.9, "nesterov": True},
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0, nesterov=True),
    ),
    "sgd-weight-decay": (
        SGD,
        SGDConfig,
        {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.1},
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.1),
    ),
    "sgd-plain": (SGD, SGDConfig, {"lr": 0.1}, lambda p: torch.optim.SGD(p, lr=0.1)),
    # our defaults (irprop-, Delta_0 = 0.01) against torch's defaults
    "rprop": (Rprop, RpropConfig, {}, lambda p: torch.optim.Rprop(p)),
    "rprop-step": (
        Rprop,
        RpropConfig,
        {"step_init": 0.3, "eta_plus": 1.5, "eta_minus": 0.4, "step_min": 0.01, "step_max": 1.0},
        lambda p: torch.optim.Rprop(p, lr=0.3, etas=(0.4, 1.5), step_sizes=(0.01, 1.0)),
    ),
    "adagrad": (
        Adagrad,
        AdagradConfig,
        {"lr": 0.5, "lr_decay": 0.05, "initial_accumulator_value": 0.1},
        lambda p: torch.optim.Adagrad(p, lr=0.5, lr_decay=0.05, initial_accumulator_value=0.1),
    ),
    "adagrad-default-weight-decay": (
        Adagrad,
        AdagradConfig,
        {"lr": 0.5, "weight_decay": 0.1},
        lambda p: torch.optim.Adagrad(p, lr=0.5, weight_decay=0.1),
    ),
    "rmsprop": (RMSprop, RMSpropConfig, {"lr": 0.01}, lambda p: torch.optim.RMSprop(p, lr=0.01)),
    "rmsprop-centered": (
        RMSprop,
        RMSpropConfig,
        {"lr": 0.01, "centered": True},
        lambda p: torch.optim.RMSprop(p, lr=0.01, centered=True),
    ),
    "rmsprop-momentum": (
        RMSprop,
        RMSpropConfig,
        {"lr": 0.01, "momentum": 0.9, "alpha": 0.9},
        lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.9, alpha=0.9),
    ),
    "rmsprop-centered-momentum-weight-decay": (
        RMSprop,
        RMSpropConfig,
        {"lr": 0.01, "momentum": 0.5, "centered": True, "weight_decay": 0.1, "eps": 1e-6},
        lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True, weight_decay=0.1, eps=1e-6),
    ),
    "adam": (Adam, AdamConfig, {"lr": 0.05}, lambda p: torch.optim.Adam(p, lr=0.05)),
    "adam-amsgrad": (
        Adam,
        AdamConfig,
        {"lr": 0.05, "amsgrad": True, "beta1": 0.8, "beta2": 0.99},
        lambda p: torch.optim.Adam(p, lr=0.05, amsgrad=True, betas=(0.8, 0.99)),
    ),
    "adam-weight-decay": (
        Adam,
        AdamConfig,
        {"lr": 0.05, "weight_decay": 0.1},
        lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.1),
    ),
    "adam-default": (Adam, AdamConfig, {}, lambda p: torch.optim.Adam(p)),
}


def parity(case: str, seed: int = 0) -> tuple[float, np.ndarray, list[dict[str, np.ndarray]]]:
    """The largest relative difference of the two trajectories, and ours with its gradients."""
    cls, config_cls, options, make = CASES[case]
    field = GradientField(seed)
    path, grads = ours(cls(build(config_cls, options, prefix="optim")), field)
    expected = theirs(make, field)
    np.testing.assert_allclose(path, expected, rtol=RTOL, atol=ATOL, err_msg=case)
    return relative_error(path, expected), path, grads


def test_torch_is_the_pinned_version():
    assert torch.__version__.split("+")[0] == "2.13.0"


@pytest.mark.parametrize("case", CASES)
def test_trajectory_equals_torch(case):
    _, path, _ = parity(case)
    assert np.ptp(path, axis=0).min() > 1e-3, "a parameter barely moved: the comparison would be weak"


def test_rprop_parity_covers_sign_changes():
    """The Rprop runs flip gradient signs often, so the sign-change rule is what is compared."""
    for case in ("rprop", "rprop-step"):
        _, _, grads = parity(case)
        flat = np.array([np.concatenate([g.ravel() for g in step.values()]) for step in grads])
        flips = int(np.sum(flat[1:] * flat[:-1] < 0))
        assert flips >= 20, (case, flips)


def test_rprop_default_is_the_variant_torch_computes():
    """Only irprop- equals torch.optim.Rprop; the other variants differ on the same field."""
    field = GradientField(0)
    expected = theirs(lambda p: torch.optim.Rprop(p), field)
    for variant in ("plain", "rprop-", "rprop+", "irprop+"):
        path, _ = ours(Rprop(build(RpropConfig, {"variant": variant})), field)
        assert not np.allclose(path, expected, rtol=1e-6, atol=0), variant
    assert RpropConfig().variant == "irprop-"


# -- clipping -------------------------------------------------------------------------


def gradients(seed: int, scale: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: scale * rng.standard_normal(shape) for name, shape in SHAPES.items()}


def as_torch_params(grads: dict[str, np.ndarray]) -> list:
    params = []
    for g in grads.values():
        p = torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64))
        p.grad = torch.tensor(g, dtype=torch.float64)
        params.append(p)
    return params


@pytest.mark.parametrize("limit", [0.1, 0.7, 5.0])
def test_clip_by_value_equals_torch(limit):
    grads = gradients(1, 2.0)
    params = as_torch_params(grads)
    clip_by_value(grads, limit)
    torch.nn.utils.clip_grad_value_(params, limit)
    for g, p in zip(grads.values(), params, strict=True):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("max_norm", [0.5, 3.0, 100.0, "just over the norm"])
def test_clip_by_norm_equals_torch(seed, max_norm):
    grads = gradients(seed, 1.5)
    norm = global_norm(grads)
    # within 1e-6 above the norm, torch still shrinks a little (by (norm + 5e-7) / (norm + 1e-6))
    max_norm = norm + 5e-7 if max_norm == "just over the norm" else max_norm
    params = as_torch_params(grads)
    clip_by_norm(grads, max_norm, norm)
    total = torch.nn.utils.clip_grad_norm_(params, max_norm)
    assert norm == pytest.approx(float(total), rel=1e-12)
    for g, p in zip(grads.values(), params, strict=True):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-12, atol=1e-12)
