"""Optimizers: update parameters in place from their gradients."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framework.config import ConfigError, param
from framework.hookspecs import hookimpl
from framework.protocols import Params


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
    """g = dL/dtheta + lambda theta;  v = mu v + g;  theta <- theta - eta (g + mu v if Nesterov else v).

    With mu = 0 this is theta <- theta - eta g. (PyTorch's torch.optim.SGD.)
    """

    def __init__(self, config: SGDConfig) -> None:
        self.config = config
        self.velocity: Params = {}

    def step(self, params: Params, grads: Params, loss: float) -> None:
        c = self.config
        for name, theta in params.items():
            g = grads[name] + c.weight_decay * theta if c.weight_decay else grads[name]
            if c.momentum:
                v = self.velocity.get(name)
                v = self.velocity[name] = g.copy() if v is None else c.momentum * v + g
                g = g + c.momentum * v if c.nesterov else v
            theta -= c.lr * g


RPROP_VARIANTS = ("plain", "rprop-", "rprop+", "irprop-")


@dataclass
class RpropConfig:
    """Resilient backpropagation: a step size per weight, adapted from the gradient's sign."""

    variant: str = param(
        "irprop-",
        choices=RPROP_VARIANTS,
        doc="plain: the counting tutorial's rule; rprop-/rprop+: without/with weight backtracking; "
        "irprop-: skip the update after a sign change (PyTorch's Rprop)",
    )
    step_init: float = param(0.01, gt=0, doc="initial step size Delta_0 of every weight")
    eta_plus: float = param(1.2, gt=1, doc="step growth factor eta+ when the gradient keeps its sign")
    eta_minus: float = param(0.5, gt=0, lt=1, doc="step shrink factor eta- when the gradient flips sign")
    step_min: float = param(1e-6, ge=0, doc="smallest step size")
    step_max: float | None = param(50.0, gt=0, doc="largest step size (null: unbounded)")

    def __post_init__(self) -> None:
        if self.step_max is not None and self.step_max <= self.step_min:
            raise ConfigError("step_max", self.step_max, f"a number > step_min ({self.step_min})")


class Rprop:
    """Rprop: each weight moves by its own step Delta against the sign of its gradient.

    With p = g_t * g_{t-1}:  Delta <- Delta eta+ if p > 0,  Delta eta- if p < 0;
    theta <- theta - sign(g_t) Delta. Variants differ after a sign change (p < 0):
    ``rprop-`` moves anyway; ``irprop-`` sets g_t = 0 (no move, no flip next time);
    ``rprop+`` undoes the previous move and sets g_t = 0. ``plain`` is the
    counting tutorial's rule: Delta grows iff sign(g_t) == sign(g_{t-1}), else
    shrinks (also on the first step), and theta always moves.
    """

    def __init__(self, config: RpropConfig) -> None:
        self.config = config
        self.prev: Params = {}  # previous gradient (its sign, for ``plain``)
        self.steps: Params = {}
        self.last_move: Params = {}

    def step(self, params: Params, grads: Params, loss: float) -> None:
        c = self.config
        for name, theta in params.items():
            g = grads[name]
            prev = self.prev.get(name, np.zeros_like(theta))
            delta = self.steps.get(name, np.full_like(theta, c.step_init))
            if c.variant == "plain":
                sign = np.sign(g)
                delta = delta * np.where(sign == prev, c.eta_plus, c.eta_minus)
                g = sign
            else:
                product = g * prev
                delta = delta * np.where(product > 0, c.eta_plus, np.where(product < 0, c.eta_minus, 1.0))
                flipped = product < 0
                if c.variant != "rprop-":
                    g = np.where(flipped, 0.0, g)
            delta = np.clip(delta, c.step_min, c.step_max)
            move = -np.sign(g) * delta
            if c.variant == "rprop+":
                move = np.where(flipped, -self.last_move.get(name, np.zeros_like(theta)), move)
                self.last_move[name] = np.where(flipped, 0.0, move)
            theta += move
            self.prev[name], self.steps[name] = (np.sign(g) if c.variant == "plain" else g), delta


@hookimpl
def framework_register_optimizers(register) -> None:
    """The built-in optimizers."""
    register("sgd", SGD, SGDConfig)
    register("rprop", Rprop, RpropConfig)
