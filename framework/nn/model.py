"""A model that reads a sequence with a cell and scores its states with a loss."""

from __future__ import annotations

import numpy as np

from framework.core.protocols import Batch, Cell, Loss, ReportsStates, State, StepResult
from framework.nn.layers import Dense


class RecurrentModel:
    """h = cell(x);  y = readout(h) (or h itself);  L = loss(y, targets).

    ``last_only``: only the last step is scored (y = readout(h_T)); otherwise
    every step is (y_t = readout(h_t)). Parameters are named ``cell.<name>``
    and ``readout.<name>``; they are the layers' own arrays, so an optimizer
    that updates them in place updates the layers.
    """

    def __init__(self, cell: Cell, loss: Loss, last_only: bool, readout: Dense | None = None) -> None:
        self.cell, self.loss, self.last_only, self.readout = cell, loss, last_only, readout
        self.params = {f"cell.{name}": array for name, array in cell.params.items()}
        if readout is not None:
            self.params.update({f"readout.{name}": array for name, array in readout.params.items()})

    def outputs(self, inputs: np.ndarray, state: State | None = None) -> tuple[np.ndarray, State, object]:
        """Forward pass: (y, final state, cache)."""
        state = self.cell.zero_state(inputs.shape[0]) if state is None else state
        h_all, final, cache = self.cell.forward(inputs, state)
        h = h_all[:, -1] if self.last_only else h_all
        y = h if self.readout is None else self.readout.forward(h)
        return y, final, (cache, h)

    def hidden_states(self, batch: Batch) -> dict[str, np.ndarray] | None:
        """The cell's states and gates at every step of a forward pass over ``batch`` from the zero state:
        name -> (B, T, H) (see :class:`ReportsStates`); None for a cell that does not report them."""
        if not isinstance(self.cell, ReportsStates):
            return None
        _, _, cache = self.cell.forward(batch.inputs, self.cell.zero_state(batch.inputs.shape[0]))
        return self.cell.states_and_gates(cache)

    def loss_and_grads(self, batch: Batch, state: State | None) -> StepResult:
        """L on ``batch`` and its gradients by BPTT through the readout and the cell."""
        y, final, (cache, h) = self.outputs(batch.inputs, state)
        loss, dy = self.loss(y, batch.targets, batch.mask)
        grads = {}
        if self.readout is None:
            dh = dy
        else:
            readout_grads, dh = self.readout.backward(h, dy)
            grads.update({f"readout.{name}": g for name, g in readout_grads.items()})
        if self.last_only:
            d_outputs = np.zeros(batch.inputs.shape[:2] + dh.shape[-1:], dtype=dh.dtype)
            d_outputs[:, -1] = dh
        else:
            d_outputs = dh
        cell_grads = self.cell.backward(cache, d_outputs, None)
        grads.update({f"cell.{name}": g for name, g in cell_grads.params.items()})
        return StepResult(
            loss=loss,
            grads=grads,
            state=final,
            state_grads=cell_grads.states,
            cell_state_grads=getattr(cell_grads, "cell_states", None),  # a third-party cell may not have it
        )
