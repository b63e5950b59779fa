"""Benchmark: one training step of this framework's numpy engine against PyTorch CPU.

A training step is forward over the sequence, the loss, backpropagation through time, gradient
clipping by global norm and the optimizer update. For every configuration it is timed for

* ours: the engine's real objects, built from the composed Hydra config through the plugin registry
  (``framework.core.engine.build``): ``run.task.model.loss_and_grads``, ``global_norm`` + ``clip_by_norm``,
  ``run.optimizer.step``, on batches drawn from the task's own dataset;
* torch module: ``nn.RNN``/``nn.LSTM``/``nn.GRU`` + ``nn.Linear``, the same loss, ``clip_grad_norm_``
  and the matching ``torch.optim`` optimizer (SGD, Adagrad, ...), starting from our initial weights;
* torch cells: the same with an explicit Python loop over ``nn.RNNCell``/``nn.LSTMCell``/``nn.GRUCell``.

The three are stepped alternately in blocks (10 steps of ours, 10 of the module, 10 of the cells, 10
of ours, ...; one step per block for the large configurations) on the same cycle of batches, after a
warm-up, each step timed (see :func:`time_alternately` for why blocks), with the same number of
threads (numpy's BLAS through threadpoolctl, torch through ``torch.set_num_threads``); the table gives
the median step of each as steps/s, the speed ratio ours/torch (> 1: we are faster), the step's
matmuls alone in numpy (:func:`matmuls_alone`) with the bound they put on the ratio, and the matmul
GFLOP/s achieved (FLOPs counted analytically, see :func:`step_products`) with its share of this
machine's matmul peak, measured in the same run (the best numpy GEMM of ``--peak-size`` square
matrices, same dtype and threads).

Configurations: the tutorials (adder, charlm, echo), a large char-RNN (65 -> 256 -> 65, 100 steps,
batch 32) with the tanh cell, the LSTM and the GRU, and two scaling series (hidden size at 50 steps,
sequence length at 64 hidden units; plotted as a PNG). The large ones run the charlm task on a
generated text of 64 distinct characters (+ newline = 65 symbols) and lines of exactly T - 1
characters, so that its real dataset serves (32, T, 65) batches. Every configuration trains with
``train.clip_norm=5`` and no value clipping. The adder's sigmoid cell is run as tanh, because
torch.nn.RNN has only tanh and relu. Finally "engine overhead" times our engine's step against a
bare numpy loop of the same math (tanh RNN, readout, summed softmax cross-entropy, BPTT, norm
clipping, SGD) written inline here, on charlm at batch 32 and the large tanh RNN.

"Whole loop" (the tutorial configurations) times the engine's whole training loop, ``engine.train`` with
the command line's observers (the tracker, off, and the progress bar), the task's per-step trace, the
metrics, the history and the default diagnostics (``diagnostics.every=10``), against the bare step above
and PyTorch's module step: a loop of ``--loop-steps`` updates, then as many bare steps, then as many
module steps, alternately, per-step medians. The loop's time runs from its first update to the metrics
of its last one (the final evaluation is not part of it; ``train.eval_every=0``); the bare and module steps
go through the very batches the loop trains on.

    python benchmarks/step.py [--quick] [--dtype float32|float64|both] [--threads N] [--plot PATH] [--peak-size N]
                              [--only NAME ...] [--loop-steps N]

Memory: PyTorch's CPU allocator is given transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``, unless
the environment sets it), as numpy gives its own large arrays (it madvises them by default). Without
them PyTorch's fused float32 LSTM step takes 50-52 ms here alone, and 38-40 ms in this process once
its buffers land in heap memory that numpy had madvised for ours: its speed, and the ratio, would
depend on where the allocator put them (0.59x or 0.79x in back-to-back runs).

``--quick``: tiny sizes and few repeats (the smoke test's, about 10 s). The defaults: both dtypes, 1 thread
(the framework's own ``threads`` default), the plot in benchmarks/results/scaling.png; a full run takes
about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.util
import math
import os
import platform
import statistics
import string
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: the framework and plugins of this checkout
    sys.path.insert(0, str(REPO))

from common import blas_kernels  # noqa: E402

from framework.cli import host  # noqa: E402
from framework.core import engine  # noqa: E402
from framework.core.hookspecs import hookimpl  # noqa: E402
from framework.core.protocols import Batch  # noqa: E402
from framework.nn.cells import KERNELS, ElmanCell, GRUCell, LSTMCell  # noqa: E402
from framework.nn.clipping import clip_by_norm, global_norm  # noqa: E402
from framework.nn.losses import MeanSquaredError, SigmoidSquaredError, SoftmaxCrossEntropy  # noqa: E402
from framework.nn.optimizers import SGD, Adagrad, Adam, RMSprop, Rprop  # noqa: E402

PROG = "benchmarks/step.py"
HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"  # read by PyTorch's CPU allocator: see the module docstring
DEFAULT_PLOT = REPO / "benchmarks" / "results" / "scaling.png"
MAX_NORM = 5.0  # train.clip_norm of every configuration
VOCAB = 65  # symbols of the large configurations: 64 characters + newline
IMPLEMENTATIONS = ("ours", "module", "cells")
LABELS = {"ours": "ours (numpy)", "module": "torch module", "cells": "torch cell loop"}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
OVERHEAD_CONFIGS = ("charlm B=32", "large rnn")  # timed against the bare numpy loop too
LOOP_BUDGET = "small"  # the configurations whose whole training loop is timed too


@dataclass(frozen=True)
class Budget:
    """How long a configuration is timed: warm-up, then rounds until both minimums are met (or max_rounds)."""

    warmup_seconds: float
    warmup_rounds: int
    seconds: float
    min_rounds: int
    max_rounds: int
    block: int = 1  # consecutive steps of one implementation between switches
    product_seconds: float = 0.05  # timing of each matmul shape for the matmuls-alone floor


@dataclass(frozen=True)
class Spec:
    """One configuration: what to compose, and how to pick its batches."""

    name: str
    overrides: tuple[str, ...]
    source: str  # "stream": the dataset's batches; "names": charlm names of ``steps`` steps; "text": generated text
    steps: int = 0  # sequence length for "names" and "text"
    batch: int = 1
    budget: str = "small"
    series: str = ""  # "hidden" or "length": a point of a scaling series


@dataclass
class Result:
    """The timings of one configuration in one dtype."""

    spec: Spec
    dtype: str
    cell: str
    sizes: tuple[int, int, int]  # input, hidden, output
    steps: int
    batch: int
    flops: float  # matmul FLOPs of one training step (forward + backward)
    matmuls_alone: float  # seconds of the step's matmuls alone in numpy (see matmuls_alone)
    seconds: dict[str, float] = field(default_factory=dict)  # median seconds per step, by implementation
    rounds: int = 0


# -- the machine ----------------------------------------------------------------


def header(args: argparse.Namespace, argv: Sequence[str]) -> str:
    """The machine, the library versions, BLAS, the date and the command, as markdown lines."""
    import torch

    blas = []
    for pool in threadpool_info():
        parts = (pool.get("internal_api"), pool.get("version"), pool.get("architecture"))
        library = Path(pool.get("filepath", "")).name
        blas.append(f"{' '.join(p for p in parts if p)} ({library}, {pool.get('num_threads')} threads by default)")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"# Training-step benchmark: ours (numpy) vs PyTorch CPU ({'quick' if args.quick else 'full'})",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"- command: `python {PROG} {' '.join(argv)}`".rstrip(),
        f"- machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} cores (os.cpu_count())",
        f"- python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__} "
        f"(cpu capability {torch.backends.cpu.get_cpu_capability()})",
        f"- thread pools: {'; '.join(blas)}",
        f"- OpenBLAS kernels: {blas_kernels()}",
        f"- huge pages: numpy madvises its large arrays; PyTorch's CPU allocator {HUGE_PAGES}="
        f"{os.environ.get(HUGE_PAGES, '(not set)')}",
        f"- threads: {args.threads} (numpy BLAS via threadpoolctl, torch.set_num_threads)"
        + (
            "; with more than one the ratios are not trustworthy: the implementations slow each other down "
            "(measured: PyTorch's large LSTM step takes 33.5 ms alone with 2 threads, 71 ms here), probably "
            "because each library's idle worker threads keep spinning while the other runs"
            if args.threads > 1
            else ""
        ),
        f"- load average at start (1, 5, 15 min): {load}",
    ]
    return "\n".join(lines)


def numpy_peak(dtype: str, size: int, repeats: int) -> float:
    """The machine's matmul peak: the best GFLOP/s of a (size x size) @ (size x size) numpy GEMM (2 n^3 FLOPs)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(dtype) for _ in range(2))
    out = np.empty_like(a)
    np.matmul(a, b, out=out)  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def torch_peak(dtype: str, size: int, repeats: int) -> float:
    """The same GEMM with torch.mm, for reference."""
    import torch

    a, b = (torch.randn(size, size, dtype=getattr(torch, dtype)) for _ in range(2))
    out = torch.empty_like(a)
    torch.mm(a, b, out=out)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


@dataclass(frozen=True)
class Product:
    """One matmul of a training step, ``count`` times: (m x k) @ (k x n), 2 m k n FLOPs each.

    ``left_transposed``: the left operand is the transpose of a stored (k x m) array, as in a
    weight gradient x^T dz of inputs stored one row per position.
    """

    m: int
    k: int
    n: int
    count: int = 1
    left_transposed: bool = False

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.k * self.n * self.count


def step_products(cell: str, I: int, H: int, K: int, T: int, B: int) -> list[Product]:  # noqa: E741 (the math's names)
    """The matmuls of one training step that every implementation must do.

    With G gate blocks (rnn 1, GRU 3, LSTM 4) and N = B T positions, the forward pass has three
    products: the input projection x Wx, the recurrence h Wh (one per step) and the readout h Wy.
    The backward pass has two products per forward one (the weight gradient and the gradient of
    the product's input), except the input projection, whose input x needs no gradient: only
    dWx = x^T da. Together 2 N (2 I GH + 3 H GH + 3 H K) FLOPs. Element-wise work (gates, loss,
    optimizer) is not counted; our engine also computes dL/dx (2 N GH I more), which is not counted
    either: the count is the work every implementation must do, so GFLOP/s compare as steps/s do.
    """
    G, N = GATES[cell], B * T
    return [
        Product(N, I, G * H),  # x Wx
        Product(B, H, G * H, count=T),  # h_{t-1} Wh
        Product(N, H, K),  # y = h Wy
        Product(H, N, K, left_transposed=True),  # dWy = h^T dy
        Product(N, K, H),  # dh = dy Wy^T
        Product(B, G * H, H, count=T),  # da_t Wh^T
        Product(H, N, G * H, left_transposed=True),  # dWh = h_{t-1}^T da
        Product(I, N, G * H, left_transposed=True),  # dWx = x^T da
    ]


def matmul_flops(products: Sequence[Product]) -> float:
    """Matmul FLOPs of one training step (see :func:`step_products`)."""
    return sum(p.flops for p in products)


def matmuls_alone(products: Sequence[Product], dtype: str, seconds: float) -> float:
    """Seconds the step's matmuls take in numpy with nothing else to do: each product timed at its shape
    (the median of repeated ``np.matmul`` calls into one output, operands hot in the cache, for about
    ``seconds``) times its count, summed. A floor for any numpy step: ours / torch cannot exceed
    torch's step time over this."""
    rng = np.random.default_rng(0)
    total = 0.0
    for p in products:
        left = rng.standard_normal((p.k, p.m) if p.left_transposed else (p.m, p.k)).astype(dtype)
        a, b = (left.T if p.left_transposed else left), rng.standard_normal((p.k, p.n)).astype(dtype)
        out = np.empty((p.m, p.n), dtype=dtype)
        np.matmul(a, b, out=out)  # warm-up
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        while len(times) < 5 or (len(times) < 2000 and time.perf_counter() < deadline):
            start = time.perf_counter()
            np.matmul(a, b, out=out)
            times.append(time.perf_counter() - start)
        total += statistics.median(times) * p.count
    return total


# -- ours: the engine's real objects --------------------------------------------


class Composer:
    """Hydra's compose API on the installed framework.conf, with every plugin registered."""

    def __init__(self) -> None:
        from hydra import initialize_config_module

        self.pm = host.manager()  # every component's Hydra options; the command line's observers
        self.context = initialize_config_module(config_module="framework.conf", version_base="1.3")
        self.context.__enter__()

    def build(self, overrides: Sequence[str]) -> engine.Run:
        """``framework.core.engine.build`` of the config composed from ``overrides``."""
        from hydra import compose

        return engine.build(compose(config_name="config", overrides=list(overrides)), self.pm, overrides)

    def close(self) -> None:
        self.context.__exit__(None, None, None)


def write_text(folder: Path, steps: int, lines: int = 48) -> Path:
    """``lines`` lines of exactly steps - 1 characters drawn from 64 distinct ones, each character used at least once.

    The charlm dataset makes each line a sequence of ``steps`` positions (the characters + newline),
    its vocabulary newline + the 64 characters: 65 symbols.
    """
    alphabet = string.ascii_lowercase + string.digits + string.punctuation[: VOCAB - 1 - 36]
    assert len(set(alphabet)) == VOCAB - 1
    rng = np.random.default_rng(steps)
    count = lines * (steps - 1)
    symbols = np.concatenate([rng.permutation(VOCAB - 1) for _ in range(count // (VOCAB - 1) + 1)])[:count]
    if count < VOCAB - 1:
        raise ValueError(f"{lines} lines of {steps - 1} characters cannot hold {VOCAB - 1} distinct characters")
    chars = np.array(list(alphabet))[symbols].reshape(lines, steps - 1)
    path = folder / f"text_{steps}.txt"
    path.write_text("\n".join("".join(row) for row in chars) + "\n", encoding="utf-8")
    return path


def pick_batches(spec: Spec, run: engine.Run, count: int) -> list[Batch]:
    """``count`` batches of the configuration from the task's own dataset, stepped through cyclically."""
    if spec.source == "names":  # charlm: names of exactly spec.steps positions, in the dataset's order
        if spec.batch == 1:
            found = []
            for batch in run.batches:  # one name per step, the state carried from name to name
                if batch.inputs.shape[1] == spec.steps and not batch.new_sequence:
                    found.append(batch)
                if len(found) == count:
                    return found
        rng = np.random.default_rng(0)
        fitting = np.flatnonzero(run.dataset.lengths == spec.steps)
        return [run.dataset.padded(rng.choice(fitting, spec.batch, replace=False)) for _ in range(count)]
    batches = []
    for batch in run.batches:
        if spec.source == "stream" and run.info.task == "echo" and batch.new_sequence:
            continue  # the echo's windows continue each other: the state is carried
        batches.append(batch)
        if len(batches) == count:
            return batches
    raise AssertionError("unreachable: the streams are endless")


class Ours:
    """The engine's step on a cycle of batches: loss_and_grads, global_norm + clip_by_norm, optimizer.step."""

    def __init__(self, run: engine.Run, batches: list[Batch]) -> None:
        self.model, self.optimizer, self.batches = run.task.model, run.optimizer, batches
        self.max_norm = run.settings.train.clip_norm
        self.state: Any = None
        self.k = 0

    def step(self) -> float:
        """One training step, as engine.train does it (without its metrics and events)."""
        batch = self.batches[self.k % len(self.batches)]
        self.k += 1
        result = self.model.loss_and_grads(batch, None if batch.new_sequence else self.state)
        norm = global_norm(result.grads)
        clip_by_norm(result.grads, self.max_norm, norm)
        self.optimizer.step(self.model.params, result.grads, result.loss)
        self.state = result.state
        return result.loss


# -- PyTorch twins -------------------------------------------------------------------


def torch_optimizer(ours: Any, params: list) -> Any:
    """The torch.optim optimizer computing what ours computes (see tests/test_parity_optim.py)."""
    import torch

    c = ours.config
    if isinstance(ours, SGD):
        return torch.optim.SGD(
            params, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay, dampening=0
        )
    if isinstance(ours, Adagrad):
        return torch.optim.Adagrad(
            params,
            lr=c.lr,
            lr_decay=c.lr_decay,
            weight_decay=c.weight_decay,
            initial_accumulator_value=c.initial_accumulator_value,
            eps=c.eps,
        )
    if isinstance(ours, Adam):
        return torch.optim.Adam(
            params, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps, weight_decay=c.weight_decay, amsgrad=c.amsgrad
        )
    if isinstance(ours, RMSprop):
        return torch.optim.RMSprop(
            params,
            lr=c.lr,
            alpha=c.alpha,
            eps=c.eps,
            weight_decay=c.weight_decay,
            momentum=c.momentum,
            centered=c.centered,
        )
    if isinstance(ours, Rprop):
        return torch.optim.Rprop(
            params, lr=c.step_init, etas=(c.eta_minus, c.eta_plus), step_sizes=(c.step_min, c.step_max)
        )
    raise TypeError(f"no torch optimizer for {type(ours).__name__}")


def torch_loss(ours: Any) -> Callable:
    """loss(logits, targets, mask) computing what our loss computes: sum m l / N (N = 1 for reduction=sum)."""
    import torch
    from torch.nn import functional

    def reduce(losses: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return losses.sum() / (losses.numel() if ours.reduction == "mean" else 1)
        m = mask.reshape(mask.shape + (1,) * (losses.ndim - mask.ndim))
        total = (m * losses).sum()
        if ours.reduction == "sum":
            return total
        return total / torch.clamp(m.expand_as(losses).sum(), min=1)

    if isinstance(ours, SoftmaxCrossEntropy):
        return lambda z, t, m: reduce(functional.cross_entropy(z.transpose(1, -1), t, reduction="none"), m)
    if isinstance(ours, SigmoidSquaredError):
        return lambda z, t, m: reduce(0.5 * (torch.sigmoid(z) - t) ** 2, m)
    if isinstance(ours, MeanSquaredError):
        return lambda z, t, m: reduce((z - t) ** 2, m)
    raise TypeError(f"no torch loss for {type(ours).__name__}")


def cell_kind(cell: Any) -> str:
    """rnn, lstm or gru."""
    kinds = {ElmanCell: "rnn", LSTMCell: "lstm", GRUCell: "gru"}
    return kinds[type(cell)]


class Torch:
    """A PyTorch twin of our model with our initial weights: a whole-sequence module, or a cell stepped in Python."""

    def __init__(self, run: engine.Run, batches: list[Batch], loop: bool) -> None:
        import torch

        model = run.task.model
        cell, readout = model.cell, model.readout
        kind = cell_kind(cell)
        I, H = cell.params["Wx"].shape[0], cell.hidden_size  # noqa: E741
        K = readout.params["W"].shape[1]
        dtype = getattr(torch, str(cell.params["Wx"].dtype))
        bias = "b" in cell.params or "bx" in cell.params
        options: dict[str, Any] = {"bias": bias, "dtype": dtype}
        if kind == "rnn":
            activation = run.info.config["cell"]["activation"]
            if activation not in ("tanh", "relu"):
                raise ValueError(f"torch has no {activation} RNN; compose cell.activation=tanh")
            options["nonlinearity"] = activation
        if loop:
            self.rnn = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[kind](
                I, H, **options
            )
            suffix = ""
        else:
            self.rnn = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](
                I, H, batch_first=True, **options
            )
            suffix = "_l0"
        self.readout = torch.nn.Linear(H, K, bias="b" in readout.params, dtype=dtype)
        theirs = {"Wx": "weight_ih", "Wh": "weight_hh", "b": "bias_ih", "bx": "bias_ih", "bh": "bias_hh"}
        with torch.no_grad():  # our Wx (I, G H) is weight_ih.T; one bias b is bias_ih with bias_hh = 0
            for name, array in cell.params.items():
                getattr(self.rnn, theirs[name] + suffix).copy_(torch.from_numpy(array.T.copy()))
            if bias and "bh" not in cell.params:
                getattr(self.rnn, "bias_hh" + suffix).zero_()
            self.readout.weight.copy_(torch.from_numpy(readout.params["W"].T.copy()))
            if "b" in readout.params:
                self.readout.bias.copy_(torch.from_numpy(readout.params["b"]))
        self.loop, self.kind = loop, kind
        self.params = [*self.rnn.parameters(), *self.readout.parameters()]
        self.optimizer = torch_optimizer(run.optimizer, self.params)
        self.loss = torch_loss(model.loss)
        self.max_norm = run.settings.train.clip_norm
        target_type = torch.long if isinstance(model.loss, SoftmaxCrossEntropy) else dtype
        self.batches = [
            (
                torch.from_numpy(b.inputs),
                torch.from_numpy(np.asarray(b.targets)).to(target_type),
                None if b.mask is None else torch.from_numpy(np.asarray(b.mask, dtype=b.inputs.dtype)),
                b.new_sequence,
            )
            for b in batches
        ]
        self.state: Any = None
        self.k = 0

    def forward(self, x: Any, state: Any) -> tuple[Any, Any]:
        """The hidden states (B, T, H) and the final state from ``state`` (None: zero)."""
        import torch

        if not self.loop:
            if state is not None:
                state = tuple(s[None] for s in state) if self.kind == "lstm" else state[None]
            out, final = self.rnn(x, state)
            return out, (tuple(s[0] for s in final) if self.kind == "lstm" else final[0])
        outputs = []
        for t in range(x.shape[1]):
            state = self.rnn(x[:, t], state)
            outputs.append(state[0] if self.kind == "lstm" else state)
        return torch.stack(outputs, dim=1), state

    def loss_on(self, batch: tuple, state: Any) -> tuple[Any, Any]:
        """The loss of ``batch`` from ``state`` and the final state."""
        x, targets, mask, _ = batch
        h, final = self.forward(x, state)
        return self.loss(self.readout(h), targets, mask), final

    def step(self) -> float:
        """One training step: zero_grad, forward, loss, backward, clip_grad_norm_, optimizer step."""
        import torch

        batch = self.batches[self.k % len(self.batches)]
        self.k += 1
        self.optimizer.zero_grad(set_to_none=True)
        loss, final = self.loss_on(batch, None if batch[3] else self.state)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        self.optimizer.step()
        self.state = tuple(s.detach() for s in final) if self.kind == "lstm" else final.detach()
        return float(loss.detach())


def check_same_loss(run: engine.Run, batch: Batch, twins: Sequence[Torch]) -> None:
    """Refuse to time models that compute different things: the first loss from the zero state must agree."""
    import torch

    ours = run.task.model.loss_and_grads(batch, None).loss
    tolerance = 1e-3 if batch.inputs.dtype == np.float32 else 1e-8
    for twin in twins:
        with torch.no_grad():
            theirs = float(twin.loss_on(twin.batches[0], None)[0])
        if not math.isclose(ours, theirs, rel_tol=tolerance, abs_tol=tolerance):
            kind = "cell loop" if twin.loop else "module"
            raise AssertionError(f"{run.info.task}: our loss {ours!r} != torch {kind}'s {theirs!r}")


# -- timing ------------------------------------------------------------------------


def time_alternately(steps: dict[str, Callable[[], Any]], budget: Budget) -> tuple[dict[str, float], int]:
    """Median seconds per step of each callable, in alternating blocks (A*k B*k C*k A*k ...) after a warm-up.

    k = ``budget.block`` consecutive steps of one implementation, each timed: a training loop runs its
    own steps back to back, with its code and data in the caches, while a step run right after another
    implementation's starts cold (measured: our adder step at batch 1 takes 96 us interleaved one by
    one with torch's, 51 us in blocks). Alternating the blocks still spreads any drift of the machine
    over all implementations alike. Returns the medians and the rounds (one round: a block of each).
    """
    start = time.perf_counter()
    rounds = 0
    while rounds < budget.warmup_rounds or (
        rounds < budget.max_rounds and time.perf_counter() - start < budget.warmup_seconds
    ):
        for step in steps.values():
            step()
        rounds += 1
    times: dict[str, list[float]] = {name: [] for name in steps}
    gc.collect()
    start = time.perf_counter()
    rounds = 0
    while rounds < budget.max_rounds and (rounds < budget.min_rounds or time.perf_counter() - start < budget.seconds):
        for name, step in steps.items():
            for _ in range(budget.block):
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: statistics.median(values) for name, values in times.items()}, rounds


def build_run(
    spec: Spec, dtype: str, composer: Composer, folder: Path, threads: int, extra: Sequence[str] = ()
) -> engine.Run:
    """The engine's run of a configuration (and the ``extra`` overrides): clipping by norm only, nothing tracked,
    a generated text for the large ones."""
    overrides = [
        *spec.overrides,
        *extra,
        f"dtype={dtype}",
        f"threads={threads}",
        "train.clip_value=null",
        f"train.clip_norm={MAX_NORM}",
        "tracking.enabled=false",
    ]
    if spec.source == "text":
        overrides.append(f"dataset.path={write_text(folder, spec.steps)}")
    return composer.build(overrides)


def bench(spec: Spec, dtype: str, composer: Composer, folder: Path, budget: Budget, threads: int) -> Result:
    """Time ours, the torch module and the torch cell loop on one configuration in one dtype."""
    run = build_run(spec, dtype, composer, folder, threads)
    batches = pick_batches(spec, run, 16)
    ours = Ours(run, batches)
    module, cells = Torch(run, batches, loop=False), Torch(run, batches, loop=True)
    check_same_loss(run, batches[0], (module, cells))
    cell = run.task.model.cell
    I, H = cell.params["Wx"].shape[0], cell.hidden_size  # noqa: E741
    K = run.task.model.readout.params["W"].shape[1]
    B, T = batches[0].inputs.shape[:2]
    products = step_products(cell_kind(cell), I, H, K, T, B)
    floor = matmuls_alone(products, dtype, budget.product_seconds)
    result = Result(spec, dtype, cell_kind(cell), (I, H, K), T, B, matmul_flops(products), floor)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        result.seconds, result.rounds = time_alternately(
            {"ours": ours.step, "module": module.step, "cells": cells.step}, budget
        )
    return result


# -- the bare numpy loop (engine overhead) ---------------------------------------------


def bare_step(P: dict[str, np.ndarray], x: np.ndarray, targets: np.ndarray, lr: float, max_norm: float) -> float:
    """One SGD step of a tanh RNN + readout + summed softmax cross-entropy, written out inline; returns the loss.

    z_t = x_t Wx + h_{t-1} Wh + b, h_t = tanh(z_t), y_t = h_t Wy + by, L = -sum log softmax(y_t)[t_t];
    BPTT: dh_t = dL/dh_t + dz_{t+1} Wh^T, dz_t = dh_t (1 - h_t^2); the gradients scaled by
    min(1, max_norm / (||g|| + 1e-6)); theta <- theta - lr g. h_0 = 0, no mask.
    """
    Wx, Wh, b, Wy, by = P["Wx"], P["Wh"], P["b"], P["Wy"], P["by"]
    B, T, I = x.shape  # noqa: E741
    H = Wh.shape[0]
    z = (x.reshape(B * T, I) @ Wx).reshape(B, T, H)
    z += b
    h = np.empty((B, T + 1, H), dtype=z.dtype)  # h[:, 0] = h_0 = 0, h[:, t + 1] = h_t
    h[:, 0] = 0.0
    for t in range(T):
        z_t = z[:, t]
        z_t += h[:, t] @ Wh
        np.tanh(z_t, out=h[:, t + 1])
    hs = h[:, 1:].reshape(B * T, H)
    y = hs @ Wy
    y += by
    y -= y.max(axis=1, keepdims=True)
    np.exp(y, out=y)
    y /= y.sum(axis=1, keepdims=True)  # p
    rows, cols = np.arange(B * T), targets.reshape(-1)
    loss = -float(np.log(y[rows, cols]).sum())
    y[rows, cols] -= 1.0  # dL/dy
    grads = {"Wy": hs.T @ y, "by": y.sum(axis=0)}
    dh_out = (y @ Wy.T).reshape(B, T, H)
    dz = np.empty_like(z)
    dh_next = np.zeros((B, H), dtype=z.dtype)
    for t in range(T - 1, -1, -1):
        dz_t = dz[:, t]
        np.add(dh_out[:, t], dh_next, out=dz_t)
        h_t = h[:, t + 1]
        dz_t *= 1.0 - h_t * h_t
        dh_next = dz_t @ Wh.T
    dz_flat = dz.reshape(B * T, H)
    grads["Wx"] = x.reshape(B * T, I).T @ dz_flat
    grads["Wh"] = h[:, :-1].reshape(B * T, H).T @ dz_flat
    grads["b"] = dz_flat.sum(axis=0)
    norm = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
    scale = lr * min(1.0, max_norm / (norm + 1e-6))
    for name, g in grads.items():
        P[name] -= scale * g
    return loss


def engine_overhead(dtype: str, composer: Composer, folder: Path, spec: Spec, budget: Budget, threads: int) -> str:
    """Our engine's step vs :func:`bare_step` on a tanh RNN configuration (same weights, same batches): a table row."""
    run = build_run(spec, dtype, composer, folder, threads)
    batches = pick_batches(spec, run, 16)
    assert all(b.mask is None or np.all(b.mask == 1) for b in batches)
    model, lr = run.task.model, run.optimizer.config.lr
    assert run.optimizer.config.momentum == 0 and model.loss.reduction == "sum"
    names = {"Wx": "cell.Wx", "Wh": "cell.Wh", "b": "cell.b", "Wy": "readout.W", "by": "readout.b"}
    P = {ours: model.params[theirs].copy() for ours, theirs in names.items()}
    # the same math: after one step from the same weights, the same weights
    first = batches[0]
    bare_loss = bare_step(P, first.inputs, np.asarray(first.targets), lr, MAX_NORM)
    ours = Ours(run, batches)
    ours.batches = [Batch(b.inputs, b.targets, b.mask, True) for b in batches]  # h_0 = 0, as the bare loop
    engine_loss = ours.step()
    difference = max(float(np.max(np.abs(P[k] - model.params[v]))) for k, v in names.items())
    tolerance = 1e-4 if dtype == "float32" else 1e-10
    if not (math.isclose(bare_loss, engine_loss, rel_tol=tolerance) and difference < tolerance):
        raise AssertionError(f"bare loop and engine differ: loss {bare_loss} vs {engine_loss}, weights {difference}")
    k = [0]

    def bare() -> None:
        batch = batches[k[0] % len(batches)]
        k[0] += 1
        bare_step(P, batch.inputs, np.asarray(batch.targets), lr, MAX_NORM)

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        seconds, rounds = time_alternately({"engine": ours.step, "bare": bare}, budget)
    e, b = seconds["engine"], seconds["bare"]
    return (
        f"| {spec.name} | {dtype} | {1 / e:.2f} | {1 / b:.2f} | {e * 1e3:.3f} | {b * 1e3:.3f} | "
        f"{e / b:.3f} | {(e - b) / e:.1%} | {difference:.1e} | {rounds} |"
    )


# -- the whole training loop ----------------------------------------------------------


class LoopClock:
    """An observer of runs: when the run started, and when the metrics of its last update arrived."""

    def __init__(self) -> None:
        self.started = self.last = 0.0

    @hookimpl
    def framework_run_started(self, run: Any) -> None:
        self.started = time.perf_counter()

    @hookimpl
    def framework_metrics_block(self, run: Any, block: Any) -> None:
        self.last = time.perf_counter()


def whole_loop(spec: Spec, dtype: str, composer: Composer, folder: Path, rounds: int, threads: int, steps: int) -> str:
    """Per-step medians of the engine's whole loop (with numpy's and, if numba is installed, the compiled cell
    kernel), the bare step and PyTorch's module step: a table row.

    A round: a fresh run trained for ``steps`` updates through ``engine.train_and_report`` (its per-step time from
    its start to the metrics of its last update), once per kernel, then ``steps`` bare steps, then ``steps`` module
    steps, both on the batches the loop trains on (charlm's names differ in length); one round of warm-up first.
    """
    extra = (f"train.steps={steps}", "train.eval_every=0")
    first = build_run(spec, dtype, composer, folder, threads, extra)
    batches = [next(first.batches) for _ in range(steps)]  # the loop's own batches (the same seed: the same stream)
    bare, module = Ours(first, batches), Torch(first, batches, loop=False)
    clock = LoopClock()
    composer.pm.register(clock)
    kernels = [k for k in KERNELS if k == "numpy" or importlib.util.find_spec(k)]
    times: dict[str, list[float]] = {**{k: [] for k in kernels}, "bare": [], "module": []}
    try:
        for _ in range(rounds + 1):
            for kernel in kernels:
                run = build_run(spec, dtype, composer, folder, threads, (*extra, f"cell.kernel={kernel}"))
                gc.collect()
                engine.train_and_report(run, composer.pm.hook)
                times[kernel].append((clock.last - clock.started) / steps)
            with threadpool_limits(limits=threads), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                for name, step in (("bare", bare.step), ("module", module.step)):
                    start = time.perf_counter()
                    for _ in range(steps):
                        step()
                    times[name].append((time.perf_counter() - start) / steps)
    finally:
        composer.pm.unregister(clock)
    median = {name: statistics.median(values[1:]) for name, values in times.items()}
    loop, step, torch_step = median["numpy"], median["bare"], median["module"]
    compiled = median.get("numba")
    numba_cells = "n/a (no numba) | n/a" if compiled is None else f"{compiled * 1e6:.1f} | {torch_step / compiled:.2f}"
    return (
        f"| {spec.name} | {dtype} | {loop * 1e6:.1f} | {step * 1e6:.1f} | {loop / step:.2f} | "
        f"{torch_step * 1e6:.1f} | {torch_step / loop:.2f} | {numba_cells} | {rounds} |"
    )


# -- the report ---------------------------------------------------------------------


def configurations(quick: bool) -> list[Spec]:
    """The tutorials, the large char-RNNs and the scaling series (tiny sizes with ``quick``)."""
    H, T, B = (16, 10, 4) if quick else (256, 100, 32)
    hidden_sizes = (8, 32) if quick else (16, 64, 256, 1024)
    lengths = (5, 20) if quick else (10, 100, 1000)
    scaling_length, scaling_hidden = (10, 16) if quick else (50, 64)
    tanh_adder = ("task=adder", "cell.activation=tanh")
    specs = [
        Spec("adder B=1", (*tanh_adder, "train.batch_size=1"), "stream"),
        Spec("adder B=32", (*tanh_adder, "train.batch_size=32"), "stream", batch=32),
        Spec("charlm B=1", ("task=charlm", "train.batch_size=1"), "names", steps=10),
        Spec("charlm B=32", ("task=charlm", "train.batch_size=32"), "names", steps=10, batch=32),
        Spec("echo B=5", ("task=echo",), "stream", batch=5),
    ]
    for cell in ("rnn", "lstm", "gru"):
        overrides = ("task=charlm", f"cell={cell}", f"task.hidden_size={H}", f"train.batch_size={B}")
        specs.append(Spec(f"large {cell}", overrides, "text", steps=T, batch=B, budget="large"))
    for size in hidden_sizes:
        overrides = ("task=charlm", "cell=rnn", f"task.hidden_size={size}", f"train.batch_size={B}")
        specs.append(Spec(f"hidden={size}", overrides, "text", scaling_length, B, "large", "hidden"))
    for length in lengths:
        overrides = ("task=charlm", "cell=rnn", f"task.hidden_size={scaling_hidden}", f"train.batch_size={B}")
        specs.append(Spec(f"length={length}", overrides, "text", length, B, "large", "length"))
    return specs


def budgets(quick: bool) -> dict[str, Budget]:
    """Timing budgets by configuration size."""
    if quick:
        tiny = Budget(0.0, 2, 0.05, 3, 20, block=2, product_seconds=0.002)
        return {"small": tiny, "large": tiny}
    return {"small": Budget(0.5, 5, 4.0, 20, 500, block=10), "large": Budget(1.0, 2, 4.0, 5, 2000)}


def row(r: Result, peak: float) -> str:
    """A table row: steps/s, speed ratios and GFLOP/s (% of peak) of the three implementations."""
    rate = {name: 1.0 / s for name, s in r.seconds.items()}
    gflops = {name: r.flops * rate[name] / 1e9 for name in IMPLEMENTATIONS}
    I, H, K = r.sizes  # noqa: E741
    cells = [
        r.spec.name,
        r.cell,
        f"{I}-{H}-{K}",
        str(r.steps),
        str(r.batch),
        r.dtype,
        f"{r.flops / 1e6:.3f}",
        *(f"{rate[name]:.1f}" for name in IMPLEMENTATIONS),
        f"{rate['ours'] / rate['module']:.2f}",
        f"{rate['ours'] / rate['cells']:.2f}",
        f"{r.matmuls_alone * 1e3:.4g}",
        f"{r.seconds['module'] / r.matmuls_alone:.2f}",
        *(f"{gflops[name]:.3f} ({gflops[name] / peak:.1%})" for name in IMPLEMENTATIONS),
        str(r.rounds),
    ]
    return "| " + " | ".join(cells) + " |"


TABLE_HEAD = (
    "| config | cell | I-H-K | T | B | dtype | MFLOP/step | ours steps/s | torch module steps/s | "
    "torch cells steps/s | ours/module | ours/cells | matmuls alone (ms) | ours/module bound | "
    "GFLOP/s ours (% peak) | GFLOP/s module (% peak) | GFLOP/s cells (% peak) | rounds |\n" + "|" + "---|" * 18
)


def plot_scaling(results: Sequence[Result], path: Path) -> None:
    """Steps/s against hidden size and against sequence length: ours, PyTorch and the matmuls alone, each dtype."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    axes = figure.subplots(1, 2)
    colors = {"ours": "tab:blue", "module": "tab:orange", "cells": "tab:green"}
    styles = {"float32": "-", "float64": "--"}
    for ax, series, xlabel in zip(axes, ("hidden", "length"), ("hidden size H", "sequence length T"), strict=True):
        points = [r for r in results if r.spec.series == series]
        for dtype in sorted({r.dtype for r in points}):
            chosen = [r for r in points if r.dtype == dtype]
            xs = [r.sizes[1] if series == "hidden" else r.steps for r in chosen]
            for name in IMPLEMENTATIONS:
                ys = [1.0 / r.seconds[name] for r in chosen]
                ax.plot(xs, ys, styles.get(dtype, ":"), marker="o", color=colors[name], label=f"{LABELS[name]} {dtype}")
            floor = [1.0 / r.matmuls_alone for r in chosen]
            ax.plot(xs, floor, styles.get(dtype, ":"), color="tab:gray", label=f"numpy matmuls alone {dtype}")
        if points:
            r = points[0]
            fixed = f"T={r.steps}" if series == "hidden" else f"H={r.sizes[1]}"
            ax.set_title(f"tanh RNN {r.sizes[0]}-H-{r.sizes[2]}, {fixed}, B={r.batch}")
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="training steps/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a few seconds)")
    parser.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    parser.add_argument("--threads", type=int, default=1, help="threads of numpy's BLAS and of torch (default 1)")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="the scaling plot (PNG)")
    parser.add_argument("--peak-size", type=int, default=None, help="GEMM size of the peak (default 1024; quick 256)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="only the configurations whose name starts with NAME (repeatable), e.g. --only 'large lstm' --only charlm",
    )
    parser.add_argument(
        "--loop-steps", type=int, default=None, help="updates per round of the whole-loop timing (1000; quick 20)"
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    specs = configurations(args.quick)
    for prefix in args.only or ():
        if not chosen(specs, [prefix]):
            names = ", ".join(spec.name for spec in specs)
            parser.error(f"--only {prefix!r} names no configuration; the configurations: {names}")
    return args


def chosen(specs: list[Spec], only: Sequence[str] | None) -> list[Spec]:
    """The configurations named by ``--only`` (by the start of their names), or all of them."""
    return [spec for spec in specs if not only or any(spec.name.startswith(prefix) for prefix in only)]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    os.environ.setdefault(HUGE_PAGES, "1")  # before PyTorch allocates
    import torch

    torch.set_num_threads(args.threads)
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    peak_size = args.peak_size or (256 if args.quick else 1024)
    print(header(args, argv), flush=True)
    composer = Composer()
    gc.collect()
    gc.freeze()  # the imports' objects (torch, hydra) out of the collector's way: cheaper, steadier collections
    results: list[Result] = []
    with threadpool_limits(limits=args.threads), tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        peaks = {d: numpy_peak(d, peak_size, 3 if args.quick else 10) for d in dtypes}
        torch_peaks = {d: torch_peak(d, peak_size, 3 if args.quick else 10) for d in dtypes}
        for d in dtypes:
            print(
                f"- matmul peak {d}: numpy {peaks[d]:.2f} GFLOP/s (best {peak_size}x{peak_size} GEMM; the % below), "
                f"torch.mm {torch_peaks[d]:.2f} GFLOP/s",
                flush=True,
            )
        print(
            "\nSteps/s: the median training step (forward, loss, BPTT, clip by norm 5, optimizer update); "
            "ours/module and ours/cells: speed ratios, > 1 means ours is faster. Matmuls alone: the step's "
            "matmuls in numpy with nothing else to do, each timed at its shape; ours/module bound: the "
            "module's step over that, the ratio a numpy step would reach if nothing but its matmuls took "
            "time. GFLOP/s: matmul FLOPs of forward + backward (2 B T (2 I G H + 3 H G H + 3 H K), "
            "G = gates) per second; % of the numpy GEMM peak above. adder: tanh cell in place of the "
            "tutorial's sigmoid (torch.nn.RNN has none). Large and scaling configurations: charlm task on "
            "generated text, 65 symbols.\n",
            flush=True,
        )
        print(TABLE_HEAD, flush=True)
        budget_of = budgets(args.quick)
        specs = chosen(configurations(args.quick), args.only)
        for spec in specs:
            for dtype in dtypes:
                result = bench(spec, dtype, composer, folder, budget_of[spec.budget], args.threads)
                results.append(result)
                print(row(result, peaks[dtype]), flush=True)
        compared = [s for s in specs if s.name in OVERHEAD_CONFIGS]
        if compared:
            print(
                "\nEngine overhead (charlm at batch 32, large tanh RNN): our engine's step vs a bare numpy loop "
                "of the same math.\n"
            )
            print(
                "| config | dtype | engine steps/s | bare numpy steps/s | engine ms | bare ms | engine/bare time | "
                "overhead share of engine step | max weight difference after 1 step | rounds |\n" + "|" + "---|" * 10
            )
            for spec in compared:
                for dtype in dtypes:
                    line = engine_overhead(dtype, composer, folder, spec, budget_of[spec.budget], args.threads)
                    print(line, flush=True)
        looped = [s for s in specs if s.budget == LOOP_BUDGET]
        if looped:
            steps = args.loop_steps or (20 if args.quick else 1000)
            print(
                "\nWhole loop: the engine's training loop per update (engine.train with the command line's observers, "
                "the task's trace, metrics, history, diagnostics.every=10; no evaluation), against the bare step "
                f"above and PyTorch's module step; {steps} updates of each per round, alternately, medians.\n"
            )
            print(
                "| config | dtype | whole loop (us/step) | bare step (us) | loop / bare | torch module step (us) | "
                "torch module / loop | whole loop, cell.kernel=numba (us/step) | torch module / numba loop | rounds |\n"
                + "|"
                + "---|" * 10
            )
            for spec in looped:
                for dtype in dtypes:
                    rounds = 2 if args.quick else 7
                    print(whole_loop(spec, dtype, composer, folder, rounds, args.threads, steps), flush=True)
    composer.close()
    if any(r.spec.series for r in results):
        plot_scaling(results, args.plot)
        print(f"\nScaling plot: {args.plot}")
    print(f"Load average at end (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
