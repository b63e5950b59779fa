"""The dinosaur-names tutorial: a character-level language model (docs/tasks.md, "charlm").

    x_1 = 0,  x_{k+1} = onehot(c_k),   h_k = tanh(x_k Wax + h_{k-1} Waa + b),   p_k = softmax(h_k Wya + by)
    L = -sum_k log p_k[t_k]  over one name,  targets t = the name's characters + newline

One name per step (the names shuffled once, the last hidden state of one name
starting the next), every gradient clipped to [-5, 5], SGD with learning rate
0.01, 35000 steps. Every 2000 steps the model writes 7 names, character by
character; they begin as random letters and end as "...saurus". Any cell can
take the tanh cell's place (``cell=lstm``), any text with one example per line
the dinosaurs' (``dataset.path=...``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from importlib import resources
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np

from framework.core import seeding
from framework.core.config import param
from framework.core.data import available_memory, generator_param
from framework.core.errors import ConfigError
from framework.core.hidden import Tracked, tracking, tracking_table
from framework.core.hookspecs import hookimpl
from framework.core.protocols import Batch, Evaluation, Params, Parts, Reference
from framework.core.registry import Recipe
from framework.nn.functions import log_softmax
from framework.nn.init import InitConfig
from framework.nn.layers import Dense, one_hot
from framework.nn.model import RecurrentModel

NEWLINE = "\n"  # ends every name; symbol 0
MAX_NAMES = 1000  # names a model writes for one request, at most
TEXT_FILE = "a UTF-8 text file with one example per line"  # what dataset.path accepts
SMOOTH_START_CHARS = 7  # the tutorial's smoothed loss starts at 7 characters of a uniform guess: 7 log 27 = 23.07
VOWELS = "aeiou"
SHOWN_NAMES = 8  # names written out in the figure of the telling units, spread over the data


# -- the data ----------------------------------------------------------------


@dataclass
class NamesConfig:
    """Names, one per line of a UTF-8 text file (default: the tutorial's dinosaur names), lower-cased."""

    path: str | None = param(
        None,
        file=True,
        doc="a UTF-8 text file with one example per line (relative to the launch directory); null: dinos.txt",
    )
    generator: str = generator_param(
        "np.random.shuffle(examples) orders the names (the course seeds it with 0: seed=0); the weights and the "
        "names written use the course's own seeds (np.random.seed(1), np.random.seed(counter + seed))"
    )

    def tutorial_settings(self) -> dict[str, Any]:
        """The course's one name per step, read by its tanh cell."""
        return {"train.batch_size": 1, "cell": "rnn"}


class NamesDataset:
    """Every name as a character sequence: inputs x = [0] + onehot(name), targets t = name + newline.

    The vocabulary is newline (symbol 0) followed by the sorted characters of
    the text. The sequences are stored once, padded to the longest, with a mask
    m (N, T) that is 1 on each name's own steps.

    ``batches(1)`` is the tutorial: one name per step, in an order shuffled
    once and then repeated, each name starting from the final state of the
    previous one. ``batches(b)`` gives b padded, masked names from the zero
    state, reshuffled every epoch; ``batches(0)`` all of them every step.
    With the tutorial's stream ``tutorial``, the order is the course's (:meth:`course_order`).
    """

    def __init__(self, names: Sequence[str], dtype: np.dtype, tutorial: np.random.RandomState | None = None) -> None:
        self.names, self.tutorial = list(names), tutorial
        text = NEWLINE.join(self.names) + NEWLINE
        self.vocabulary = np.array([NEWLINE, *sorted(set(text) - {NEWLINE})])
        self.input_size = len(self.vocabulary)
        self.lengths = np.array([len(name) + 1 for name in self.names])  # characters + newline
        targets, self.mask = pad(self.encode(text), self.lengths)
        inputs = np.zeros((*targets.shape, self.input_size), dtype=dtype)
        inputs[:, 1:] = one_hot(targets[:, :-1], self.input_size, dtype) * self.mask[:, 1:, None]
        self.everything = Batch(inputs, targets, self.mask.astype(dtype))
        self.sequences = [(inputs[i : i + 1, :n], targets[i : i + 1, :n]) for i, n in enumerate(self.lengths)]

    def encode(self, text: str) -> np.ndarray:
        """The symbol of every character of ``text``: its index in the vocabulary."""
        order = np.argsort(self.vocabulary)
        return order[np.searchsorted(self.vocabulary[order], np.array(list(text)))]

    def decode(self, symbols: np.ndarray) -> str:
        """The characters of ``symbols`` up to the first newline."""
        return "".join(self.vocabulary[symbols]).split(NEWLINE)[0]

    def batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[Batch]:
        """An endless stream of batches (see the class docstring)."""
        if batch_size == 1:
            return self.one_name_per_step(rng)
        if batch_size == 0 or batch_size >= len(self.names):
            return itertools.repeat(self.everything)
        return self.minibatches(batch_size, rng)

    def one_name_per_step(self, rng: np.random.Generator) -> Iterator[Batch]:
        """The tutorial's order: the names shuffled once, then cycled; the state carried from name to name."""
        order = rng.permutation(len(self.names)) if self.tutorial is None else self.course_order()
        for step, index in enumerate(itertools.cycle(order)):
            inputs, targets = self.sequences[index]
            yield Batch(inputs, targets, new_sequence=step == 0)

    def course_order(self) -> list[int]:
        """The names' order in the course's model(): ``np.random.shuffle(examples)`` on the tutorial's stream (which
        the course seeds with 0), here on their indices: the same swaps."""
        order = list(range(len(self.names)))
        self.tutorial.shuffle(order)
        return order

    def padded(self, indices: np.ndarray) -> Batch:
        """The names ``indices``, padded to the longest of them, with their mask."""
        steps = self.lengths[indices].max()
        whole = self.everything
        return Batch(whole.inputs[indices, :steps], whole.targets[indices, :steps], whole.mask[indices, :steps])

    def minibatches(self, batch_size: int, rng: np.random.Generator) -> Iterator[Batch]:
        """Padded batches of ``batch_size`` names, reshuffled every epoch (the last incomplete one dropped)."""
        count = len(self.names)
        while True:
            order = rng.permutation(count)
            for start in range(0, count - batch_size + 1, batch_size):
                yield self.padded(order[start : start + batch_size])


def pad(symbols: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut the concatenated ``symbols`` into rows of ``lengths``, padded with 0: (N, T), and the mask (N, T)."""
    starts = np.cumsum(lengths) - lengths
    rows = np.repeat(np.arange(len(lengths)), lengths)
    columns = np.arange(len(symbols)) - np.repeat(starts, lengths)
    padded = np.zeros((len(lengths), lengths.max()), dtype=np.intp)
    padded[rows, columns] = symbols
    return padded, np.arange(lengths.max()) < lengths[:, None]


def read_names(path: Path, key: str) -> list[str]:
    """The non-blank lines of the UTF-8 file ``path``, stripped and lower-cased; a one-line error otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(key, str(path), f"{TEXT_FILE} (not UTF-8: {error.reason} at byte {error.start})") from None
    except OSError as error:
        raise ConfigError(key, str(path), f"{TEXT_FILE} ({error.strerror or type(error).__name__})") from None
    if (nul := text.find("\0")) >= 0:
        raise ConfigError(key, str(path), f"{TEXT_FILE} (it is binary: a NUL character at {nul})")
    names = [line.strip().lower() for line in text.splitlines() if line.strip()]
    if not names:
        raise ConfigError(key, str(path), f"{TEXT_FILE} (it has none)")
    return names


def check_fits_in_memory(names: Sequence[str], dtype: np.dtype, path: Path, key: str) -> None:
    """Refuse names whose padded one-hot inputs (names x longest + 1 x characters) exceed this machine's memory:
    a file that is one long line, not one example per line, would otherwise be killed by the system."""
    longest = max(map(len, names)) + 1
    needed = len(names) * longest * (len(set().union(*names)) + 1) * dtype.itemsize
    memory = available_memory()
    if needed > memory:
        size = f"{len(names)} example(s) of up to {longest} characters need {needed / 2**30:.1f} GiB"
        raise ConfigError(key, str(path), f"{TEXT_FILE} ({size}, more than the {memory / 2**30:.1f} GiB available)")


def make_names(config: NamesConfig, rng: np.random.Generator | np.random.RandomState, dtype: np.dtype) -> NamesDataset:
    """The names of ``config.path``, or the tutorial's dinosaurs shipped with this plugin: x = [0] + onehot(name),
    t = name + newline. ``generator=tutorial``: ``rng`` is the tutorial's stream, which orders the names."""
    tutorial = rng if config.generator == "tutorial" else None
    if config.path is None:
        with resources.as_file(resources.files("plugins") / "data" / "dinos.txt") as shipped:
            return NamesDataset(read_names(shipped, "dataset.path"), dtype, tutorial)
    path = Path(config.path)
    names = read_names(path, "dataset.path")
    check_fits_in_memory(names, np.dtype(dtype), path, "dataset.path")
    return NamesDataset(names, dtype, tutorial)


# -- the model and what it writes ---------------------------------------------


@dataclass
class CharLMConfig:
    """A character-level language model: h_k = cell(x_k, h_{k-1}), p(next character) = softmax(h_k Wya + by)."""

    hidden_size: int = param(50, ge=1, doc="hidden units n_a")
    readout_std: float = param(0.01, gt=0, doc="the readout weights Wya start from N(0, std^2), its bias by at 0")
    samples: int = param(7, ge=1, doc="names written at every evaluation")
    max_length: int = param(50, ge=1, doc="a written name ends at a newline or after this many characters")
    temperature: float = param(1.0, gt=0, doc="sampling temperature tau: p = softmax(z / tau); < 1 bolder, > 1 wilder")
    top_k: int = param(0, ge=0, doc="draw among the k most likely characters only; 0: among all")


@dataclass(frozen=True)
class Written:
    """The names the model wrote after ``step`` updates, and the smoothed loss then."""

    step: int
    smooth_loss: float
    names: list[str]

    def __str__(self) -> str:
        when = "before training" if self.step == 0 else f"step {self.step}"
        return f"{when} (smooth loss {self.smooth_loss:.2f}):\n" + "".join(f"  {name}\n" for name in self.names)


class CharLMTask:
    """Trains on names; metrics smooth_loss (every step) and bits_per_char; samples the names it writes."""

    objective = "bits_per_char"
    maximize = False
    metrics = ("bits_per_char",)
    reference = Reference(
        "bits_per_char <= 2.6 on the names (a uniform guess: 4.75); the tutorial: names ending in saurus, don, tor",
        lambda metrics: metrics["bits_per_char"] <= 2.6,
    )

    def __init__(self, config: CharLMConfig, parts: Parts) -> None:
        if not isinstance(parts.dataset, NamesDataset):
            raise ConfigError("dataset", type(parts.dataset).__name__, "a dataset of names (dataset=names)")
        self.config, self.data, self.dtype = config, parts.dataset, parts.dtype
        size = self.data.input_size
        cell = parts.make_cell(size, config.hidden_size)
        init = InitConfig(scheme="normal", std=config.readout_std)
        readout = Dense(config.hidden_size, size, True, init, parts.rng("readout"), parts.dtype)
        self.model = RecurrentModel(cell, parts.loss, last_only=False, readout=readout)
        self.smooth_loss = SMOOTH_START_CHARS * float(np.log(size))
        # u[i, k]: the random number of the k-th draw of name i, the same at every evaluation
        if parts.tutorial is None:
            self.uniforms = parts.rng("sampling").random((config.samples, config.max_length))
        else:
            course_weights(cell.params, readout.params)
            self.uniforms = course_uniforms(config.samples, config.max_length)
        self.written = [Written(0, self.smooth_loss, self.write())]  # the random letters of the start

    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """The smoothed loss, which the next steps continue (see framework.checkpoint)."""
        return {"smooth_loss": np.array(self.smooth_loss)}

    def restore_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue the smoothed loss of a checkpoint."""
        self.smooth_loss = float(state["smooth_loss"])

    def trace(self, loss: float) -> dict[str, float]:
        """The tutorial's printed loss: smooth <- 0.999 smooth + 0.001 loss."""
        self.smooth_loss = 0.999 * self.smooth_loss + 0.001 * loss
        return {"smooth_loss": self.smooth_loss}

    def evaluate(self, step: int, history: Mapping[str, Sequence[float]], final: bool) -> Evaluation:
        """The names written so far (sample ``names``); at the end also bits_per_char, the table names_by_step and
        what the hidden state holds: the units that track the end of a name and vowels (table ``hidden_units``,
        figure ``telling_units``)."""
        self.written.append(Written(step, self.smooth_loss, self.write()))
        samples = {"names": "\n".join(map(str, self.written))}
        if not final:
            return Evaluation(samples=samples)
        table = {
            "step": [w.step for w in self.written],
            "smooth_loss": [round(w.smooth_loss, 4) for w in self.written],
            "names": [", ".join(w.names) for w in self.written],
        }
        metrics = {"bits_per_char": self.bits_per_char()}
        figures = {"smooth_loss": partial(self.smooth_loss_figure, history)}
        tables = {"names_by_step": table}
        h, signals = self.hidden_states_and_signals()
        mask = self.data.everything.mask > 0
        tracked = [tracking(h[mask], s[mask], name) for name, s in signals.items() if np.ptp(s[mask]) > 0]
        if tracked:
            tables["hidden_units"] = tracking_table(tracked)
            shown = np.linspace(0, len(self.data.names) - 1, min(SHOWN_NAMES, len(self.data.names))).astype(int)
            names = [self.data.names[i] for i in shown]
            figures["telling_units"] = partial(telling_units_figure, names, h[shown], tracked)
        return Evaluation(metrics=metrics, samples=samples, tables=tables, figures=figures)

    def hidden_states_and_signals(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """h_k (N, T, H) of every name read from the zero state, and what a unit may track at each step k (N, T):
        the end of a name (t_k is the newline: x_k is its last character) and a vowel (x_k is one of aeiou)."""
        whole = self.data.everything
        _, _, (_, h) = self.model.outputs(whole.inputs)
        read = whole.inputs.any(axis=-1)  # x_0 is the start (no character)
        vowel = read & np.isin(self.data.vocabulary[whole.inputs.argmax(axis=-1)], list(VOWELS))
        return h, {"the end of a name": (whole.targets == 0).astype(float), "a vowel": vowel.astype(float)}

    def smooth_loss_figure(self, history: Mapping[str, Sequence[float]]):
        """The smoothed loss as the tutorial prints it, with the names written along the way."""
        from matplotlib.figure import Figure

        figure = Figure(figsize=(9, 4.5), layout="constrained")
        ax = figure.subplots()
        ax.plot(np.arange(1, len(history["smooth_loss"]) + 1), history["smooth_loss"], color="tab:blue")
        for written in self.written[1:]:
            ax.annotate(
                written.names[0], (written.step, written.smooth_loss), fontsize=7, rotation=30, color="tab:gray"
            )
        ax.set(xlabel="step (one name each)", ylabel="smooth loss (nats per name)")
        ax.set_title("learning to write dinosaur names")
        return figure

    def bits_per_char(self) -> float:
        """H = -sum_{i,k} m_ik log2 p_ik[t_ik] / sum m: the cross-entropy per character (newline included) of
        every name, each read from the zero state."""
        whole = self.data.everything
        z = self.model.outputs(whole.inputs)[0]
        nll = -np.take_along_axis(log_softmax(z), whole.targets[..., None], axis=-1)[..., 0]
        return float(np.sum(whole.mask * nll) / np.sum(whole.mask) / np.log(2.0))

    def write(self) -> list[str]:
        """The names of an evaluation: ``samples`` names drawn with the same u every time (see :meth:`write_names`),
        so that they change only because the model does (the tutorial reseeds every draw)."""
        return self.write_names(self.uniforms, self.config.temperature)

    def write_names(self, uniforms: np.ndarray, temperature: float) -> list[str]:
        """Names written character by character, all at once: from x_1 = 0 and the zero state, draw
        c_k ~ p_k (with temperature and top-k), feed x_{k+1} = onehot(c_k) back, until a newline or max_length.

        Draw k of name i picks the character where the cumulative p_k, divided by its last value, first exceeds
        u[i, k] (what np.random.choice does), with u = ``uniforms`` (names, max_length) of U[0, 1).
        """
        size = self.data.input_size
        x = np.zeros((len(uniforms), 1, size), dtype=self.dtype)
        symbols = np.zeros((len(uniforms), self.config.max_length), dtype=np.intp)
        state = None
        for k in range(self.config.max_length):
            z, state, _ = self.model.outputs(x, state)
            cdf = np.cumsum(self.probabilities(z[:, 0], temperature), axis=-1)
            cdf /= cdf[:, -1:]
            symbols[:, k] = np.minimum(np.sum(cdf <= uniforms[:, k : k + 1], axis=-1), size - 1)
            if np.all(np.any(symbols[:, : k + 1] == 0, axis=-1)):
                break
            x = one_hot(symbols[:, k : k + 1], size, self.dtype)
        return [self.data.decode(row) for row in symbols]

    def example(self) -> dict[str, list]:
        """A request: 3 names at temperature 1, drawn with seed 0."""
        return {"n": [3], "temperature": [1.0], "seed": [0]}

    def predict(self, request: Mapping[str, Sequence]) -> dict[str, list]:
        """``names``: for each row, n names written at the temperature, their draws u from the stream
        ``sampling`` of the seed (the same seed, the same names; n = samples and the run's seed and
        temperature: the names of the run's last evaluation)."""
        written = []
        for n, temperature, seed in zip(request["n"], request["temperature"], request["seed"], strict=True):
            if not (isinstance(n, Integral) and 1 <= n <= MAX_NAMES):
                raise ValueError(f"n={n!r}: expected an integer from 1 to {MAX_NAMES}")
            if not (isinstance(temperature, Real) and temperature > 0):
                raise ValueError(f"temperature={temperature!r}: expected a number > 0")
            if not (isinstance(seed, Integral) and seed >= 0):
                raise ValueError(f"seed={seed!r}: expected an integer >= 0")
            uniforms = seeding.rng(seed, "sampling").random((n, self.config.max_length))
            written.append(self.write_names(uniforms, float(temperature)))
        return {"names": written}

    def probabilities(self, z: np.ndarray, temperature: float) -> np.ndarray:
        """p = softmax(z / tau) over the k largest logits (all for top_k = 0), zero elsewhere; tau = ``temperature``."""
        z = z / temperature
        k = self.config.top_k
        if 0 < k < z.shape[-1]:
            kth = np.partition(z, -k, axis=-1)[:, [-k]]  # the k-th largest logit
            z = np.where(z >= kth, z, -np.inf)
        return np.exp(log_softmax(z))


def telling_units_figure(names: Sequence[str], h: np.ndarray, tracked: Sequence[Tracked]):
    """Names written out with each character coloured by a telling unit's h_k after reading it (Karpathy, "The
    Unreasonable Effectiveness of Recurrent Neural Networks"): one panel per unit, red where it is high."""
    from matplotlib.figure import Figure

    longest = max(map(len, names))
    figure = Figure(figsize=(0.3 * longest + 2.5, 0.3 * len(names) * len(tracked) + 0.9 * len(tracked) + 0.5))
    for ax, unit in zip(figure.subplots(len(tracked), 1, squeeze=False)[:, 0], tracked, strict=True):
        shown = np.full((len(names), longest), np.nan)
        for row, name in enumerate(names):
            shown[row, : len(name)] = h[row, 1 : len(name) + 1, unit.unit]  # x_k = name[k - 1]
            for column, character in enumerate(name):
                ax.text(column, row, character, ha="center", va="center", fontsize=9, family="monospace")
        ax.imshow(shown, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        ax.set_axis_off()
        ax.set_title(f"unit {unit.unit}: {unit.signal} (r = {unit.r:.2f})", fontsize=9, loc="left")
    figure.suptitle("each character coloured by a unit's state after reading it (red +1, blue -1)", fontsize=10)
    return figure


def course_weights(cell: Params, readout: Params) -> None:
    """The course's initialize_parameters(): np.random.seed(1), then Wax (n_a, n_x), Waa (n_a, n_a) and
    Wya (n_y, n_a), each np.random.randn(shape) * 0.01; the biases stay 0. Its a = tanh(Wax x + Waa a_prev + b)
    on column vectors is our h = tanh(x Wx + h_prev Wh + b) on rows: Wx = Wax^T, Wh = Waa^T, and the readout's
    W = Wya^T."""
    stream = np.random.RandomState(1)
    for params, name in ((cell, "Wx"), (cell, "Wh"), (readout, "W")):
        params[name][...] = (stream.randn(*params[name].shape[::-1]) * 0.01).T


def course_uniforms(names: int, length: int) -> np.ndarray:
    """u[i, k] of the course's sample(): before drawing character k of name i it calls np.random.seed(counter + seed)
    with counter = k and seed = i + k (both grow by one a character), then np.random.choice(..., p) draws with the
    first random number of that stream."""
    return np.array([[np.random.RandomState(2 * k + i).random_sample() for k in range(length)] for i in range(names)])


@hookimpl
def framework_register_datasets(register) -> None:
    register("names", make_names, NamesConfig)


@hookimpl
def framework_register_tasks(register) -> None:
    register(
        "charlm",
        CharLMTask,
        CharLMConfig,
        Recipe(
            dataset="names",
            cell=("rnn", {"init": {"scheme": "normal", "std": 0.01}}),  # Wax, Waa ~ N(0, 0.01^2), b = 0
            loss=("softmax_cross_entropy", {"reduction": "sum"}),  # summed over the name
            optim=("sgd", {"lr": 0.01}),
            train={"steps": 35000, "batch_size": 1, "eval_every": 2000, "clip_value": 5.0},
            # measured: every seed 0-19 reaches the result (docs/atlas.md), in 400-1000 steps of 16 or 32 padded names
            # (the loss is summed over the names, so the step grows with the batch) against 35000 single names
            pairings={
                # Rprop on minibatches needs a floor under its steps to keep moving
                "optim=rprop": {
                    "optim.step_init": 0.01,
                    "optim.step_min": 0.004,
                    "optim.step_max": 0.1,
                    "train.batch_size": 32,
                    "train.steps": 800,
                    "train.eval_every": 400,
                },
                "optim=adagrad": {"optim.lr": 0.1, "train.batch_size": 16, "train.steps": 800, "train.eval_every": 400},
                "optim=rmsprop": {
                    "optim.lr": 0.005,
                    "train.batch_size": 16,
                    "train.steps": 800,
                    "train.eval_every": 400,
                },
                "optim=adam": {"optim.lr": 0.01, "train.batch_size": 16, "train.steps": 600, "train.eval_every": 300},
                "cell=lstm": {"train.batch_size": 32, "train.steps": 500, "train.eval_every": 250},
                "cell=gru": {"train.batch_size": 32, "train.steps": 400, "train.eval_every": 200},
            },
        ),
    )
