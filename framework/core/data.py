"""Datasets held in memory as arrays."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from framework.core.protocols import Batch


class ArrayDataset:
    """Fixed sequences ``inputs (N, T, I)`` with their ``targets``.

    ``batches(0)`` yields the whole set every step (full batch);
    ``batches(b)`` yields shuffled minibatches of b sequences, epoch after
    epoch, dropping the last incomplete one; ``batches(1)`` is one sequence
    per step. Every batch starts from the zero state.
    """

    def __init__(self, inputs: np.ndarray, targets: np.ndarray) -> None:
        self.inputs, self.targets = inputs, targets
        self.input_size = inputs.shape[-1]

    def batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[Batch]:
        """An endless stream of batches (see the class docstring)."""
        count = len(self.inputs)
        if batch_size == 0 or batch_size >= count:
            whole = Batch(self.inputs, self.targets)
            while True:
                yield whole
        while True:
            order = rng.permutation(count)
            for start in range(0, count - batch_size + 1, batch_size):
                chosen = order[start : start + batch_size]
                yield Batch(self.inputs[chosen], self.targets[chosen])
