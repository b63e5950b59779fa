"""The shapes of the things plugins provide and the engine passes around.

Arrays are batch-major: inputs ``(B, T, I)``, hidden states ``(B, T, H)``.
A recurrent *state* is opaque to the engine (an array for an Elman cell, a
pair for an LSTM); only the cell that made it looks inside.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

State = Any
Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class Batch:
    """One optimizer update's worth of data.

    ``new_sequence`` False means the sequences continue the previous batch's,
    so the engine carries the final state over (truncated BPTT); True starts
    from the zero state.
    """

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray | None = None
    new_sequence: bool = True


@dataclass(frozen=True)
class CellGradients:
    """What a cell's backward pass returns."""

    params: Params  # dL/dtheta for each of the cell's parameters
    # dL/dx_k: (B, T, I), or a function that computes it when asked (the built-in cells defer it,
    # since a model whose inputs are data never needs it); read it with input_grads()
    inputs: np.ndarray | Callable[[], np.ndarray]
    state: State  # dL/ds_0, the gradient of the initial state
    states: np.ndarray  # dL/dh_k for every step k = 1..T: (B, T, H), the gradient flowing back in time
    cell_states: np.ndarray | None = None  # dL/dc_k likewise, for cells with a memory c (LSTM)

    def input_grads(self) -> np.ndarray:
        """dL/dx_k (B, T, I), computed now if the cell deferred it."""
        return self.inputs() if callable(self.inputs) else self.inputs


@dataclass(frozen=True)
class StepResult:
    """What a model's forward and backward pass over one batch produce."""

    loss: float
    grads: Params
    state: State
    state_grads: np.ndarray  # dL/dh_k for every step k: (B, T, H)
    cell_state_grads: np.ndarray | None = None  # dL/dc_k likewise, for cells with a memory c (LSTM)


@dataclass
class Evaluation:
    """What a task reports when evaluated: numbers, sampled outputs, pictures.

    A figure is a function that draws it (``functools.partial(draw, data)``) returning a matplotlib
    Figure, so that only a run that records figures draws them: an untracked run never imports
    matplotlib (a third of counting's untracked run went on figures nobody saw). The recorder calls it
    in the ``framework_evaluation`` hook, while the task is as it was evaluated. A Figure itself is
    taken too.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    samples: dict[str, str] = field(default_factory=dict)  # name -> text
    tables: dict[str, dict[str, list]] = field(default_factory=dict)  # name -> {column: values}
    figures: dict[str, Callable[[], Any]] = field(default_factory=dict)  # name -> draws a matplotlib Figure
    stop: bool = False  # ask the engine to stop training now (e.g. the task is solved)

    def drawn_figures(self) -> Iterator[tuple[str, Any]]:
        """(name, matplotlib Figure) for each of ``figures``, drawn one at a time as it is asked for."""
        for name, figure in self.figures.items():
            yield name, figure() if callable(figure) else figure


@dataclass(frozen=True)
class Reference:
    """A tutorial's result: in words (``accuracy = 1 on every pair``), and whether an evaluation's metrics reach it."""

    text: str
    reached: Callable[[Mapping[str, float]], bool]


class Cell(Protocol):
    """A recurrent cell: h_t = cell(x_t, h_{t-1}) over a whole sequence."""

    params: Params
    hidden_size: int

    def zero_state(self, batch_size: int) -> State:
        """The initial state s_0 = 0 for ``batch_size`` sequences."""

    def forward(self, x: np.ndarray, state: State) -> tuple[np.ndarray, State, Any]:
        """Run over ``x (B, T, I)`` from ``state``: (outputs h (B, T, H), final state, cache)."""

    def backward(self, cache: Any, d_outputs: np.ndarray, d_state: State | None) -> CellGradients:
        """BPTT from dL/dh (B, T, H) of the outputs and dL/d(final state) (None: 0)."""


@runtime_checkable
class ReportsStates(Protocol):
    """A cell that can say what its forward pass computed at every step: its states and, if it has any, its gates."""

    def states_and_gates(self, cache: Any) -> dict[str, np.ndarray]:
        """From the cache of :meth:`Cell.forward`: name -> (B, T, H), the hidden state ``h``, and for a gated cell its
        memory ``c`` and gates (``i``, ``f``, ``o`` of an LSTM; ``r``, ``z`` of a GRU)."""


class Loss(Protocol):
    """A loss on the model's raw outputs (logits for the softmax and sigmoid losses)."""

    def __call__(
        self, outputs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[float, np.ndarray]:
        """(L, dL/d outputs)."""

    def random_targets(self, outputs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Valid targets for ``outputs`` of this shape (the gradient check uses them)."""


class Optimizer(Protocol):
    """Updates parameters in place from their gradients, keeping its own state."""

    def step(self, params: Params, grads: Params, loss: float) -> None:
        """theta <- update(theta, dL/dtheta) for every named parameter, in place.

        ``loss`` is the loss these gradients belong to (iRprop+ compares it
        with the previous one; most optimizers ignore it).
        """


class Dataset(Protocol):
    """A source of training batches."""

    input_size: int

    def batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[Batch]:
        """An endless stream of batches; ``batch_size`` 0 means the whole data set."""


@runtime_checkable
class TutorialData(Protocol):
    """The options of a dataset that can draw its data as its tutorial's published code did (``generator``).

    With ``generator: tutorial`` the dataset factory's ``rng`` is the tutorial's stream, numpy's legacy
    generator after ``np.random.seed(seed)`` (:func:`framework.core.seeding.tutorial`), and the task gets the
    same stream as ``Parts.tutorial`` for its initial weights; the run must have the tutorial's settings.
    """

    generator: str  # "framework": the run's own streams; "tutorial": the tutorial's calls to the legacy generator

    def tutorial_settings(self) -> dict[str, Any]:
        """The settings the tutorial's draws depend on, with its values: dotted keys (``train.batch_size``), or a
        component group (``cell``) for the component's name."""


class Model(Protocol):
    """A trainable network with an explicit backward pass."""

    params: Params

    def loss_and_grads(self, batch: Batch, state: State | None) -> StepResult:
        """Forward over ``batch`` from ``state`` (None: zero state), loss, and BPTT."""


class Task(Protocol):
    """A tutorial: a model on a dataset, with its metrics, samples and pictures.

    Optional attributes: ``metrics``, the names of its final evaluation's metrics (a configured objective is then
    checked before training); ``reference``, the tutorial's result (:class:`Reference`), which every run's end
    says whether it reached (framework.core.verdict).
    """

    model: Model
    objective: str  # the metric a sweeper optimises
    maximize: bool

    def trace(self, loss: float) -> dict[str, float]:
        """Cheap extra metrics recorded after every update, given its loss (e.g. the weights, a smoothed loss)."""

    def evaluate(self, step: int, history: Mapping[str, Sequence[float]], final: bool) -> Evaluation:
        """Metrics, samples and figures of the model now; ``final`` at the end of training."""


CellMaker = Callable[[int, int], Cell]


@dataclass(frozen=True)
class Parts:
    """What the engine hands a task factory: the chosen components, ready to use.

    ``make_cell(input_size, hidden_size)`` builds the chosen cell with its
    configured options; ``rng(name)`` gives the seeded random stream ``name``;
    ``tutorial`` is the tutorial's stream when the dataset draws as its tutorial
    did (``dataset.generator=tutorial``), else None.
    """

    dataset: Dataset
    make_cell: CellMaker
    loss: Loss
    rng: Callable[[str], np.random.Generator]
    dtype: np.dtype
    tutorial: np.random.RandomState | None = None  # the tutorial's stream, shared with the dataset (TutorialData)


@dataclass
class RunInfo:
    """A run as the observers see it."""

    task: str
    experiment: str
    config: dict[str, Any]
    overrides: list[str]
    steps: int
    run_name: str | None = None
    objective: str = "loss"  # the final metric returned to a sweeper
    maximize: bool = False  # its direction
    launch_dir: Path = field(default_factory=Path.cwd)  # where the user ran the command
    output_dir: Path | None = None  # the run's own folder, for checkpoints/ (None: none are written)
    resume: str | None = None  # the id of the tracked run this one continues
    data_files: dict[str, Path] = field(default_factory=dict)  # option key -> the data file it names (absolute)
    verdict: Any = None  # whether it reached the task's result (framework.core.verdict.Verdict), once trained
    links: dict[str, str] = field(default_factory=dict)  # observers may add (e.g. 'mlflow_run_id')


@runtime_checkable
class Predictor(Protocol):
    """A task whose trained network answers requests: the MLflow model ``model`` of its runs calls it.

    Requests and answers are columns, name -> one value per row (as :attr:`Evaluation.tables`);
    answer row i belongs to request row i. Tasks without ``predict`` log no model.
    """

    def example(self) -> dict[str, list]:
        """A typical request: its columns are the model's inputs (the input example of the MLflow model)."""

    def predict(self, request: Mapping[str, Sequence[Any]]) -> dict[str, list]:
        """The answers to ``request``; a value the network cannot take raises ValueError, in one line."""


@runtime_checkable
class Resumable(Protocol):
    """A task whose own state steers training or its per-step metrics (a smoothed loss, early stopping).

    Checkpoints save it and a resumed run restores it (framework.core.checkpoint);
    tasks without these methods have no such state.
    """

    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """The state as named arrays."""

    def restore_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from a state returned by :meth:`checkpoint_state`."""
