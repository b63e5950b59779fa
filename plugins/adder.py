"""The adder tutorial (docs/tasks.md, "adder"): an RNN learns 8-bit binary addition.

    h_t = sigmoid(x_t U + h_{t-1} W),   y_t = sigmoid(h_t V),   h_0 = 0

x_t = (a_t, b_t) holds bit t of a and of b, least significant first, and y_t
predicts bit t of c = a + b: the carry is what the hidden state must remember.
The tutorial (Trask, "Anyone Can Learn To Code an LSTM-RNN in Python") trains
one random pair per iteration, sums the gradients of the error
(y_t - t_t) y_t (1 - y_t) over the 8 steps and applies them once per sequence
with learning rate 0.1: that is SGD on L = sum_t 0.5 (y_t - t_t)^2, i.e. the
sigmoid squared error with ``reduction=sum``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from framework.core.config import param
from framework.core.data import generator_param
from framework.core.errors import ConfigError
from framework.core.hidden import Tracked, tracking, tracking_table, unit_correlations
from framework.core.hookspecs import hookimpl
from framework.core.protocols import Batch, Evaluation, Params, Parts, Reference
from framework.core.registry import Recipe
from framework.nn.functions import sigmoid
from framework.nn.init import InitConfig
from framework.nn.layers import Dense
from framework.nn.model import RecurrentModel

FULL_BATCH_LIMIT = 2**20  # train.batch_size=0 trains on every pair at once, up to this many
PAIRS_PER_DRAW = 4096  # random batches are drawn and encoded this many pairs at a time


def to_bits(n: np.ndarray, bits: int) -> np.ndarray:
    """The binary digits of the integers n, least significant first: d_k = floor(n / 2^k) mod 2, shape (..., bits)."""
    return (n[..., None] >> np.arange(bits)) & 1


def from_bits(d: np.ndarray) -> np.ndarray:
    """The integers n = sum_k d_k 2^k of digits d (..., bits), least significant first."""
    return np.sum(d.astype(np.int64) << np.arange(d.shape[-1]), axis=-1)


def bit_string(d: np.ndarray) -> str:
    """Digits (least significant first) written as the tutorial prints them, most significant first: '01000101'."""
    return "".join(str(int(v)) for v in d[::-1])


@dataclass
class AdditionConfig:
    """Random pairs a, b < 2^(bits-1) and their sum c = a + b, in binary, least significant bit first."""

    bits: int = param(8, ge=2, le=62, doc="bits of the sum c; a and b are drawn uniformly from [0, 2^(bits-1))")
    generator: str = generator_param(
        "the weights U, V, W as 2*np.random.random(shape) - 1, then np.random.randint(128) for a, then b, every step"
    )

    def tutorial_settings(self) -> dict[str, Any]:
        """The tutorial's 8-bit sums, one pair per step, learnt by its sigmoid cell."""
        return {"dataset.bits": 8, "train.batch_size": 1, "cell": "rnn"}


class AdditionDataset:
    """x (B, bits, 2) with x_k = (bit k of a, bit k of b); targets (B, bits, 1) = bit k of c = a + b.

    ``batches(B)`` draws B fresh pairs for every step (the tutorial: B = 1);
    ``batches(0)`` is every one of the 4^(bits-1) pairs at every step (full batch).
    With the tutorial's stream ``tutorial``, every step's pair is the tutorial's (:meth:`tutorial_pairs`).
    """

    input_size = 2

    def __init__(self, bits: int, dtype: np.dtype, tutorial: np.random.RandomState | None = None) -> None:
        self.bits, self.dtype, self.tutorial = bits, dtype, tutorial
        self.numbers = 2 ** (bits - 1)  # a and b are in [0, numbers)

    def encode(self, a: np.ndarray, b: np.ndarray) -> Batch:
        """The pairs (a, b) as inputs (B, bits, 2) and the bits of a + b as targets (B, bits, 1)."""
        inputs = np.stack([to_bits(a, self.bits), to_bits(b, self.bits)], axis=-1).astype(self.dtype)
        return Batch(inputs, to_bits(a + b, self.bits)[..., None].astype(self.dtype))

    def all_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Every pair (a, b) with a, b in [0, 2^(bits-1)), a-major: a = i // 2^(bits-1), b = i mod 2^(bits-1)."""
        return np.divmod(np.arange(self.numbers**2, dtype=np.int64), self.numbers)

    def random_pairs(
        self, count: int, rng: np.random.Generator, steps: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``count`` pairs with a, b ~ U{0, ..., 2^(bits-1) - 1}, independently: the ``count`` a's, then the b's.

        With ``steps``, that many such draws at once, a and b of shape (steps, count): the same numbers
        as ``steps`` calls, since a draw of k integers below a power of two takes the generator's next k
        values, with none rejected.
        """
        shape = (2, count) if steps is None else (steps, 2, count)
        a, b = np.moveaxis(rng.integers(0, self.numbers, size=shape, dtype=np.int64), -2, 0)
        return a, b

    def batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[Batch]:
        """Fresh random pairs every step, or every pair every step for ``batch_size`` 0.

        The pairs of many steps are drawn (:meth:`random_pairs`, the same numbers as a draw per step)
        and encoded at once: drawing and encoding each step's took 12 us, a fifth of the tutorial's
        training step.
        """
        if self.tutorial is not None:
            yield from self.tutorial_pairs()  # endless
        if batch_size == 0:
            if self.numbers**2 > FULL_BATCH_LIMIT:
                accepted = f"a batch size > 0 (0 means every one of the {self.numbers**2} pairs at every step)"
                raise ConfigError("train.batch_size", batch_size, accepted)
            whole = self.encode(*self.all_pairs())
            while True:
                yield whole
        steps = max(1, PAIRS_PER_DRAW // batch_size)
        while True:
            drawn = self.encode(*self.random_pairs(batch_size, rng, steps))  # (steps, B, bits, .)
            for inputs, targets in zip(drawn.inputs, drawn.targets, strict=True):
                yield Batch(inputs, targets)

    def tutorial_pairs(self) -> Iterator[Batch]:
        """One pair per step, drawn as the tutorial draws it at every iteration (Trask, "Anyone Can Learn To Code an
        LSTM-RNN in Python"): ``a_int = np.random.randint(largest_number/2)``, then ``b_int`` likewise."""
        while True:
            a_int = self.tutorial.randint(self.numbers)
            b_int = self.tutorial.randint(self.numbers)
            yield self.encode(np.array([a_int]), np.array([b_int]))

    def next_tutorial_pair(self) -> tuple[int, int]:
        """The pair (a, b) the tutorial's stream gives the next step, left undrawn: the one the tutorial prints when
        it reaches that iteration."""
        peek = np.random.RandomState()
        peek.set_state(self.tutorial.get_state())
        return int(peek.randint(self.numbers)), int(peek.randint(self.numbers))


def make_addition(
    config: AdditionConfig, rng: np.random.Generator | np.random.RandomState, dtype: np.dtype
) -> AdditionDataset:
    """a, b ~ U{0, ..., 2^(bits-1) - 1}, c = a + b;  x_k = (a_k, b_k), t_k = c_k, bit k = 0 (least significant) first.

    Bit k of n is n_k = floor(n / 2^k) mod 2. ``generator=tutorial``: ``rng`` is the tutorial's stream, which
    draws every step's pair (the batch stream's generator is not used).
    """
    return AdditionDataset(config.bits, dtype, rng if config.generator == "tutorial" else None)


@dataclass
class AdderConfig:
    """Learn binary addition: h_t = f(x_t U + h_{t-1} W), y_t = sigmoid(h_t V), one bit of a + b per step."""

    hidden_size: int = param(16, ge=1, doc="hidden units (the tutorial: 16)")
    readout_scale: float = param(1.0, gt=0, doc="readout weights V ~ U(-scale, scale) (the tutorial: 1)")
    eval_pairs: int = param(
        16384,
        ge=1,
        doc="accuracy over every pair if there are at most this many, else over this many fixed random ones",
    )
    shown: int = param(
        4,
        ge=0,
        doc="random evaluation pairs printed at every evaluation, as the tutorial (dataset.generator=tutorial: the "
        "tutorial's own pair of that iteration)",
    )
    stop_when_solved: bool = param(
        True,
        doc="stop training at the first evaluation with accuracy 1 (the tutorial trains on: false; then seeds 8 and "
        "17 lose a sum they had learnt by the last step)",
    )


class AdderTask:
    """Binary addition (Trask's tutorial): accuracy over all pairs, and the tutorial's printed sums.

    The model is y_t = sigmoid(z_t), z_t = h_t V (a readout without bias giving the logits the sigmoid
    losses take) on the chosen cell, one bit of c = a + b per step; a predicted bit is 1 when y_t > 0.5.
    With ``loss.reduction=sum`` the loss of a batch is L = sum over pairs and steps of 0.5 (y_t - t_t)^2,
    so SGD's learning rate is the step per pair: a batch of B pairs moves the weights as B tutorial
    iterations would at fixed weights (lr 0.1 with ``train.batch_size=32`` learns too). With
    ``reduction=mean`` the gradient is divided by B * bits.

    accuracy: the fraction of pairs whose sum is exactly right (every bit); bit_accuracy: the fraction
    of bits right; error: the tutorial's "Error", sum_t |t_t - y_t| per pair, averaged over the pairs.
    """

    objective = "accuracy"
    maximize = True
    metrics = ("accuracy", "bit_accuracy", "error")
    reference = Reference(
        "accuracy = 1: every sum a + b right; the tutorial: every printed sum right",
        lambda metrics: metrics["accuracy"] == 1.0,
    )

    def __init__(self, config: AdderConfig, parts: Parts) -> None:
        if not isinstance(parts.dataset, AdditionDataset):
            raise ConfigError("dataset", type(parts.dataset).__name__, "dataset=binary_addition (the pairs to add)")
        self.config, self.data = config, parts.dataset
        cell = parts.make_cell(self.data.input_size, config.hidden_size)
        init = InitConfig(scheme="uniform", low=-config.readout_scale, high=config.readout_scale)
        readout = Dense(config.hidden_size, 1, False, init, parts.rng("readout"), parts.dtype)
        self.model = RecurrentModel(cell, parts.loss, last_only=False, readout=readout)
        if parts.tutorial is not None:
            tutorial_weights(parts.tutorial, cell.params, readout.params)
        self.a, self.b = self.evaluation_pairs(parts.rng("eval"))
        self.every_pair = len(self.a) == self.data.numbers**2
        self.pairs = self.data.encode(self.a, self.b)
        self.show_rng = parts.rng("samples")
        # the tutorial's printout so far: what it prints at iterations 0, eval_every, 2 eval_every, ...
        self.printed = [] if self.data.tutorial is None else [self.sums_text(0, self.tutorial_sum())]

    def evaluation_pairs(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Every pair when there are at most ``eval_pairs``, else ``eval_pairs`` random ones drawn once."""
        if self.data.numbers**2 <= self.config.eval_pairs:
            return self.data.all_pairs()
        return self.data.random_pairs(self.config.eval_pairs, rng)

    def trace(self, loss: float) -> dict[str, float]:
        """Nothing beyond the loss every step: the accuracy needs a forward pass over every pair."""
        return {}

    def evaluate(self, step: int, history: Mapping[str, Sequence[float]], final: bool) -> Evaluation:
        """accuracy, bit_accuracy and error over the evaluation pairs in one forward pass; a few of them printed.

        At the end also what the hidden state holds: the unit that tracks the carry (table ``hidden_units``, figure
        ``carry``).
        """
        y, predicted, h = self.read(self.pairs.inputs)
        t = self.pairs.targets[..., 0]
        bits_right = predicted == t
        right = bits_right.all(axis=1)
        error = np.abs(t - y).sum(axis=1)
        metrics = {
            "accuracy": float(right.mean()),
            "bit_accuracy": float(bits_right.mean()),
            "error": float(error.mean()),
        }
        if self.data.tutorial is None:
            shown = self.show_rng.choice(len(self.a), size=min(self.config.shown, len(self.a)), replace=False)
            table = self.sums_table(self.a[shown], self.b[shown], y[shown])
            text = self.sums_text(step, table)
        else:
            table = self.tutorial_sum()
            self.printed.append(self.sums_text(step, table))
            text = "------------\n".join(self.printed)
        evaluation = Evaluation(
            metrics=metrics,
            samples={"sums": text},
            tables={"sums": table},
            stop=self.config.stop_when_solved and metrics["accuracy"] == 1.0,
        )
        if final:
            carry = carries(self.a, self.b, self.data.bits)
            held = (h[:, :-1].reshape(-1, h.shape[-1]), carry[:, :-1].reshape(-1))  # the last step has no next bit
            tracked = tracking(*held, "the carry out of bit k")
            evaluation.tables["hidden_units"] = tracking_table([tracked])
            evaluation.figures["carry"] = partial(carry_figure, h, carry, tracked)
            if self.every_pair:
                evaluation.figures["right_sums"] = partial(self.right_sums_figure, right)
        return evaluation

    def read(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """y_t = sigmoid(z_t) of every pair and bit (P, bits), the bits it predicts (1 where y_t > 0.5), and the
        hidden states h_t (P, bits, H)."""
        z, _, (_, h) = self.model.outputs(inputs)
        y = sigmoid(z[..., 0])
        return y, (y > 0.5).astype(np.int64), h

    def example(self) -> dict[str, list]:
        """A request: pairs (a, b) to add, the largest included."""
        top = self.data.numbers - 1
        return {"a": [3, 100 % self.data.numbers, top], "b": [4, 27 % self.data.numbers, top]}

    def predict(self, request: Mapping[str, Sequence]) -> dict[str, list]:
        """``sum`` = sum_k pred_k 2^k, the network's a + b, for the integers a, b in [0, 2^(bits-1))."""
        pair = {name: np.asarray(request[name]) for name in ("a", "b")}
        bits = self.data.bits
        accepted = (
            f"integers in [0, {self.data.numbers}): the network adds numbers of {bits - 1} bits (dataset.bits={bits})"
        )
        for name, values in pair.items():
            if values.dtype.kind not in "iu":
                raise ValueError(f"{name}: expected {accepted}, got {values.dtype} values")
            outside = (values < 0) | (values >= self.data.numbers)
            if outside.any():
                raise ValueError(f"{name}={values[outside][0]}: expected {accepted}")
        _, predicted, _ = self.read(self.data.encode(pair["a"], pair["b"]).inputs)
        return {"sum": from_bits(predicted).tolist()}

    def sums_table(self, a: np.ndarray, b: np.ndarray, y: np.ndarray) -> dict:
        """The pairs (a, b) and the network's outputs y (P, bits) on them: a, b, a + b, the network's
        out = sum_k pred_k 2^k (pred_k = 1 where y_k > 0.5), the bits, the error sum_k |t_k - y_k|, right or not."""
        t = to_bits(a + b, self.data.bits)
        predicted = (y > 0.5).astype(np.int64)
        return {
            "a": a.tolist(),
            "b": b.tolist(),
            "a + b": (a + b).tolist(),
            "out": from_bits(predicted).tolist(),
            "pred": [bit_string(d) for d in predicted],
            "true": [bit_string(d) for d in t],
            "error": [round(float(e), 8) for e in np.abs(t - y).sum(axis=1)],
            "right": (predicted == t).all(axis=1).tolist(),
        }

    def tutorial_sum(self) -> dict:
        """The sum the tutorial prints now: the pair its stream gives the next step, with the network's outputs on
        it (the tutorial prints the pair of iteration j before it trains on it)."""
        a, b = (np.array([n]) for n in self.data.next_tutorial_pair())
        y, _, _ = self.read(self.data.encode(a, b).inputs)
        return self.sums_table(a, b, y)

    def sums_text(self, step: int, table: dict) -> str:
        """The tutorial's printout for each shown pair: Error, Pred, True and 'a + b = out', marked right or wrong."""
        blocks = [f"after {step} steps"]
        for a, b, out, pred, true, error, right in zip(
            table["a"],
            table["b"],
            table["out"],
            table["pred"],
            table["true"],
            table["error"],
            table["right"],
            strict=True,
        ):
            mark = "right" if right else f"WRONG (a + b = {a + b})"
            blocks.append(f"Error: {error}\nPred: {pred}\nTrue: {true}\n{a} + {b} = {out}   {mark}")
        return "\n------------\n".join(blocks) + "\n"

    def right_sums_figure(self, right: np.ndarray):
        """Which sums a + b the network gets right, over the grid of every pair (a, b)."""
        from matplotlib.colors import ListedColormap
        from matplotlib.figure import Figure

        n = self.data.numbers
        figure = Figure(figsize=(5.5, 5), layout="constrained")
        ax = figure.subplots()
        ax.imshow(right.reshape(n, n), cmap=ListedColormap(["tab:red", "tab:green"]), vmin=0, vmax=1, origin="lower")
        ax.set(xlabel="b", ylabel="a", title=f"a + b right (green): {right.mean():.2%} of {n}x{n} pairs")
        return figure


def carries(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    """The carry out of every bit position k of a + b, what h_k must hold for bit k + 1:
    c_k = floor((a mod 2^(k+1) + b mod 2^(k+1)) / 2^(k+1)), shape (P, bits)."""
    span = 2 ** np.arange(1, bits + 1, dtype=np.int64)
    return (a[:, None] % span + b[:, None] % span) // span


def carry_figure(h: np.ndarray, carry: np.ndarray, tracked: Tracked):
    """Left: corr(h_u, c_k) of every unit u at every bit position k. Right: the tracking unit's activation at each
    position, for the pairs whose carry out of it is 0 and 1 (median, and the 5-95% band)."""
    from matplotlib.figure import Figure

    bits, units, u = carry.shape[1], h.shape[-1], tracked.unit
    r = np.stack([unit_correlations(h[:, k], carry[:, k]) for k in range(bits)], axis=1)  # (H, bits)
    figure = Figure(figsize=(11, 4.2))
    figure.subplots_adjust(left=0.06, right=0.98, bottom=0.12, top=0.85, wspace=0.25)
    left, right = figure.subplots(1, 2)
    extent = (-0.5, bits - 0.5, -0.5, units - 0.5)
    image = left.imshow(r, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", origin="lower", extent=extent)
    figure.colorbar(image, ax=left, label="corr($h_u$, carry out of bit k)")
    left.axhline(u - 0.5, color="black", lw=0.8)
    left.axhline(u + 0.5, color="black", lw=0.8)
    left.set(xlabel="bit position k (0: least significant)", ylabel="unit u", title="every unit against the carry")
    positions = np.arange(bits)
    for value, colour in ((0, "tab:blue"), (1, "tab:red")):
        seen = [h[carry[:, k] == value, k, u] for k in positions]
        kept = [k for k in positions if len(seen[k])]  # the carry out of the top bit is always 0
        low, median, high = (np.array([np.quantile(seen[k], q) for k in kept]) for q in (0.05, 0.5, 0.95))
        right.plot(kept, median, "o-", color=colour, label=f"carry {value}")
        right.fill_between(kept, low, high, color=colour, alpha=0.2)
    right.set(
        xlabel="bit position k",
        ylabel=f"$h_k$ of unit {u}",
        title=f"unit {u} tracks the carry: r = {tracked.r:.3f}; the best direction of h: R = {tracked.direction_r:.3f}",
    )
    right.title.set_fontsize(9)
    right.legend(fontsize=8)
    figure.suptitle("what the hidden state holds: the carry")
    return figure


def tutorial_weights(stream: np.random.RandomState, cell: Params, readout: Params) -> None:
    """U, V, W drawn as the tutorial draws them, in its order, each 2 * np.random.random(shape) - 1 ~ U(-1, 1):
    synapse_0 = U (input -> hidden, the cell's Wx), synapse_1 = V (hidden -> output, the readout's W),
    synapse_h = W (hidden -> hidden, the cell's Wh)."""
    for params, name in ((cell, "Wx"), (readout, "W"), (cell, "Wh")):
        params[name][...] = 2 * stream.random(params[name].shape) - 1


@hookimpl
def framework_register_datasets(register) -> None:
    register("binary_addition", make_addition, AdditionConfig)


SOLVE_FAST = {"train.batch_size": 32, "train.steps": 3000, "train.eval_every": 100}


@hookimpl
def framework_register_tasks(register) -> None:
    register(
        "adder",
        AdderTask,
        AdderConfig,
        Recipe(
            dataset="binary_addition",
            # the tutorial's 16 sigmoid units without biases, weights U(-1, 1)
            cell=(
                "rnn",
                {"activation": "sigmoid", "bias": False, "init": {"scheme": "uniform", "low": -1.0, "high": 1.0}},
            ),
            # the error (y - t) y (1 - y) summed over the 8 steps: the gradient of sum_t 0.5 (y_t - t_t)^2
            loss=("sigmoid_squared_error", {"reduction": "sum"}),
            optim=("sgd", {"lr": 0.1}),
            train={"steps": 10000, "batch_size": 1, "eval_every": 1000},
            # measured: every seed 0-19 reaches the result, stopping when solved (docs/atlas.md). 32 pairs a step
            # (the loss is summed, so the step grows with the batch), evaluated every 100 steps
            pairings={
                **{
                    f"optim={name}": {**SOLVE_FAST, **options}
                    for name, options in (
                        ("adagrad", {"optim.lr": 0.3}),
                        ("rmsprop", {"optim.lr": 0.01}),
                        ("adam", {"optim.lr": 0.03}),
                    )
                },
                # Rprop, a full-batch method: large batches; its step bounded
                "optim=rprop": {
                    "optim.step_max": 0.1,
                    "train.batch_size": 1024,
                    "train.steps": 1000,
                    "train.eval_every": 50,
                },
                "cell=lstm": SOLVE_FAST,
                "cell=gru": SOLVE_FAST,
            },
        ),
    )
