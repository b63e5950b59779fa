"""A model that reads a sequence with a cell and scores its states with a loss."""

from __future__ import annotations

import numpy as np

from framework.protocols import Batch, Cell, Loss, State, StepResult


class RecurrentModel:
    """y = h_T (``last_only``) or y_t = h_t for every t;  L = loss(y, targets).

    Its parameters are the cell's, named ``cell.<name>``; they are the cell's
    own arrays, so an optimizer that updates them in place updates the cell.
    """

    def __init__(self, cell: Cell, loss: Loss, last_only: bool) -> None:
        self.cell, self.loss, self.last_only = cell, loss, last_only
        self.params = {f"cell.{name}": array for name, array in cell.params.items()}

    def outputs(self, inputs: np.ndarray, state: State | None = None) -> tuple[np.ndarray, State, object]:
        """Forward pass: (y, final state, cache)."""
        state = self.cell.zero_state(inputs.shape[0]) if state is None else state
        h, final, cache = self.cell.forward(inputs, state)
        return (h[:, -1] if self.last_only else h), final, cache

    def loss_and_grads(self, batch: Batch, state: State | None) -> StepResult:
        """L on ``batch`` and its gradients by BPTT through the cell."""
        y, final, cache = self.outputs(batch.inputs, state)
        loss, dy = self.loss(y, batch.targets, batch.mask)
        if self.last_only:
            d_outputs = np.zeros(batch.inputs.shape[:2] + dy.shape[-1:], dtype=dy.dtype)
            d_outputs[:, -1] = dy
        else:
            d_outputs = dy
        grads = self.cell.backward(cache, d_outputs, None)
        return StepResult(
            loss=loss,
            grads={f"cell.{name}": g for name, g in grads.params.items()},
            state=final,
            state_grads=grads.states,
        )
