"""Loss values and gradients against numbers computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from framework.core import plugins
from framework.core.config import build
from framework.core.errors import ConfigError
from framework.nn.losses import (
    BinaryCrossEntropy,
    BinaryCrossEntropyConfig,
    MeanSquaredError,
    MSEConfig,
    SigmoidSquaredError,
    SigmoidSquaredErrorConfig,
    SoftmaxCrossEntropy,
    SoftmaxCrossEntropyConfig,
)

LN3 = math.log(3.0)


def softmax_ce(reduction: str = "mean") -> SoftmaxCrossEntropy:
    return SoftmaxCrossEntropy(SoftmaxCrossEntropyConfig(reduction=reduction))


def sigmoid_se(reduction: str = "mean") -> SigmoidSquaredError:
    return SigmoidSquaredError(SigmoidSquaredErrorConfig(reduction=reduction))


def bce(reduction: str = "mean") -> BinaryCrossEntropy:
    return BinaryCrossEntropy(BinaryCrossEntropyConfig(reduction=reduction))


# -- softmax cross-entropy -----------------------------------------------------------


def test_softmax_cross_entropy_by_hand():
    # softmax([0, ln 3]) = [1/4, 3/4]
    loss, grad = softmax_ce()(np.array([[0.0, LN3]]), np.array([1]))
    assert loss == pytest.approx(-math.log(3 / 4), rel=1e-14)
    np.testing.assert_allclose(grad, [[0.25, -0.25]], rtol=1e-14)
    loss, grad = softmax_ce()(np.array([[0.0, LN3]]), np.array([0]))
    assert loss == pytest.approx(math.log(4), rel=1e-14)
    np.testing.assert_allclose(grad, [[-0.75, 0.75]], rtol=1e-14)


def test_softmax_cross_entropy_mean_and_sum():
    logits = np.array([[0.0, LN3], [0.0, 0.0]])
    targets = np.array([1, 0])
    total = -math.log(3 / 4) + math.log(2)
    mean, d_mean = softmax_ce("mean")(logits, targets)
    summed, d_sum = softmax_ce("sum")(logits, targets)
    assert mean == pytest.approx(total / 2, rel=1e-14)  # N = 2 positions, not 4 elements
    assert summed == pytest.approx(total, rel=1e-14)
    np.testing.assert_allclose(d_sum, [[0.25, -0.25], [-0.5, 0.5]], rtol=1e-14)
    np.testing.assert_allclose(d_mean, d_sum / 2, rtol=1e-14)


def test_softmax_cross_entropy_is_stable_for_large_logits():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, grad = softmax_ce()(np.array([[1000.0, 1000.0 + LN3], [1000.0, -1000.0]]), np.array([1, 1]))
    # the first is the hand case shifted by 1000; the second has log p = -2000 - log(1 + e^-2000)
    assert loss == pytest.approx((-math.log(3 / 4) + 2000.0) / 2, rel=1e-14)
    np.testing.assert_allclose(grad, [[0.125, -0.125], [0.5, -0.5]], rtol=1e-12, atol=1e-300)  # 1000 + ln 3 is rounded


@pytest.mark.parametrize(("dtype", "below"), [(np.float64, 1000.0), (np.float32, 100.0), (np.float32, 60.0)])
def test_softmax_cross_entropy_of_rows_far_apart(dtype, below):
    # the second row is the first shifted down by ``below``: exp of it shifted by the first row's maximum
    # underflows to 0 (float64 at 1000, float32 at 100: that row needs its own maximum) or is 1e-26 (float32
    # at 60: one shift serves), yet both rows give the hand case (in float32 up to the rounding of
    # -below + ln 3, whose last bit is 8e-6 at 100)
    logits = np.array([[0.0, LN3], [-below, -below + LN3]], dtype=dtype)
    loss, grad = softmax_ce("sum")(logits, np.array([1, 0]))
    assert loss == pytest.approx(-math.log(3 / 4) + math.log(4), rel=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(grad, [[0.25, -0.25], [-0.75, 0.75]], rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_softmax_cross_entropy_mask_excludes_positions():
    logits = np.zeros((2, 3, 4))
    logits[0, 0] = [0.0, LN3, 0.0, 0.0]  # softmax: [1, 3, 1, 1] / 6
    targets = np.array([[1, 2, 9], [0, 3, -1]])  # the masked positions carry invalid indices: ignored
    mask = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, grad = softmax_ce()(logits, targets, mask)
    # three positions count: -log(1/2) and twice -log(1/4)
    assert loss == pytest.approx((math.log(2) + 2 * math.log(4)) / 3, rel=1e-14)
    np.testing.assert_allclose(grad[0, 0], np.array([1, -3, 1, 1]) / 6 / 3, rtol=1e-14)
    np.testing.assert_allclose(grad[1, 0], np.array([-3, 1, 1, 1]) / 4 / 3, rtol=1e-14)
    np.testing.assert_array_equal(grad[0, 2], 0.0)
    np.testing.assert_array_equal(grad[1, 1:], 0.0)
    summed, _ = softmax_ce("sum")(logits, targets, mask)
    assert summed == pytest.approx(math.log(2) + 2 * math.log(4), rel=1e-14)


def test_softmax_cross_entropy_keeps_float32():
    loss, grad = softmax_ce()(np.array([[0.0, 1.0]], dtype=np.float32), np.array([0]))
    assert grad.dtype == np.float32
    assert loss == pytest.approx(math.log(1 + math.e), rel=1e-6)


def test_softmax_cross_entropy_refuses_bad_targets():
    with pytest.raises(ValueError, match="expected class indices of shape"):
        softmax_ce()(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        softmax_ce()(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        softmax_ce()(np.zeros((2, 3)), np.array([-1, 0]))


def test_softmax_cross_entropy_random_targets_are_valid_indices():
    rng = np.random.default_rng(0)
    targets = softmax_ce().random_targets(np.zeros((3, 5, 4)), rng)
    assert targets.shape == (3, 5) and np.issubdtype(targets.dtype, np.integer)
    assert targets.min() >= 0 and targets.max() < 4
    np.testing.assert_array_equal(softmax_ce().random_targets(np.zeros((4, 1)), rng), 0)


# -- sigmoid squared error -------------------------------------------------------------


def test_sigmoid_squared_error_by_hand():
    # sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4
    z = np.array([[0.0, LN3]])
    t = np.array([[1.0, 0.0]])
    loss, grad = sigmoid_se("sum")(z, t)
    assert loss == pytest.approx(0.5 * 0.25 + 0.5 * 0.5625, rel=1e-14)
    # (y - t) y (1 - y): -1/2 * 1/4, 3/4 * 3/4 * 1/4
    np.testing.assert_allclose(grad, [[-0.125, 9 / 64]], rtol=1e-14)
    mean, d_mean = sigmoid_se("mean")(z, t)  # N = 2 elements
    assert mean == pytest.approx(loss / 2, rel=1e-14)
    np.testing.assert_allclose(d_mean, grad / 2, rtol=1e-14)


def test_sigmoid_squared_error_mask_counts_elements():
    z = np.zeros((1, 2, 3))
    t = np.ones((1, 2, 3))
    loss, grad = sigmoid_se()(z, t, np.array([[1.0, 0.0]]))
    assert loss == pytest.approx(0.125, rel=1e-14)  # 3 unmasked elements of 0.5 * (1/2)^2
    np.testing.assert_allclose(grad[0, 0], [-0.125 / 3] * 3, rtol=1e-14)
    np.testing.assert_array_equal(grad[0, 1], 0.0)


def test_sigmoid_squared_error_is_stable_for_large_logits():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, grad = sigmoid_se("sum")(np.array([[1000.0, -1000.0]]), np.array([[1.0, 0.0]]))
    assert loss == 0.0
    np.testing.assert_array_equal(grad, 0.0)


# -- binary cross-entropy --------------------------------------------------------------


def test_binary_cross_entropy_by_hand():
    z = np.array([[0.0, LN3, -LN3]])
    t = np.array([[1.0, 1.0, 1.0]])
    loss, grad = bce("sum")(z, t)
    # -log(1/2) - log(3/4) - log(1/4)
    assert loss == pytest.approx(math.log(2) - math.log(3 / 4) + math.log(4), rel=1e-14)
    np.testing.assert_allclose(grad, [[-0.5, -0.25, -0.75]], rtol=1e-14)
    # soft targets: t = 1/2 at z = 0 gives log 2 and a zero gradient
    loss, grad = bce("mean")(np.zeros((2, 1)), np.full((2, 1), 0.5))
    assert loss == pytest.approx(math.log(2), rel=1e-14)
    np.testing.assert_array_equal(grad, 0.0)


def test_binary_cross_entropy_is_stable_for_large_logits():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, grad = bce("sum")(np.array([[1000.0, -1000.0, 1000.0]]), np.array([[1.0, 0.0, 0.0]]))
    assert loss == pytest.approx(1000.0, rel=1e-14)  # only the confident mistake costs
    np.testing.assert_allclose(grad, [[0.0, 0.0, 1.0]], atol=1e-300)


def test_binary_cross_entropy_mask():
    z = np.zeros((2, 2, 1))
    t = np.zeros((2, 2, 1))
    loss, grad = bce()(z, t, np.array([[1.0, 0.0], [0.0, 0.0]]))
    assert loss == pytest.approx(math.log(2), rel=1e-14)
    np.testing.assert_allclose(grad.ravel(), [0.5, 0.0, 0.0, 0.0], rtol=1e-14)


# -- the shared reduction -------------------------------------------------------------


def test_mse_by_hand():
    loss, grad = MeanSquaredError(MSEConfig())(np.array([[1.0], [3.0]]), np.array([[0.0], [0.0]]))
    assert loss == pytest.approx(5.0)
    np.testing.assert_allclose(grad, [[1.0], [3.0]])


@pytest.mark.parametrize("name", [c.name for c in plugins.manager().registry.of_kind("loss")])
def test_a_fully_masked_batch_gives_zero(name):
    component = plugins.manager().registry.get("loss", name)
    loss = component.factory(build(component.config_class, {}, prefix="loss"))
    outputs = np.ones((2, 3, 2))
    value, grad = loss(outputs, loss.random_targets(outputs, np.random.default_rng(0)), np.zeros((2, 3)))
    assert value == 0.0
    np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("name", ["mse", "softmax_cross_entropy", "sigmoid_squared_error", "binary_cross_entropy"])
def test_reduction_is_checked(name):
    component = plugins.manager().registry.get("loss", name)
    with pytest.raises(ConfigError) as error:
        build(component.config_class, {"reduction": "max"}, prefix="loss")
    assert str(error.value) == "loss.reduction='max': expected one of: mean, sum"
