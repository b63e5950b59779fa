"""Gradient clipping, applied in place after the backward pass."""

from __future__ import annotations

import math

import numpy as np

from framework.core.protocols import Params


def global_norm(grads: Params) -> float:
    """||g|| = sqrt(sum over every parameter of sum(g^2))."""
    return math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))


def clip_by_value(grads: Params, limit: float) -> None:
    """g <- min(max(g, -limit), limit), element-wise (the dinosaur tutorial's clipping)."""
    for g in grads.values():
        np.clip(g, -limit, limit, out=g)


def clip_by_norm(grads: Params, max_norm: float, norm: float) -> None:
    """g <- g * min(1, max_norm / (||g|| + 1e-6)), every parameter by the same factor.

    ``norm`` is ||g||, the :func:`global_norm` of ``grads``. This is
    torch.nn.utils.clip_grad_norm_: the gradients shrink once ||g|| > max_norm - 1e-6.
    """
    scale = max_norm / (norm + 1e-6)
    if scale < 1:
        for g in grads.values():
            g *= scale
