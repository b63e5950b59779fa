"""Optimizers: update parameters in place from their gradients."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from framework.core.config import param
from framework.core.errors import ConfigError
from framework.core.hookspecs import hookimpl
from framework.core.protocols import Params


def l2(grad: np.ndarray, theta: np.ndarray, weight_decay: float) -> np.ndarray:
    """g + lambda theta: the L2 penalty's gradient added to the loss's (a new array when lambda > 0)."""
    return grad + weight_decay * theta if weight_decay else grad


@dataclass
class SGDConfig:
    """Gradient descent with optional momentum, Nesterov momentum and weight decay."""

    lr: float = param(0.01, gt=0, doc="learning rate eta")
    momentum: float = param(0.0, ge=0, lt=1, doc="momentum mu (0: plain gradient descent)")
    nesterov: bool = param(False, doc="use Nesterov momentum (needs momentum > 0)")
    weight_decay: float = param(0.0, ge=0, doc="L2 penalty lambda added to the gradient")

    def __post_init__(self) -> None:
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov", self.nesterov, "false when momentum is 0")


class SGD:
    """g = dL/dtheta + lambda theta;  v <- mu v + g (v_0 = 0);  theta <- theta - eta (g + mu v if Nesterov else v).

    With mu = 0 this is theta <- theta - eta g. This is torch.optim.SGD with
    dampening=0 (its default, and what its Nesterov momentum requires).
    """

    def __init__(self, config: SGDConfig) -> None:
        self.config = config
        self.velocity: Params = {}

    def step(self, params: Params, grads: Params, loss: float) -> None:
        c = self.config
        for name, theta in params.items():
            g = l2(grads[name], theta, c.weight_decay)
            if c.momentum:
                v = self.velocity.setdefault(name, np.zeros_like(theta))
                v *= c.momentum
                v += g
                g = g + c.momentum * v if c.nesterov else v
            theta -= c.lr * g


RPROP_VARIANTS = ("plain", "rprop-", "rprop+", "irprop-", "irprop+")


@dataclass
class RpropConfig:
    """Resilient backpropagation: a step size per weight, adapted from the gradient's sign."""

    variant: str = param(
        "irprop-",
        choices=RPROP_VARIANTS,
        doc="plain: the counting tutorial's rule; rprop-/rprop+: without/with weight backtracking; "
        "irprop-: no move after a sign change (what torch.optim.Rprop computes); "
        "irprop+: backtrack after a sign change only if the loss increased",
    )
    step_init: float = param(0.01, gt=0, doc="initial step size Delta_0 of every weight (torch's lr)")
    eta_plus: float = param(1.2, gt=1, doc="step growth factor eta+ when the gradient keeps its sign")
    eta_minus: float = param(0.5, gt=0, lt=1, doc="step shrink factor eta- when the gradient flips sign")
    step_min: float = param(1e-6, ge=0, doc="smallest step size")
    step_max: float | None = param(50.0, gt=0, doc="largest step size (null: unbounded)")

    def __post_init__(self) -> None:
        if self.step_max is not None and self.step_max <= self.step_min:
            raise ConfigError("step_max", self.step_max, f"a number > step_min ({self.step_min})")


class Rprop:
    """Rprop: each weight moves by its own step Delta against the sign of its gradient.

    With p = g_t * g_{t-1}:  Delta <- clip(Delta eta+, Delta_min, Delta_max) if p > 0,
    clip(Delta eta-, Delta_min, Delta_max) if p < 0, unchanged if p = 0;
    theta <- theta - sign(g_t) Delta. The variants (named as in Igel & Huesken,
    "Improving the Rprop learning algorithm", 2000) differ after a sign change (p < 0):

    - ``rprop-`` moves anyway;
    - ``rprop+`` undoes the previous move (theta <- theta - Delta theta_{t-1}) and sets
      g_t = 0, so that the next step counts as p = 0: the original RPROP of
      Riedmiller & Braun (1993), "with weight-backtracking";
    - ``irprop-`` sets g_t = 0: no move now, no sign change next time;
    - ``irprop+`` sets g_t = 0 and undoes the previous move only if the loss
      increased (E_t > E_{t-1}, the ``loss`` passed to :meth:`step`).

    torch.optim.Rprop computes ``irprop-`` (its update is g_t <- 0 on p < 0, no
    backtracking), although its documentation calls it "the resilient
    backpropagation algorithm" and cites Riedmiller & Braun (1993), whose rule is
    ``rprop+`` here. With our defaults (Delta_0 = 0.01 = torch's lr, eta = (0.5, 1.2),
    Delta in [1e-6, 50]) ``irprop-`` equals torch.optim.Rprop() step by step.

    ``plain`` is the counting tutorial's rule: Delta grows iff sign(g_t) == sign(g_{t-1}),
    else shrinks (also on the first step), and theta always moves.
    """

    def __init__(self, config: RpropConfig) -> None:
        self.config = config
        self.prev: Params = {}  # previous gradient (its sign, for ``plain``); 0 after a sign change
        self.steps: Params = {}  # Delta
        self.last_move: Params = {}  # Delta theta_{t-1}, for the backtracking variants
        self.prev_loss: float | None = None

    def step(self, params: Params, grads: Params, loss: float) -> None:
        c = self.config
        backtrack = c.variant == "rprop+" or (
            c.variant == "irprop+" and self.prev_loss is not None and loss > self.prev_loss
        )
        self.prev_loss = loss
        for name, theta in params.items():
            if name not in self.steps:
                self.steps[name] = np.full_like(theta, c.step_init)
                self.prev[name] = np.zeros_like(theta)
                self.last_move[name] = np.zeros_like(theta)
            g, prev, delta = grads[name], self.prev[name], self.steps[name]
            if c.variant == "plain":
                g = np.sign(g)
                delta *= np.where(g == prev, c.eta_plus, c.eta_minus)
            else:
                product = g * prev
                flipped = product < 0
                delta *= np.where(product > 0, c.eta_plus, np.where(flipped, c.eta_minus, 1.0))
                if c.variant != "rprop-":
                    g = np.where(flipped, 0.0, g)
            np.clip(delta, c.step_min, c.step_max, out=delta)
            move = -np.sign(g) * delta
            if c.variant in ("rprop+", "irprop+"):
                last = self.last_move[name]
                if backtrack:
                    move = np.where(flipped, -last, move)
                last[...] = np.where(flipped, 0.0, move)
            theta += move
            prev[...] = g


@dataclass
class AdagradConfig:
    """Adagrad: steps scaled by the root of each weight's sum of squared gradients."""

    lr: float = param(0.01, gt=0, doc="learning rate eta")
    lr_decay: float = param(0.0, ge=0, doc="eta_t = eta / (1 + (t - 1) lr_decay) at update t = 1, 2, ...")
    weight_decay: float = param(0.0, ge=0, doc="L2 penalty lambda added to the gradient")
    initial_accumulator_value: float = param(0.0, ge=0, doc="G_0, the sum of squares before the first update")
    eps: float = param(1e-10, ge=0, doc="added to sqrt(G) in the denominator")

    def __post_init__(self) -> None:
        if self.eps == 0 and self.initial_accumulator_value == 0:
            raise ConfigError("eps", self.eps, "a number > 0 when initial_accumulator_value is 0 (sqrt(G) may be 0)")


class Adagrad:
    """g = dL/dtheta + lambda theta;  G <- G + g^2;  theta <- theta - eta_t g / (sqrt(G) + eps).

    G starts at ``initial_accumulator_value`` and eta_t = eta / (1 + (t - 1) lr_decay)
    at the t-th update: torch.optim.Adagrad. TensorFlow 1's AdagradOptimizer (the
    echo tutorial's) is theta <- theta - eta g / sqrt(G) with G_0 = 0.1: use
    ``initial_accumulator_value=0.1 eps=0``.
    """

    def __init__(self, config: AdagradConfig) -> None:
        self.config = config
        self.sums: Params = {}
        self.counts: dict[str, int] = {}

    def step(self, params: Params, grads: Params, loss: float) -> None:
        c = self.config
        for name, theta in params.items():
            if name not in self.sums:
                self.sums[name] = np.full_like(theta, c.initial_accumulator_value)
            t = self.counts[name] = self.counts.get(name, 0) + 1
            g = l2(grads[name], theta, c.weight_decay)
            G = self.sums[name]
            G += g * g
            theta -= c.lr / (1 + (t - 1) * c.lr_decay) * (g / (np.sqrt(G) + c.eps))


@dataclass
class RMSpropConfig:
    """RMSprop: steps scaled by a running root mean square of each weight's gradient."""

    lr: float = param(0.01, gt=0, doc="learning rate eta")
    alpha: float = param(0.99, ge=0, lt=1, doc="smoothing constant of the running averages")
    eps: float = param(1e-8, gt=0, doc="added to the root mean square in the denominator")
    weight_decay: float = param(0.0, ge=0, doc="L2 penalty lambda added to the gradient")
    momentum: float = param(0.0, ge=0, lt=1, doc="momentum mu of the scaled step (0: none)")
    centered: bool = param(False, doc="divide by the standard deviation (subtract the running mean's square)")


class RMSprop:
    """g = dL/dtheta + lambda theta;  v <- alpha v + (1 - alpha) g^2;  s = sqrt(v) + eps.

    Centered: m <- alpha m + (1 - alpha) g and s = sqrt(v - m^2) + eps.
    Without momentum theta <- theta - eta g / s; with momentum mu,
    b <- mu b + g / s and theta <- theta - eta b. Every state starts at 0:
    torch.optim.RMSprop.
    """

    def __init__(self, config: RMSpropConfig) -> None:
        self.config = config
        self.square_avg: Params = {}
        self.grad_avg: Params = {}
        self.buffer: Params = {}

    def step(self, params: Params, grads: Params, loss: float) -> None:
        c = self.config
        for name, theta in params.items():
            g = l2(grads[name], theta, c.weight_decay)
            v = self.square_avg.setdefault(name, np.zeros_like(theta))
            v *= c.alpha
            v += (1 - c.alpha) * g * g
            if c.centered:
                m = self.grad_avg.setdefault(name, np.zeros_like(theta))
                m += (1 - c.alpha) * (g - m)
                s = np.sqrt(v - m * m) + c.eps
            else:
                s = np.sqrt(v) + c.eps
            if c.momentum:
                b = self.buffer.setdefault(name, np.zeros_like(theta))
                b *= c.momentum
                b += g / s
                theta -= c.lr * b
            else:
                theta -= c.lr * (g / s)


@dataclass
class AdamConfig:
    """Adam: bias-corrected running averages of the gradient and its square (L2 weight decay, not AdamW)."""

    lr: float = param(1e-3, gt=0, doc="learning rate eta")
    beta1: float = param(0.9, ge=0, lt=1, doc="decay rate of the running mean of the gradient")
    beta2: float = param(0.999, ge=0, lt=1, doc="decay rate of the running mean of the squared gradient")
    eps: float = param(1e-8, gt=0, doc="added to sqrt(v_hat) in the denominator")
    weight_decay: float = param(0.0, ge=0, doc="L2 penalty lambda added to the gradient (Adam's, not AdamW's)")
    amsgrad: bool = param(False, doc="divide by the largest v seen so far (AMSGrad)")


class Adam:
    """g = dL/dtheta + lambda theta;  m <- beta1 m + (1 - beta1) g;  v <- beta2 v + (1 - beta2) g^2;

    theta <- theta - eta / (1 - beta1^t) m / (sqrt(v_max) / sqrt(1 - beta2^t) + eps)

    at the t-th update, with m = v = 0 at the start and v_max = v, or with
    AMSGrad v_max <- max(v_max, v). This is torch.optim.Adam (weight decay as an
    L2 term in the gradient; AdamW decays theta directly instead).
    """

    def __init__(self, config: AdamConfig) -> None:
        self.config = config
        self.mean: Params = {}
        self.square: Params = {}
        self.max_square: Params = {}
        self.counts: dict[str, int] = {}

    def step(self, params: Params, grads: Params, loss: float) -> None:
        c = self.config
        for name, theta in params.items():
            t = self.counts[name] = self.counts.get(name, 0) + 1
            g = l2(grads[name], theta, c.weight_decay)
            m = self.mean.setdefault(name, np.zeros_like(theta))
            v = self.square.setdefault(name, np.zeros_like(theta))
            m += (1 - c.beta1) * (g - m)
            v *= c.beta2
            v += (1 - c.beta2) * g * g
            if c.amsgrad:
                v_max = self.max_square.setdefault(name, np.zeros_like(theta))
                v = np.maximum(v_max, v, out=v_max)
            denom = np.sqrt(v) / math.sqrt(1 - c.beta2**t) + c.eps
            theta -= c.lr / (1 - c.beta1**t) * (m / denom)


@hookimpl
def framework_register_optimizers(register) -> None:
    """The built-in optimizers."""
    register("sgd", SGD, SGDConfig)
    register("rprop", Rprop, RpropConfig)
    register("adagrad", Adagrad, AdagradConfig)
    register("rmsprop", RMSprop, RMSpropConfig)
    register("adam", Adam, AdamConfig)
