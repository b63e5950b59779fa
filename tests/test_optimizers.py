"""Optimizer update rules against steps computed by hand, and gradient clipping."""

from __future__ import annotations

import numpy as np
import pytest

from framework.config import ConfigError, build
from framework.nn.clipping import clip_by_norm, clip_by_value, global_norm
from framework.nn.optimizers import SGD, Rprop, RpropConfig, SGDConfig

GRADS = [2.0, 3.0, -1.0, -1.0]  # keeps its sign, keeps it, flips, keeps it


def trajectory(optimizer, grads=GRADS, start=0.0) -> list[float]:
    w = np.array([start])
    path = []
    for g in grads:
        optimizer.step({"w": w}, {"w": np.array([g])}, 0.0)
        path.append(float(w[0]))
    return path


def rprop(variant: str, **options) -> Rprop:
    defaults = {"variant": variant, "step_init": 0.1, "step_min": 0.0, "step_max": None}
    return Rprop(build(RpropConfig, {**defaults, **options}))


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        # the counting tutorial: Delta shrinks on the first step (sign 0 before), w always moves
        # Delta: .05, .06, .03, .036
        ("plain", [-0.05, -0.11, -0.08, -0.044]),
        # Delta: .1, .12, .06 (flip: move anyway), .072
        ("rprop-", [-0.1, -0.22, -0.16, -0.088]),
        # Delta: .1, .12, .06 (flip: no move, forget g), .06
        ("irprop-", [-0.1, -0.22, -0.22, -0.16]),
        # Delta: .1, .12, .06 (flip: undo the last move of -.12), .06
        ("rprop+", [-0.1, -0.22, -0.10, -0.04]),
    ],
)
def test_rprop_variants_by_hand(variant, expected):
    np.testing.assert_allclose(trajectory(rprop(variant)), expected, rtol=1e-12)


def test_rprop_step_bounds():
    # Delta grows 0.1 -> 0.12 -> capped at 0.13; shrinks to the floor 0.09
    optimizer = rprop("rprop-", step_max=0.13, step_min=0.09)
    np.testing.assert_allclose(trajectory(optimizer, [1, 1, 1, -1, 1]), [-0.1, -0.22, -0.35, -0.26, -0.35])


def test_rprop_works_per_weight():
    optimizer = rprop("plain")
    w = np.array([0.0, 0.0])
    optimizer.step({"w": w}, {"w": np.array([1.0, -1.0])}, 0.0)
    optimizer.step({"w": w}, {"w": np.array([1.0, 1.0])}, 0.0)
    np.testing.assert_allclose(w, [-0.05 - 0.06, 0.05 - 0.025])


def test_sgd_by_hand():
    np.testing.assert_allclose(trajectory(SGD(SGDConfig(lr=0.1)), [1.0, -2.0]), [-0.1, 0.1])
    # v = 1, then v = 0.9 * 1 + 1 = 1.9
    np.testing.assert_allclose(trajectory(SGD(SGDConfig(lr=0.1, momentum=0.9)), [1.0, 1.0]), [-0.1, -0.29])
    # Nesterov: g + mu v = 1.9, then 1 + 0.9 * 1.9 = 2.71
    nesterov = SGD(SGDConfig(lr=0.1, momentum=0.9, nesterov=True))
    np.testing.assert_allclose(trajectory(nesterov, [1.0, 1.0]), [-0.19, -0.461])
    # weight decay adds lambda w to the gradient
    np.testing.assert_allclose(trajectory(SGD(SGDConfig(lr=1.0, weight_decay=0.1)), [0.0], start=1.0), [0.9])


@pytest.mark.parametrize(
    ("cls", "options", "message"),
    [
        (RpropConfig, {"eta_minus": 1.0}, "optim.eta_minus=1.0: expected a number > 0 and < 1"),
        (RpropConfig, {"eta_plus": 1.0}, "optim.eta_plus=1.0: expected a number > 1"),
        (RpropConfig, {"step_min": 1.0, "step_max": 0.5}, "optim.step_max=0.5: expected a number > step_min (1.0)"),
        (RpropConfig, {"variant": "fast"}, "optim.variant='fast': expected one of: plain, rprop-, rprop+, irprop-"),
        (SGDConfig, {"lr": 0}, "optim.lr=0: expected a number > 0"),
        (SGDConfig, {"nesterov": True}, "optim.nesterov=True: expected false when momentum is 0"),
    ],
)
def test_invalid_hyper_parameters_are_refused(cls, options, message):
    with pytest.raises(ConfigError) as error:
        build(cls, options, prefix="optim")
    assert str(error.value) == message


def test_clipping():
    grads = {"a": np.array([3.0, -4.0]), "b": np.array([[12.0]])}
    assert global_norm(grads) == pytest.approx(13.0)
    clip_by_value(grads, 5.0)
    np.testing.assert_array_equal(grads["a"], [3.0, -4.0])
    np.testing.assert_array_equal(grads["b"], [[5.0]])
    grads = {"a": np.array([3.0, -4.0])}
    clip_by_norm(grads, 1.0, global_norm(grads))
    np.testing.assert_allclose(grads["a"], np.array([3.0, -4.0]) / (5.0 + 1e-6))
    clip_by_norm(grads, 10.0, global_norm(grads))  # under the limit: unchanged
    np.testing.assert_allclose(grads["a"], np.array([3.0, -4.0]) / (5.0 + 1e-6))
