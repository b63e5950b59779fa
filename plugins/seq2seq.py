"""The seq2seq tutorial (docs/tasks.md, "seq2seq"): an encoder-decoder maps a word to its opposite.

    s = encoder(x_enc)                          the encoder's final state (s_0 = 0)
    h_t = decoder(x_dec,t | h_{t-1}),  h_0 = s  the decoder starts from the encoder's final state
    y_t = h_t W + b,   L = -sum_t log softmax(y_t)[t_t] / N

Every word is padded with '?' to n_step letters. Training uses teacher forcing:
the encoder reads word + 'E' ("man??E"), the decoder reads 'S' + target
("Swomen") and must emit target + 'E' ("womenE"). Translating feeds the
decoder 'S' followed by padding ("S?????"), takes the most likely symbol at
each step, cuts at the first 'E' and drops the '?'s.

A batch carries both inputs in ``Batch.inputs``, concatenated along time:
``inputs = [x_enc | x_dec]`` of shape (B, T_enc + T_dec, K), and the decoder
is the last ``T_dec = targets.shape[1]`` steps (one target per decoder step).
So a batch stays a plain :class:`Batch` that the framework's ArrayDataset can
shuffle and slice, and the split needs no extra field or constant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from framework.core.config import param
from framework.core.data import ArrayDataset
from framework.core.errors import ConfigError
from framework.core.hookspecs import hookimpl
from framework.core.protocols import (
    Batch,
    Cell,
    Evaluation,
    Loss,
    Parts,
    Reference,
    ReportsStates,
    State,
    StepResult,
)
from framework.core.registry import Recipe
from framework.nn.functions import softmax
from framework.nn.init import InitConfig
from framework.nn.layers import Dense, one_hot

ALPHABET = "SE?abcdefghijklmnopqrstuvwxyz"  # 'S' starts the decoder input, 'E' ends a sequence, '?' pads
START, END, PAD = "S", "E", "?"
SYMBOL = {symbol: k for k, symbol in enumerate(ALPHABET)}
LETTERS = frozenset("abcdefghijklmnopqrstuvwxyz")


# -- the data: words as symbol indices -----------------------------------------


def symbols(text: str) -> np.ndarray:
    """The alphabet index of every character of ``text``: (len(text),)."""
    return np.array([SYMBOL[c] for c in text], dtype=np.int64)


def padded(word: str, n_step: int) -> str:
    """``word`` followed by '?' up to n_step letters: man -> man??."""
    return word + PAD * (n_step - len(word))


def encoder_text(word: str, n_step: int) -> str:
    """What the encoder reads: the padded word + 'E' (man??E)."""
    return padded(word, n_step) + END


def decoder_input_text(target: str, n_step: int) -> str:
    """What the decoder reads while training (teacher forcing): 'S' + the padded target (Swomen)."""
    return START + padded(target, n_step)


def decoder_target_text(target: str, n_step: int) -> str:
    """What the decoder must emit: the padded target + 'E' (womenE)."""
    return padded(target, n_step) + END


def read_output(text: str) -> str:
    """A decoded symbol string as a word: cut at the first 'E', drop the '?'s (wome?E?? -> wome)."""
    return text.split(END, 1)[0].replace(PAD, "")


def is_word(text: str) -> bool:
    """A non-empty string of the letters a-z."""
    return bool(text) and set(text) <= LETTERS


@dataclass
class PairsConfig:
    """Word pairs (source:target) spelt over the alphabet 'S', 'E', '?', a-z and padded to n_step letters."""

    pairs: str = param(
        "man:women black:white king:queen girl:boy up:down high:low",
        doc="space-separated source:target pairs of lower-case words (the tutorial's six)",
    )
    n_step: int = param(5, ge=1, doc="letters per word after padding with '?' (at least the longest word)")

    def __post_init__(self) -> None:
        halves = [pair.split(":") for pair in self.pairs.split()]
        if not halves or not all(len(pair) == 2 and all(map(is_word, pair)) for pair in halves):
            raise ConfigError("pairs", self.pairs, "space-separated source:target pairs of words in a-z")
        longest = max((word for pair in halves for word in pair), key=len)
        if self.n_step < len(longest):
            raise ConfigError("n_step", self.n_step, f"an integer >= {len(longest)} (the longest word, {longest!r})")

    def word_pairs(self) -> list[tuple[str, str]]:
        """[(source, target), ...] in the given order."""
        return [tuple(pair.split(":")) for pair in self.pairs.split()]


class WordPairs(ArrayDataset):
    """The pairs as arrays: inputs = [x_enc | x_dec] (N, 2 (n_step + 1), K) one-hot; targets (N, n_step + 1).

    Keeps the words and n_step so that the task can translate and score them.
    """

    def __init__(self, pairs: list[tuple[str, str]], n_step: int, dtype: np.dtype) -> None:
        self.pairs, self.n_step = pairs, n_step
        enc = np.stack([symbols(encoder_text(source, n_step)) for source, _ in pairs])
        dec = np.stack([symbols(decoder_input_text(target, n_step)) for _, target in pairs])
        targets = np.stack([symbols(decoder_target_text(target, n_step)) for _, target in pairs])
        super().__init__(one_hot(np.concatenate([enc, dec], axis=1), len(ALPHABET), dtype), targets)


def make_pairs(config: PairsConfig, rng: np.random.Generator, dtype: np.dtype) -> WordPairs:
    """The word pairs of ``config`` (the data are fixed: ``rng`` is not used)."""
    return WordPairs(config.word_pairs(), config.n_step, dtype)


# -- the model: an encoder cell, a decoder cell, a readout -----------------------


class EncoderDecoder:
    """s = encoder(x_enc);  h = decoder(x_dec) from h_0 = s;  y = h W + b;  L = loss(y, targets).

    Backward: the decoder's BPTT from dL/dh gives dL/dh_0 = dL/ds (CellGradients.state),
    which is exactly the gradient of the encoder's final state, so the encoder's BPTT
    starts from it (its outputs are not scored: dL/d(encoder outputs) = 0).
    States are passed as they are (an LSTM's is (h, c)). Parameters are named
    ``encoder.*``, ``decoder.*`` and ``readout.*`` and are the layers' own arrays.
    """

    def __init__(self, encoder: Cell, decoder: Cell, readout: Dense, loss: Loss) -> None:
        self.encoder, self.decoder, self.readout, self.loss = encoder, decoder, readout, loss
        self.params = {
            f"{part}.{name}": array
            for part, layer in (("encoder", encoder), ("decoder", decoder), ("readout", readout))
            for name, array in layer.params.items()
        }

    def outputs(
        self, x_enc: np.ndarray, x_dec: np.ndarray, state: State | None = None
    ) -> tuple[np.ndarray, State, tuple]:
        """Forward pass: (logits y (B, T_dec, K), the decoder's final state, cache)."""
        state = self.encoder.zero_state(x_enc.shape[0]) if state is None else state
        h_enc, s, enc_cache = self.encoder.forward(x_enc, state)
        h_dec, final, dec_cache = self.decoder.forward(x_dec, s)
        return self.readout.forward(h_dec), final, (h_enc, enc_cache, h_dec, dec_cache)

    def hidden_states(self, batch: Batch) -> dict[str, np.ndarray] | None:
        """The states and gates of the encoder's steps then the decoder's (from the encoder's final state), as laid
        out in the inputs: name -> (B, T_enc + T_dec, H); None when a cell does not report them."""
        if not (isinstance(self.encoder, ReportsStates) and isinstance(self.decoder, ReportsStates)):
            return None
        x_enc, x_dec = split(batch)
        _, _, (_, enc_cache, _, dec_cache) = self.outputs(x_enc, x_dec)
        encoded, decoded = self.encoder.states_and_gates(enc_cache), self.decoder.states_and_gates(dec_cache)
        return {name: np.concatenate([encoded[name], decoded[name]], axis=1) for name in encoded}

    def loss_and_grads(self, batch: Batch, state: State | None) -> StepResult:
        """L on ``batch`` and its gradients; ``state`` (None: 0) is the encoder's initial state.

        ``state_grads`` are dL/dh_k of the encoder's steps then the decoder's, as laid out in the inputs
        (``cell_state_grads`` likewise dL/dc_k, for an LSTM).
        """
        x_enc, x_dec = split(batch)
        y, final, (h_enc, enc_cache, h_dec, dec_cache) = self.outputs(x_enc, x_dec, state)
        loss, dy = self.loss(y, batch.targets, batch.mask)
        readout_grads, dh_dec = self.readout.backward(h_dec, dy)
        dec = self.decoder.backward(dec_cache, dh_dec, None)
        enc = self.encoder.backward(enc_cache, np.zeros_like(h_enc), dec.state)
        grads = {f"readout.{name}": g for name, g in readout_grads.items()}
        grads.update({f"decoder.{name}": g for name, g in dec.params.items()})
        grads.update({f"encoder.{name}": g for name, g in enc.params.items()})
        memories = (enc.cell_states, dec.cell_states)  # an LSTM's dL/dc_k, else None
        return StepResult(
            loss=loss,
            grads=grads,
            state=final,
            state_grads=np.concatenate([enc.states, dec.states], axis=1),
            cell_state_grads=None if any(m is None for m in memories) else np.concatenate(memories, axis=1),
        )


def split(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """(x_enc, x_dec) from inputs = [x_enc | x_dec]: the decoder has one step per target."""
    t_dec = batch.targets.shape[1]
    return batch.inputs[:, :-t_dec], batch.inputs[:, -t_dec:]


# -- the task ------------------------------------------------------------------


@dataclass
class Seq2SeqConfig:
    """Encoder-decoder translation of a word to its opposite (man -> women), teacher forcing while training."""

    hidden_size: int = param(128, ge=1, doc="hidden units of the encoder and of the decoder")
    unseen: str = param(
        "mans upp", doc="space-separated words outside the training pairs, translated at every evaluation"
    )
    stop_when_solved: bool = param(
        True, doc="stop training at the first evaluation where every training pair translates exactly"
    )

    def __post_init__(self) -> None:
        if not all(map(is_word, self.unseen.split())):
            raise ConfigError("unseen", self.unseen, "space-separated words in a-z (or an empty string)")


class Seq2SeqTask:
    """Metric ``accuracy`` (the fraction of pairs translated exactly); the translations as a sample and a table."""

    objective = "accuracy"
    maximize = True
    metrics = ("accuracy", "solved_step")
    reference = Reference(
        "accuracy = 1: every training word translated to its pair; the tutorial: man -> women, king -> queen, ...",
        lambda metrics: metrics["accuracy"] == 1.0,
    )

    def __init__(self, config: Seq2SeqConfig, parts: Parts) -> None:
        if not isinstance(parts.dataset, WordPairs):
            raise ConfigError(
                "dataset", type(parts.dataset).__name__, "a dataset of word pairs (dataset=seq2seq_pairs)"
            )
        self.config, self.data = config, parts.dataset
        self.unseen = config.unseen.split()
        if any(len(word) > self.data.n_step for word in self.unseen):
            raise ConfigError("task.unseen", config.unseen, f"words of at most n_step = {self.data.n_step} letters")
        K, H = len(ALPHABET), config.hidden_size
        encoder, decoder = parts.make_cell(K, H), parts.make_cell(K, H)
        readout = Dense(H, K, True, InitConfig(), parts.rng("readout"), parts.dtype)
        self.model = EncoderDecoder(encoder, decoder, readout, parts.loss)
        self.dtype = parts.dtype
        self.solved_step: int | None = None  # the first evaluation at which every pair was right

    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """The step at which every pair was first right (-1: not yet)."""
        return {"solved_step": np.array(-1 if self.solved_step is None else self.solved_step)}

    def restore_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from a checkpoint's solved step."""
        solved = int(state["solved_step"])
        self.solved_step = None if solved < 0 else solved

    def trace(self, loss: float) -> dict[str, float]:
        """Nothing beyond the engine's loss: translating is evaluation work."""
        return {}

    def probabilities(self, words: Sequence[str]) -> np.ndarray:
        """softmax(y) (B, n_step + 1, K) of the decoder fed 'S' + padding after reading each word."""
        n_step = self.data.n_step
        x_enc = np.stack([symbols(encoder_text(word, n_step)) for word in words])
        x_dec = np.tile(symbols(START + PAD * n_step), (len(words), 1))
        y, _, _ = self.model.outputs(
            one_hot(x_enc, len(ALPHABET), self.dtype), one_hot(x_dec, len(ALPHABET), self.dtype)
        )
        return softmax(y)

    def translate(self, words: Sequence[str]) -> list[str]:
        """The most likely symbol at every decoder step, read as a word (see :func:`read_output`)."""
        best = self.probabilities(words).argmax(axis=-1)
        return [read_output("".join(ALPHABET[k] for k in row)) for row in best]

    def example(self) -> dict[str, list]:
        """A request: the first training words and the unseen ones."""
        return {"word": [source for source, _ in self.data.pairs[:3]] + self.unseen}

    def predict(self, request: Mapping[str, Sequence]) -> dict[str, list]:
        """``translation`` of every ``word`` (a-z, at most n_step letters), as the samples translate them."""
        for word in request["word"]:
            if not (isinstance(word, str) and is_word(word) and len(word) <= self.data.n_step):
                raise ValueError(f"word={word!r}: expected a word of 1 to {self.data.n_step} letters a-z (n_step)")
        return {"translation": self.translate(request["word"])}

    def evaluate(self, step: int, history: Mapping[str, Sequence[float]], final: bool) -> Evaluation:
        """accuracy over the training pairs; the translations of the training and unseen words."""
        sources, targets = zip(*self.data.pairs, strict=True)
        words = [*sources, *self.unseen]
        translations = self.translate(words)
        correct = [got == want for got, want in zip(translations[: len(targets)], targets, strict=True)]
        accuracy = float(np.mean(correct))
        if accuracy == 1.0 and self.solved_step is None:
            self.solved_step = step
        metrics = {"accuracy": accuracy}
        if final and self.solved_step is not None:
            metrics["solved_step"] = float(self.solved_step)
        expected = [*targets, *[""] * len(self.unseen)]
        marks = [*("right" if ok else "wrong" for ok in correct), *["unseen"] * len(self.unseen)]
        width = max(map(len, words))
        lines = [f"{w:<{width}} -> {t:<{width}} ({m})" for w, t, m in zip(words, translations, marks, strict=True)]
        sample = f"after {step} steps, {sum(correct)} of {len(correct)} pairs right:\n" + "\n".join(lines) + "\n"
        table = {"word": words, "translation": translations, "expected": expected, "result": marks}
        evaluation = Evaluation(
            metrics=metrics,
            samples={"translations": sample},
            tables={"translations": table},
            stop=self.config.stop_when_solved and accuracy == 1.0,
        )
        if final:
            paired = [*sources, *targets]
            coordinates, explained = principal_components(self.encoder_states(paired))
            evaluation.tables["encoder_pca"] = {
                "word": paired,
                "pc1": coordinates[:, 0].round(4).tolist(),
                "pc2": coordinates[:, 1].round(4).tolist(),
            }
            evaluation.figures = {
                "decoder_probabilities": partial(self.probabilities_figure, words),
                "encoder_states": partial(encoder_states_figure, self.data.pairs, coordinates, explained),
            }
        return evaluation

    def encoder_states(self, words: Sequence[str]) -> np.ndarray:
        """s, the encoder's final hidden state after reading each word from the zero state (W, H) (an LSTM's h)."""
        x_enc = np.stack([symbols(encoder_text(word, self.data.n_step)) for word in words])
        encoder = self.model.encoder
        _, s, _ = encoder.forward(one_hot(x_enc, len(ALPHABET), self.dtype), encoder.zero_state(len(words)))
        return s[0] if isinstance(s, tuple) else s

    def probabilities_figure(self, words: Sequence[str]):
        """For each word, the decoder's softmax over the alphabet at every output step."""
        from matplotlib.figure import Figure

        p = self.probabilities(words)
        figure = Figure(figsize=(9, 1.2 + 1.1 * len(words)), layout="constrained")
        axes = figure.subplots(len(words), 1, sharex=True, squeeze=False)[:, 0]
        for ax, word, p_word in zip(axes, words, p, strict=True):
            image = ax.imshow(p_word, aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0)
            ax.set_yticks(range(p_word.shape[0]), [f"t={t + 1}" for t in range(p_word.shape[0])], fontsize=6)
            ax.set_ylabel(word, rotation=0, ha="right", va="center")
        axes[-1].set_xticks(range(len(ALPHABET)), list(ALPHABET))
        axes[-1].set_xlabel("output symbol")
        figure.colorbar(image, ax=list(axes), label="probability")
        figure.suptitle("decoder output probabilities (decoder fed 'S' + padding)")
        return figure


def principal_components(states: np.ndarray, count: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """PCA: with S - mean S = U diag(sigma) V^T, the coordinates (S - mean S) V[:, :count] (W, count) of each row
    on the principal axes, and the fraction of the variance each axis explains, sigma_j^2 / sum sigma^2."""
    centred = states - states.mean(axis=0)
    _, sigma, axes_t = np.linalg.svd(centred, full_matrices=False)
    return centred @ axes_t[:count].T, sigma[:count] ** 2 / np.sum(sigma**2)


def encoder_states_figure(pairs: Sequence[tuple[str, str]], coordinates: np.ndarray, explained: np.ndarray):
    """The encoder's final state of each source word (blue) and of its opposite (red) on the first two principal
    axes, each word joined to its opposite."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 5.5))
    figure.subplots_adjust(left=0.11, right=0.97, bottom=0.1, top=0.93)
    ax = figure.subplots()
    count = len(pairs)
    for k, (source, target) in enumerate(pairs):
        (x0, y0), (x1, y1) = coordinates[k], coordinates[count + k]
        ax.plot([x0, x1], [y0, y1], "-", color="tab:gray", lw=1)
        ax.annotate(source, (x0, y0), textcoords="offset points", xytext=(4, 4), color="tab:blue")
        ax.annotate(target, (x1, y1), textcoords="offset points", xytext=(4, 4), color="tab:red")
    ax.plot(*coordinates[:count].T, "o", color="tab:blue", label="word")
    ax.plot(*coordinates[count:].T, "s", color="tab:red", label="its opposite")
    ax.set(
        xlabel=f"principal axis 1 ({explained[0]:.0%} of the variance)",
        ylabel=f"principal axis 2 ({explained[1]:.0%})",
        title="the encoder's final state of each word (PCA), joined to its opposite",
    )
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8)
    return figure


@hookimpl
def framework_register_datasets(register) -> None:
    register("seq2seq_pairs", make_pairs, PairsConfig)


@hookimpl
def framework_register_tasks(register) -> None:
    register(
        "seq2seq",
        Seq2SeqTask,
        Seq2SeqConfig,
        Recipe(
            dataset="seq2seq_pairs",
            cell="rnn",  # tanh Elman cells for the encoder and the decoder
            loss="softmax_cross_entropy",
            optim=("adam", {"lr": 0.001}),
            # 5000 epochs of the six pairs in minibatches of 3; evaluated (and maybe stopped) every 10 epochs
            train={"steps": 10000, "batch_size": 3, "eval_every": 20},
            # measured: every seed 0-19 reaches the result (docs/atlas.md), stopping when solved within 2000 steps
            pairings={
                "optim=sgd": {"optim.lr": 0.1, "optim.momentum": 0.9, "train.steps": 2000},
                # Rprop: the full batch of six pairs, its step bounded
                "optim=rprop": {
                    "optim.step_init": 0.001,
                    "optim.step_max": 0.01,
                    "train.batch_size": 0,
                    "train.steps": 2000,
                },
                "optim=adagrad": {"optim.lr": 0.01, "train.steps": 2000},
                "optim=rmsprop": {"optim.lr": 0.001, "train.steps": 2000},
                "cell=lstm": {"train.steps": 2000},
                "cell=gru": {"train.steps": 2000},
            },
        ),
    )
