"""The echo tutorial (docs/tasks.md, "echo"): an RNN repeats its input a few steps later.

    h_t = tanh(x_t Wx + h_{t-1} Wh + b),   p_t = softmax(h_t W2 + b2),   L = -mean_t log p_t[y_t]

with y_t = x_{t - echo_step}. [x_t, h_{t-1}] W of the tutorial (Hallstroem, "How to
build a Recurrent Neural Network in TensorFlow") is x_t Wx + h_{t-1} Wh: W's first row
is Wx (1, 4), its other rows Wh (4, 4); W and W2 start uniform on [0, 1), the biases at 0.

Truncated BPTT: a random binary series is cut into ``train.batch_size`` contiguous rows
(5 in the tutorial) and each row into windows of ``window`` steps (the tutorial's
truncated_backprop_length, 15). One update per window; the state at the end of a window
starts the next one without being back-propagated through, and is reset to 0 when a new
series starts. A new series is drawn every epoch, so one epoch is
total_length // rows // window windows (666 in the tutorial).

Epochs and train.steps: ``task.epochs`` sets the recipe's train.steps = epochs x windows
per epoch and train.eval_every = windows per epoch (evaluate after every epoch), through
the interpolation ``${echo_windows:...}`` registered here; an explicit ``train.steps=N``
(or ``train.eval_every``) still wins, so any run can be shortened.

Stopping: the reference run stops once the echo is learnt, i.e. ``accuracy`` >= 0.999
on a fresh series after 2 epochs in a row (``task.stop_accuracy``, ``task.patience``),
at most ``task.epochs`` = 10. Trained on, the tutorial's recipe is not stable: with
seed 1 it learns the echo in the first epoch, and the loss spike of the fourth series
(an Adagrad step of 0.3 / sqrt(G) on a first window from the zero state) throws it back
to the chance plateau (loss ln 2) for good. ``task.stop_accuracy=null task.epochs=100``
is the tutorial's full run.

Other cells: any cell reads the series (``cell=lstm``, ``cell=gru``; the U(0, 1) initialisation
is the recipe's for the tanh cell only). With ``cell=lstm`` the forget gate starts open,
``cell.forget_bias=1`` (its recipe for echo, plugins/echo.py): with 0 the LSTM learns no longer
echoes than the tanh cell (docs/gradient-flow.md, "The long-dependency experiment").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from framework.core.config import param
from framework.core.data import generator_param
from framework.core.errors import ConfigError
from framework.core.hidden import Tracked, tracking, tracking_table, unit_correlations
from framework.core.hookspecs import hookimpl
from framework.core.protocols import Batch, Evaluation, Params, Parts, Reference
from framework.core.registry import Recipe
from framework.nn.init import InitConfig
from framework.nn.layers import Dense
from framework.nn.model import RecurrentModel

CLASSES = 2  # a bit is 0 or 1
ROWS = 5  # the tutorial's batch_size: rows of a series, one sequence of a batch each
EPOCHS = 100  # the tutorial's series; the run stops once the echo is learnt (every seed 0-19 has by epoch 60)
READOUT_INIT = InitConfig(scheme="uniform", low=0.0, high=1.0)  # W2 = np.random.rand(4, 2)


def windows_per_epoch(total_length: int, rows: int, window: int) -> int:
    """Updates per series: floor(floor(total_length / rows) / window) (50000 // 5 // 15 = 666)."""
    return total_length // rows // window


def echo_windows(total_length: int, rows: int, window: int, epochs: int) -> int:
    """The ``${echo_windows:...}`` interpolation: epochs x windows per epoch, at least 1.

    Never raises (an interpolation error would name ``train.steps``, not the bad value): impossible layouts
    are refused in one line by :meth:`EchoSeries.batches`, a value that is no integer (``task.epochs=[1,2]``)
    by the settings' checks, which name it.
    """
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (total_length, rows, window, epochs)):
        return 1
    return max(epochs * windows_per_epoch(total_length, max(rows, 1), max(window, 1)), 1)


OmegaConf.register_new_resolver("echo_windows", echo_windows, replace=True)


def echo_series(
    total_length: int, echo_step: int, rows: int, rng: np.random.Generator, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """x (rows, n, 1) with x_k ~ Bernoulli(1/2); targets y (rows, n) with y_k = x_{k - echo_step}.

    The shift is over the whole series (y_k = 0 for k < echo_step), then the series is cut
    into ``rows`` contiguous rows of n = total_length // rows, as the tutorial's
    ``np.roll`` then ``reshape``: the first echo_step targets of a row echo the end of the
    previous row, which that row never reads.
    """
    n = total_length // rows
    bits = rng.integers(0, CLASSES, size=rows * n)
    echo = np.concatenate([np.zeros(echo_step, dtype=bits.dtype), bits[: len(bits) - echo_step]])
    return bits.reshape(rows, n, 1).astype(dtype), echo.reshape(rows, n)


@dataclass
class EchoSeriesConfig:
    """A random binary series and its echo, cut into rows and windows for truncated BPTT."""

    total_length: int = param(50000, ge=1, doc="bits per series; a new series is drawn every epoch")
    echo_step: int = param(3, ge=1, doc="the target is the input delayed by this many steps")
    window: int = param(15, ge=2, doc="truncated_backprop_length: steps per window (one update); > echo_step")
    generator: str = generator_param(
        "the weights W = np.random.rand(state_size + 1, state_size) and W2 = np.random.rand(state_size, 2), then "
        "every epoch's series np.random.choice(2, total_length, p=[0.5, 0.5])"
    )

    def __post_init__(self) -> None:
        if self.window <= self.echo_step:
            raise ConfigError(
                "window", self.window, f"an integer > echo_step ({self.echo_step}): a window must see what it echoes"
            )

    def tutorial_settings(self) -> dict[str, Any]:
        """The tutorial's series of 50000 bits in 5 rows, read by its tanh cell."""
        return {"dataset.total_length": 50000, "train.batch_size": ROWS, "cell": "rnn"}


class EchoSeries:
    """The training stream: a new series every epoch, served window by window.

    With the tutorial's stream ``tutorial``, every epoch's series is the tutorial's (:meth:`tutorial_series`).
    """

    input_size = 1

    def __init__(
        self, config: EchoSeriesConfig, dtype: np.dtype, tutorial: np.random.RandomState | None = None
    ) -> None:
        self.config, self.dtype, self.tutorial = config, dtype, tutorial

    def series(self, rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A fresh series cut into ``rows`` rows: inputs (rows, n, 1), integer targets (rows, n)."""
        return echo_series(self.config.total_length, self.config.echo_step, rows, rng, self.dtype)

    def tutorial_series(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """The tutorial's generateData(), drawn from its stream: x (rows, n, 1), y (rows, n) as :meth:`series`."""
        x = np.array(self.tutorial.choice(2, self.config.total_length, p=[0.5, 0.5]))
        y = np.roll(x, self.config.echo_step)
        y[0 : self.config.echo_step] = 0
        x = x.reshape((rows, -1))
        y = y.reshape((rows, -1))
        return x[..., None].astype(self.dtype), y

    def batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[Batch]:
        """Window j of every row, j = 0, 1, ...; the state is reset (new_sequence) only at j = 0."""
        window = self.config.window
        if batch_size < 1:
            raise ConfigError("train.batch_size", batch_size, "an integer >= 1: the rows the series is cut into")
        windows = windows_per_epoch(self.config.total_length, batch_size, window)
        if windows < 1:
            row = self.config.total_length // batch_size
            raise ConfigError("dataset.window", window, f"an integer <= the row length {row} (total_length / rows)")
        while True:
            if self.tutorial is None:
                inputs, targets = self.series(batch_size, rng)
            else:
                inputs, targets = self.tutorial_series(batch_size)
            for j in range(windows):
                steps = slice(j * window, (j + 1) * window)
                yield Batch(inputs[:, steps], targets[:, steps], new_sequence=j == 0)


def make_echo_series(
    config: EchoSeriesConfig, rng: np.random.Generator | np.random.RandomState, dtype: np.dtype
) -> EchoSeries:
    """The echo stream; its series come from the batch stream's generator (one per epoch).

    x_k ~ Bernoulli(1/2), y_k = x_{k - echo_step} (0 for k < echo_step), cut into rows then windows.
    ``generator=tutorial``: from ``rng``, the tutorial's stream, drawn as the tutorial's generateData().
    """
    return EchoSeries(config, dtype, rng if config.generator == "tutorial" else None)


def echo_accuracy(predictions: np.ndarray, targets: np.ndarray, echo_step: int) -> float:
    """mean [argmax p_t = y_t] over the positions t >= echo_step of each row (the others echo another row)."""
    return float(np.mean(predictions[:, echo_step:] == targets[:, echo_step:]))


def bit_text(row: np.ndarray) -> str:
    """Bits as text: [0, 1, 1] -> '011'."""
    return "".join(str(int(b)) for b in row)


def window_text(inputs: np.ndarray, targets: np.ndarray, predictions: np.ndarray, start: int) -> str:
    """Each row's input, target and predicted bits of one window, one line each."""
    lines = [f"window at steps {start}..{start + inputs.shape[1] - 1} of a fresh series"]
    for r in range(len(inputs)):
        right = int(np.sum(predictions[r] == targets[r]))
        lines += [
            f"row {r + 1}  input      {bit_text(inputs[r])}",
            f"       target     {bit_text(targets[r])}",
            f"       prediction {bit_text(predictions[r])}   ({right}/{len(targets[r])} right)",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class EchoConfig:
    """Echo a binary series echo_step steps later: h_t = tanh(x_t Wx + h_{t-1} Wh + b), p_t = softmax(h_t W2 + b2)."""

    state_size: int = param(4, ge=1, doc="hidden units (the tutorial's state_size)")
    epochs: int = param(
        EPOCHS,
        ge=1,
        doc="at most this many series (epochs): the recipe sets train.steps = epochs x windows per epoch",
    )
    stop_accuracy: float | None = param(
        0.999, gt=0, le=1, doc="stop once accuracy >= this after `patience` epochs in a row (null: train every epoch)"
    )
    patience: int = param(2, ge=1, doc="consecutive epochs at stop_accuracy that count as learnt")


def learnt(accuracies: Sequence[float], stop_accuracy: float | None, patience: int) -> bool:
    """True when the last ``patience`` accuracies are all >= ``stop_accuracy``."""
    recent = accuracies[-patience:]
    return stop_accuracy is not None and len(recent) == patience and min(recent) >= stop_accuracy


class EchoTask:
    """Metric ``accuracy`` (echoed bits right on a fresh series); the window text, loss and window figures."""

    objective = "accuracy"
    maximize = True
    metrics = ("accuracy",)
    reference = Reference(
        "accuracy >= 0.99: the bits echoed right on a fresh series; the tutorial: the echo learnt exactly",
        lambda metrics: metrics["accuracy"] >= 0.99,
    )

    def __init__(self, config: EchoConfig, parts: Parts) -> None:
        self.data: EchoSeries = parts.dataset
        cell = parts.make_cell(self.data.input_size, config.state_size)
        readout = Dense(config.state_size, CLASSES, True, READOUT_INIT, parts.rng("readout"), parts.dtype)
        self.model = RecurrentModel(cell, parts.loss, last_only=False, readout=readout)
        if parts.tutorial is not None:
            tutorial_weights(parts.tutorial, cell.params, readout.params)
        self.eval_rng = parts.rng("eval")
        self.config, self.dtype = config, parts.dtype
        self.accuracies: list[float] = []  # one per evaluation

    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """The accuracy of every evaluation so far: early stopping looks at the last ones."""
        return {"accuracies": np.array(self.accuracies, dtype=np.float64)}

    def restore_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from a checkpoint's accuracies."""
        self.accuracies = [float(a) for a in state["accuracies"]]

    def trace(self, loss: float) -> dict[str, float]:
        return {}

    def echoes(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """argmax_k p_t[k] for every step of every row, from the zero state: the bits echoed; and the hidden states
        h_t (rows, n, H) they are read from."""
        logits, _, (_, h) = self.model.outputs(inputs)
        return logits.argmax(axis=-1), h

    def example(self) -> dict[str, list]:
        """A request: bit strings to echo."""
        return {"bits": ["0110100111", "1000000001"]}

    def predict(self, request: Mapping[str, Sequence]) -> dict[str, list]:
        """``echo``: the bits the network echoes for each string of ``bits``, one per bit. Bit t echoes input
        bit t - echo_step, so the first echo_step bits are the network's guess of what came before (nothing)."""
        echoes = []
        for bits in request["bits"]:
            if not isinstance(bits, str) or not bits or set(bits) - {"0", "1"}:
                raise ValueError(f"bits={bits!r}: expected a non-empty string of 0s and 1s")
            x = np.array([float(b) for b in bits], dtype=self.dtype)[None, :, None]
            echoes.append(bit_text(self.echoes(x)[0][0]))
        return {"echo": echoes}

    def evaluate(self, step: int, history: Mapping[str, Sequence[float]], final: bool) -> Evaluation:
        """``accuracy`` on a fresh series of the tutorial's 5 rows; its last window as text (and figures at the end).

        Asks to stop once the echo is learnt (see :func:`learnt`). At the end also what the hidden state holds: the
        unit that tracks the input echo_step steps back (table ``hidden_units``, in figure ``window``).
        """
        inputs, targets = self.data.series(ROWS, self.eval_rng)
        predictions, h = self.echoes(inputs)
        window, echo_step = self.data.config.window, self.data.config.echo_step
        start = inputs.shape[1] // window * window - window  # the last whole window of the rows
        steps = slice(start, start + window)
        last = (inputs[:, steps, 0], targets[:, steps], predictions[:, steps])
        accuracy = echo_accuracy(predictions, targets, echo_step)
        self.accuracies.append(accuracy)
        evaluation = Evaluation(
            metrics={"accuracy": accuracy},
            samples={"window": window_text(*last, start)},
            stop=learnt(self.accuracies, self.config.stop_accuracy, self.config.patience),
        )
        if final:
            x, units = inputs[..., 0], h.shape[-1]
            back = f"the input {echo_step} steps back"
            tracked = tracking(h[:, echo_step:].reshape(-1, units), x[:, :-echo_step].reshape(-1), back)
            evaluation.tables["hidden_units"] = tracking_table([tracked])
            evaluation.figures = {
                "loss": partial(loss_figure, history["loss"]),
                "window": partial(window_figure, *last, start, h[:, steps], lag_correlations(h, x, echo_step), tracked),
            }
        return evaluation


def tutorial_weights(stream: np.random.RandomState, cell: Params, readout: Params) -> None:
    """The tutorial's W = np.random.rand(state_size + 1, state_size), then W2 = np.random.rand(state_size, 2):
    [x_t, h_{t-1}] W is x_t Wx + h_{t-1} Wh, so W's first row is the cell's Wx and its other rows Wh; W2 is the
    readout's W. The biases stay 0, as the tutorial's."""
    W = stream.rand(cell["Wh"].shape[0] + 1, cell["Wh"].shape[1])
    cell["Wx"][...], cell["Wh"][...] = W[:1], W[1:]
    readout["W"][...] = stream.rand(*readout["W"].shape)


def loss_figure(losses: Sequence[float]):
    """The loss of every window: it drops fast and spikes where each new series (epoch) starts."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4), layout="constrained")
    ax = figure.subplots()
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.6)
    ax.set(
        xlabel="window (update)",
        ylabel="mean cross-entropy",
        title="training loss (a spike where a new series resets the state)",
    )
    return figure


def lag_correlations(h: np.ndarray, x: np.ndarray, echo_step: int) -> np.ndarray:
    """r[u, k] = corr(h_t[u], x_(t-k)) of every unit u and lag k = 0..echo_step, over every row and every step
    t >= echo_step: h (rows, n, H), x (rows, n) -> (H, echo_step + 1)."""
    n, now = x.shape[1], h[:, echo_step:].reshape(-1, h.shape[-1])
    return np.stack(
        [unit_correlations(now, x[:, echo_step - k : n - k].reshape(-1)) for k in range(echo_step + 1)], axis=1
    )


def window_figure(
    inputs: np.ndarray,
    targets: np.ndarray,
    predictions: np.ndarray,
    start: int,
    hidden: np.ndarray,
    lags: np.ndarray,
    tracked: Tracked,
):
    """The tutorial's picture: for each row, bars of the input (blue), the target (red) and the prediction (green),
    with the hidden state h_t of every unit under them; beside them corr(h_t[u], x_(t-k)) of every unit and lag k,
    over the whole series: the unit that holds the bit echo_step steps back is marked.

    A row's bars and states share one axes (bars above 0, a unit's states in a band below) on a grid with fixed
    margins: the layout engine and twice the axes took 0.6 s of its 0.8 s.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    rows, units, echo_step = len(inputs), hidden.shape[-1], lags.shape[1] - 1
    figure = Figure(figsize=(11, 1.8 * rows + 1.0))
    grid = figure.add_gridspec(
        rows, 2, width_ratios=(4, 1.2), left=0.07, right=0.97, bottom=0.07, top=0.88, wspace=0.15, hspace=0.12
    )
    steps = np.arange(start, start + inputs.shape[1])
    series = (("input", "blue", 1.0, 1.0), ("target (echo)", "red", 0.8, 0.5), ("prediction", "green", 0.6, 0.3))
    unit_ticks = (-1.0 + (np.arange(units) + 0.5) / units) if units <= 8 else []
    for r in range(rows):
        ax = figure.add_subplot(grid[r, 0])
        for (label, color, width, height), bits in zip(series, (inputs[r], targets[r], predictions[r]), strict=True):
            ones = [(step - width / 2, width) for step in steps[np.asarray(bits) == 1]]  # one collection a series
            ax.broken_barh(ones, (0, height), color=color, label=label)
        extent = (start - 0.5, steps[-1] + 0.5, -1.0, 0.0)
        ax.imshow(hidden[r].T, aspect="auto", origin="lower", extent=extent, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set(xlim=extent[:2], ylim=(-1.0, 1.05), ylabel=f"row {r + 1}")
        ax.set_yticks(unit_ticks, [f"unit {u}" for u in range(len(unit_ticks))], fontsize=7)
        ax.tick_params(labelbottom=r == rows - 1)
    ax.set_xlabel("step (under the bars: each unit's $h_t$, red +1, blue -1)")
    figure.axes[0].legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=3, fontsize=8)
    memory = figure.add_subplot(grid[1:-1, 1] if rows > 2 else grid[:, 1])
    memory.imshow(lags, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-1, vmax=1)
    memory.set(xlabel="k: the input k steps back", ylabel="unit", xticks=range(echo_step + 1))
    memory.set_yticks(range(units) if units <= 8 else [])
    memory.set_title(
        f"corr($h_t$, $x_{{t-k}}$) (red +1, blue -1)\nunit {tracked.unit} holds $x_{{t-{echo_step}}}$: "
        f"r = {tracked.r:.2f}\nthe best direction of h: R = {tracked.direction_r:.2f}",
        fontsize=9,
    )
    memory.add_patch(Rectangle((echo_step - 0.5, tracked.unit - 0.5), 1, 1, fill=False, lw=2, color="black"))
    figure.suptitle("the last window of a fresh series, and the hidden state that echoes it")
    return figure


def recipe_windows(epochs: str) -> str:
    """The interpolation ``epochs`` x windows per epoch of the composed config."""
    return f"${{echo_windows:${{dataset.total_length}},${{train.batch_size}},${{dataset.window}},{epochs}}}"


@hookimpl
def framework_register_datasets(register) -> None:
    register("echo_series", make_echo_series, EchoSeriesConfig)


LEARN_FAST = {"task.epochs": 20, "task.patience": 1}


@hookimpl
def framework_register_tasks(register) -> None:
    register(
        "echo",
        EchoTask,
        EchoConfig,
        Recipe(
            dataset="echo_series",
            cell=("rnn", {"init": {"scheme": "uniform", "low": 0.0, "high": 1.0}}),  # W = np.random.rand(5, 4)
            loss="softmax_cross_entropy",
            # TensorFlow 1's AdagradOptimizer(0.3): G_0 = 0.1, no eps
            optim=("adagrad", {"lr": 0.3, "initial_accumulator_value": 0.1, "eps": 0.0}),
            train={
                "steps": recipe_windows("${task.epochs}"),
                "batch_size": ROWS,
                "eval_every": recipe_windows("1"),
            },
            # measured: every seed 0-19 reaches the result (docs/atlas.md). The tanh cell's U(0, 1) start saturates its
            # units: the other optimizers escape it by their step size; 25 rows (133 windows) an epoch, stopping at the
            # first epoch that learnt it
            pairings={
                "optim=sgd": {"optim.lr": 0.5, "train.clip_norm": 1.0, **LEARN_FAST},
                # Rprop needs a floor under its steps, or they collapse on the noisy plateau
                "optim=rprop": {
                    "optim.step_init": 0.1,
                    "optim.step_min": 0.02,
                    "optim.step_max": 1.0,
                    "train.batch_size": 50,
                    **LEARN_FAST,
                    "task.epochs": 30,
                },
                "optim=rmsprop": {"optim.lr": 0.03, "train.batch_size": 25, **LEARN_FAST},
                "optim=adam": {"optim.lr": 0.03, "train.batch_size": 25, **LEARN_FAST},
                # the forget gate starts open, f = sigmoid(1): the memory survives the steps to the echo
                "cell=lstm": {"cell.forget_bias": 1.0, **LEARN_FAST},
                "cell=gru": LEARN_FAST,
            },
        ),
    )
