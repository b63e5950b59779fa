"""Optimizer update rules against steps computed by hand, and gradient clipping."""

from __future__ import annotations

import numpy as np
import pytest

from framework.core import plugins
from framework.core.config import build
from framework.core.errors import ConfigError
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

GRADS = [2.0, 3.0, -1.0, -1.0]  # keeps its sign, keeps it, flips, keeps it


def trajectory(optimizer, grads=GRADS, start=0.0, losses=None) -> list[float]:
    w = np.array([start])
    path = []
    for g, loss in zip(grads, losses or [0.0] * len(grads), strict=True):
        optimizer.step({"w": w}, {"w": np.array([g])}, loss)
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


@pytest.mark.parametrize(
    ("losses", "expected"),
    [
        # the loss rose when the sign flipped: undo the last move of -.12, as rprop+
        ([1.0, 0.5, 0.7, 0.6], [-0.1, -0.22, -0.10, -0.04]),
        # the loss fell: no move, as irprop-
        ([1.0, 0.5, 0.4, 0.3], [-0.1, -0.22, -0.22, -0.16]),
        # only the loss at the flip counts: it rose before, not at the flip
        ([0.1, 0.5, 0.5, 0.9], [-0.1, -0.22, -0.22, -0.16]),
    ],
)
def test_irprop_plus_by_hand(losses, expected):
    # Delta: .1, .12, .06 (flip: g <- 0, backtrack iff E_3 > E_2), .06
    np.testing.assert_allclose(trajectory(rprop("irprop+"), losses=losses), expected, rtol=1e-12)


def test_irprop_plus_backtracks_only_the_weights_that_flipped():
    optimizer = rprop("irprop+")
    w = np.array([0.0, 0.0])
    optimizer.step({"w": w}, {"w": np.array([1.0, 1.0])}, 1.0)  # both move -.1
    optimizer.step({"w": w}, {"w": np.array([-1.0, 1.0])}, 2.0)  # loss rose: the first goes back, the second -.12
    np.testing.assert_allclose(w, [0.0, -0.22])


def test_rprop_default_is_irprop_minus_with_torch_defaults():
    c = RpropConfig()
    assert (c.variant, c.step_init, c.eta_minus, c.eta_plus, c.step_min, c.step_max) == (
        "irprop-",
        0.01,
        0.5,
        1.2,
        1e-6,
        50.0,
    )


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


def test_adagrad_by_hand():
    # G = 9, 25: steps .1 * 3/3 and .1 * 4/5
    np.testing.assert_allclose(trajectory(Adagrad(AdagradConfig(lr=0.1)), [3.0, 4.0]), [-0.1, -0.18], rtol=1e-9)
    # lr_decay 1: the second step has eta / 2
    decayed = Adagrad(AdagradConfig(lr=0.1, lr_decay=1.0))
    np.testing.assert_allclose(trajectory(decayed, [3.0, 4.0]), [-0.1, -0.14], rtol=1e-9)
    # TensorFlow 1's AdagradOptimizer: G_0 = 0.1, no eps
    tf1 = Adagrad(AdagradConfig(lr=0.1, initial_accumulator_value=0.1, eps=0.0))
    np.testing.assert_allclose(trajectory(tf1, [3.0]), [-0.3 / np.sqrt(9.1)], rtol=1e-15)
    # weight decay: g = 0 + 0.5 * 2 = 1, G = 1
    decay = Adagrad(AdagradConfig(lr=0.1, weight_decay=0.5, eps=0.0, initial_accumulator_value=1e-300))
    np.testing.assert_allclose(trajectory(decay, [0.0], start=2.0), [1.9], rtol=1e-15)


def test_rmsprop_by_hand():
    # v = .25 * 4 = 1, then .75 + .25 = 1: steps .1 * 2 and .1 * 1
    plain = RMSprop(RMSpropConfig(lr=0.1, alpha=0.75))
    np.testing.assert_allclose(trajectory(plain, [2.0, 1.0]), [-0.2, -0.3], rtol=1e-7)
    # momentum .5: b = 2, then .5 * 2 + 1 = 2
    momentum = RMSprop(RMSpropConfig(lr=0.1, alpha=0.75, momentum=0.5))
    np.testing.assert_allclose(trajectory(momentum, [2.0, 1.0]), [-0.2, -0.4], rtol=1e-7)
    # centered, alpha .5: v = 2, m = 1, sqrt(v - m^2) = 1
    centered = RMSprop(RMSpropConfig(lr=0.1, alpha=0.5, centered=True))
    np.testing.assert_allclose(trajectory(centered, [2.0]), [-0.2], rtol=1e-7)


def test_adam_by_hand():
    # the first step is eta sign(g): m_hat = g, v_hat = g^2
    np.testing.assert_allclose(trajectory(Adam(AdamConfig()), [-5.0]), [1e-3], rtol=1e-8)
    # beta1 = beta2 = .5, g = 2 then 0: m = 1, .5; v = 2, 1; m_hat = 2, 2/3; v_hat = 4, 4/3
    options = {"lr": 0.1, "beta1": 0.5, "beta2": 0.5, "eps": 1e-300}
    np.testing.assert_allclose(trajectory(Adam(AdamConfig(**options)), [2.0, 0.0]), [-0.1, -0.1 - 0.1 / np.sqrt(3)])
    # AMSGrad keeps v_max = 2: v_hat = 8/3, (2/3) / sqrt(8/3) = 1 / sqrt(6)
    amsgrad = Adam(AdamConfig(**options, amsgrad=True))
    np.testing.assert_allclose(trajectory(amsgrad, [2.0, 0.0]), [-0.1, -0.1 - 0.1 / np.sqrt(6)])
    # weight decay (L2, not AdamW): g = 0 + 0.1 * 1 > 0, so the first step is -eta
    np.testing.assert_allclose(trajectory(Adam(AdamConfig(weight_decay=0.1)), [0.0], start=1.0), [1 - 1e-3])


# options that give an optimizer all of its state
FULL_STATE = {
    "sgd": {"momentum": 0.9, "weight_decay": 0.1},
    "rprop": {"variant": "irprop+"},
    "rmsprop": {"momentum": 0.5, "centered": True},
    "adam": {"amsgrad": True},
}


@pytest.mark.parametrize("name", [c.name for c in plugins.manager().registry.of_kind("optim")])
def test_optimizers_keep_the_parameters_dtype_and_update_in_place(name):
    """float32 parameters stay float32 arrays, updated in place, and so does every state array."""
    component = plugins.manager().registry.get("optim", name)
    optimizer = component.factory(build(component.config_class, FULL_STATE.get(name, {}), prefix="optim"))
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 2)).astype(np.float32)
    params = {"w": w}
    for loss in (1.0, 2.0, 0.5):
        optimizer.step(params, {"w": rng.standard_normal((3, 2)).astype(np.float32)}, loss)
    assert params["w"] is w and w.dtype == np.float32
    states = [a for v in vars(optimizer).values() if isinstance(v, dict) for a in v.values()]
    arrays = [a for a in states if isinstance(a, np.ndarray)]
    assert all(a.dtype == np.float32 for a in arrays), [a.dtype for a in arrays]
    assert arrays or name not in FULL_STATE


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
        (
            RpropConfig,
            {"variant": "fast"},
            "optim.variant='fast': expected one of: plain, rprop-, rprop+, irprop-, irprop+",
        ),
        (SGDConfig, {"lr": 0}, "optim.lr=0: expected a number > 0"),
        (SGDConfig, {"nesterov": True}, "optim.nesterov=True: expected false when momentum is 0"),
        (
            AdagradConfig,
            {"eps": 0},
            "optim.eps=0.0: expected a number > 0 when initial_accumulator_value is 0 (sqrt(G) may be 0)",
        ),
        (AdagradConfig, {"eps": -1e-10}, "optim.eps=-1e-10: expected a number >= 0"),
        (AdagradConfig, {"lr_decay": -1}, "optim.lr_decay=-1: expected a number >= 0"),
        (RMSpropConfig, {"alpha": 1.0}, "optim.alpha=1.0: expected a number >= 0 and < 1"),
        (RMSpropConfig, {"eps": 0}, "optim.eps=0: expected a number > 0"),
        (AdamConfig, {"beta2": 1}, "optim.beta2=1: expected a number >= 0 and < 1"),
        (AdamConfig, {"amsgrad": "yes"}, "optim.amsgrad='yes': expected true or false"),
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
