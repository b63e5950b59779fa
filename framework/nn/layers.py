"""Feed-forward layers the task models need around a cell."""

from __future__ import annotations

import numpy as np

from framework.core.protocols import Params
from framework.nn.functions import column_sums
from framework.nn.init import InitConfig, init_weights


class Dense:
    """z = h W + b over the last axis of h (any leading axes: (B, H) or (B, T, H)).

    Backward: dW = sum h^T dz, db = sum dz, dh = dz W^T.
    """

    def __init__(
        self, in_size: int, out_size: int, bias: bool, init: InitConfig, rng: np.random.Generator, dtype: np.dtype
    ) -> None:
        self.params: Params = {"W": init_weights((in_size, out_size), init, in_size, rng, dtype)}
        if bias:
            self.params["b"] = np.zeros(out_size, dtype=dtype)

    def forward(self, h: np.ndarray) -> np.ndarray:
        """z = h W + b, as one matmul over every leading position."""
        W = self.params["W"]
        z = h.reshape(-1, W.shape[0]) @ W  # a (B, T, H) @ (H, K) product would be B separate matmuls
        if "b" in self.params:
            z += self.params["b"]
        return z.reshape(*h.shape[:-1], W.shape[1])

    def backward(self, h: np.ndarray, dz: np.ndarray) -> tuple[Params, np.ndarray]:
        """(dL/dW, dL/db), dL/dh from dL/dz and the layer's input h."""
        W = self.params["W"]
        flat_h, flat_dz = h.reshape(-1, h.shape[-1]), dz.reshape(-1, dz.shape[-1])
        grads = {"W": flat_h.T @ flat_dz}
        if "b" in self.params:
            grads["b"] = column_sums(flat_dz)
        return grads, (flat_dz @ W.T).reshape(h.shape)


def one_hot(indices: np.ndarray, size: int, dtype: np.dtype) -> np.ndarray:
    """x[..., k] = 1 where k = indices[...], else 0: integer symbols to input vectors."""
    encoded = np.zeros((*indices.shape, size), dtype=dtype)
    np.put_along_axis(encoded, indices[..., None], 1.0, axis=-1)
    return encoded
