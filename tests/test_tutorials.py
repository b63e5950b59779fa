"""dataset.generator=tutorial: each tutorial's data, first weights and printed numbers, against faithful copies of
the tutorials' published code kept here (trimmed to what is compared, their names and calls as published), and the
settings the tutorial's data fix, refused in one line."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_no_runs, hook_of, one_line

from framework.core import engine, plugins
from framework.core.errors import ConfigError
from framework.core.hookspecs import hookimpl
from framework.core.protocols import Batch
from plugins.adder import from_bits

PM = plugins.manager()


def build(compose, *overrides: str) -> engine.Run:
    return engine.build(compose("tracking.enabled=false", "dataset.generator=tutorial", *overrides), PM)


def trained(compose, *overrides: str) -> tuple[engine.Run, dict]:
    run = build(compose, *overrides)
    return run, engine.train(run, PM.hook)


# -- counting: Peter Roelants, "How to implement a recurrent neural network, part 1" -----------------------------
# https://peterroelants.github.io/posts/rnn-implementation-part01/ (notebooks/RNN_implementation/
# rnn_implementation_part01.ipynb of github.com/peterroelants/peterroelants.github.io)


def roelants(seed: int) -> tuple[list[float], float]:
    """The tutorial's data, BPTT and Rprop loop; returns its final weights [wx, wRec] and the test sequence's output."""
    np.random.seed(seed=seed)
    nb_of_samples = 20
    sequence_len = 10
    X = np.zeros((nb_of_samples, sequence_len))
    for row_idx in range(nb_of_samples):
        X[row_idx, :] = np.around(np.random.rand(sequence_len)).astype(int)
    t = np.sum(X, axis=1)

    def forward_states(X, wx, wRec):
        S = np.zeros((X.shape[0], X.shape[1] + 1))
        for k in range(0, X.shape[1]):
            S[:, k + 1] = X[:, k] * wx + S[:, k] * wRec
        return S

    def output_gradient(y, t):
        return 2.0 * (y - t) / nb_of_samples

    def backward_gradient(X, S, grad_out, wRec):
        grad_over_time = np.zeros((X.shape[0], X.shape[1] + 1))
        grad_over_time[:, -1] = grad_out
        wx_grad = 0
        wRec_grad = 0
        for k in range(X.shape[1], 0, -1):
            wx_grad += np.sum(grad_over_time[:, k] * X[:, k - 1])
            wRec_grad += np.sum(grad_over_time[:, k] * S[:, k - 1])
            grad_over_time[:, k - 1] = grad_over_time[:, k] * wRec
        return (wx_grad, wRec_grad), grad_over_time

    def update_rprop(X, t, W, W_prev_sign, W_delta, eta_p, eta_n):
        S = forward_states(X, W[0], W[1])
        grad_out = output_gradient(S[:, -1], t)
        W_grads, _ = backward_gradient(X, S, grad_out, W[1])
        W_sign = np.sign(W_grads)
        for i, _ in enumerate(W):
            if W_sign[i] == W_prev_sign[i]:
                W_delta[i] *= eta_p
            else:
                W_delta[i] *= eta_n
        return W_delta, W_sign

    eta_p = 1.2
    eta_n = 0.5
    W = [-1.5, 2]
    W_delta = [0.001, 0.001]
    W_sign = [0, 0]
    for _ in range(500):
        W_delta, W_sign = update_rprop(X, t, W, W_sign, W_delta, eta_p, eta_n)
        for i, _ in enumerate(W):
            W[i] -= W_sign[i] * W_delta[i]
    test_inpt = np.asarray([[0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 1, 1]])
    test_outpt = forward_states(test_inpt, W[0], W[1])[:, -1]
    return W, float(test_outpt[0])


def test_counting_draws_the_tutorials_data(compose):
    run = build(compose, "task=counting", "seed=1")
    np.random.seed(seed=1)
    X = np.array([np.around(np.random.rand(10)) for _ in range(20)])
    np.testing.assert_array_equal(run.dataset.inputs[..., 0], X)
    np.testing.assert_array_equal(run.dataset.targets[:, 0], X.sum(axis=1))


@pytest.mark.parametrize("seed", [1, 7])
def test_counting_ends_at_the_tutorials_weights_to_every_digit(compose, seed):
    """seed=1 is the tutorial's: w_x = 1.00135554721, w_rec = 0.999674473785, 4.99896 for 0 1 1 0 0 0 0 1 0 0 1 1
    (which the tutorial prints as 4.99 or, with {:.2f}, 5.00)."""
    (w_x, w_rec), output = roelants(seed)
    _, final = trained(compose, "task=counting", f"seed={seed}")
    assert (final.metrics["w_x"], final.metrics["w_rec"]) == (w_x, w_rec)
    assert final.metrics["test_output"] == pytest.approx(output, rel=1e-14)
    if seed == 1:
        assert (f"{w_x:.12g}", f"{w_rec:.12g}", f"{output:.5f}") == ("1.00135554721", "0.999674473785", "4.99896")


# -- adder: Andrew Trask, "Anyone Can Learn To Code an LSTM-RNN in Python" -----------------------------------------
# https://iamtrask.github.io/2015/11/15/anyone-can-code-lstm/: benchmarks/trask_adder.py is the faithful copy


def trask() -> list[tuple[float, str, str, int, int, int]]:
    """What the tutorial's script prints every 1000 of its 10000 iterations (seed 0): (Error, Pred, True, a, b, out),
    the bits as the script's arrays joined ("00000001")."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "trask_adder.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True, timeout=120).stdout
    blocks = re.findall(r"Error:\[(.+?)\]\nPred:\[(.+?)\]\nTrue:\[(.+?)\]\n(\d+) \+ (\d+) = (\d+)\n", out)
    return [
        (float(error), pred.replace(" ", ""), true.replace(" ", ""), int(a), int(b), int(total))
        for error, pred, true, a, b, total in blocks
    ]


def test_adder_prints_the_tutorials_progress_at_every_1000th_iteration(compose):
    """The tutorial prints iteration j's pair, predicted from the weights of j updates, before training on it: the
    evaluation after j steps (and, for j = 0, the task before training). Its sigmoid is 1 / (1 + exp(-x)), ours
    (1 + tanh(x/2)) / 2: equal to the last bits, which 10000 updates keep below the printed 8 digits."""
    expected = trask()
    assert len(expected) == 10
    run = build(compose, "task=adder", "task.stop_when_solved=false")
    printed = []

    class Printout:
        @hookimpl
        def framework_evaluation(self, run, step, evaluation, final):
            printed.append(evaluation.tables["sums"])

    first = run.task.printed[0]  # iteration 0, before training
    engine.train(run, hook_of(Printout()))
    columns = ("error", "pred", "true", "a", "b", "out")
    got = [tuple(row[column][0] for column in columns) for row in printed]
    assert len(got) == 10  # after 1000, ..., 10000 steps: the tutorial prints 1000, ..., 9000
    assert [g[1:] for g in got[:9]] == [e[1:] for e in expected[1:]]
    np.testing.assert_allclose([g[0] for g in got[:9]], [e[0] for e in expected[1:]], rtol=1e-8)
    error, pred, true, a, b, out = expected[0]
    assert first.startswith("after 0 steps") and f"Error: {error:.8f}".rstrip("0") in first
    assert f"Pred: {pred}\nTrue: {true}\n{a} + {b} = {out}" in first
    assert expected[0][3:] == (9, 60, 1) and expected[-1][3:] == (11, 3, 14)  # the tutorial's first and last lines


def test_adder_draws_the_tutorials_weights_then_its_pairs(compose):
    run = build(compose, "task=adder", "seed=3")
    np.random.seed(3)
    U, V, W = (2 * np.random.random(shape) - 1 for shape in ((2, 16), (16, 1), (16, 16)))
    params = run.task.model.params
    for name, expected in (("cell.Wx", U), ("readout.W", V), ("cell.Wh", W)):
        np.testing.assert_array_equal(params[name], expected)
    pairs = [(np.random.randint(128), np.random.randint(128)) for _ in range(3)]
    batches = [next(run.batches) for _ in range(3)]  # the probe's batch did not shift them
    got = [tuple(int(from_bits(batch.inputs[0, :, k])) for k in (0, 1)) for batch in batches]
    assert got == pairs


# -- echo: Erik Hallstrom, "How to build a Recurrent Neural Network in TensorFlow" -----------------------------------
# https://medium.com/@erikhallstrm/hello-world-rnn-83cd7105b767 (TensorFlow 1; its numpy part, and its graph written
# in numpy below; the tutorial sets no seed: np.random.seed(seed) comes first)


def hallstrom(seed: int, epochs: int) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """W, W2 and every epoch's (x, y) of the tutorial's code."""
    np.random.seed(seed)
    total_series_length = 50000
    state_size = 4
    num_classes = 2
    echo_step = 3
    batch_size = 5

    def generateData():  # noqa: N802 (the tutorial's name)
        x = np.array(np.random.choice(2, total_series_length, p=[0.5, 0.5]))
        y = np.roll(x, echo_step)
        y[0:echo_step] = 0
        x = x.reshape((batch_size, -1))
        y = y.reshape((batch_size, -1))
        return (x, y)

    W = np.random.rand(state_size + 1, state_size)
    W2 = np.random.rand(state_size, num_classes)
    return W, W2, [generateData() for _ in range(epochs)]


def hallstrom_first_loss(W: np.ndarray, W2: np.ndarray, batchX: np.ndarray, batchY: np.ndarray) -> float:
    """total_loss of the tutorial's graph on its first window, from the zero state (its b, b2 are 0)."""
    current_state = np.zeros((5, 4))
    losses = []
    for current_input, labels in zip(batchX.T, batchY.T, strict=True):
        input_and_state_concatenated = np.concatenate([current_input[:, None], current_state], axis=1)
        current_state = np.tanh(input_and_state_concatenated @ W)
        logits = current_state @ W2
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        losses.append(-log_p[np.arange(5), labels])
    return float(np.mean(losses))


def test_echo_draws_the_tutorials_weights_and_series(compose):
    """Windows start at batch_idx * truncated_backprop_length; a new series every epoch (666 windows)."""
    W, W2, series = hallstrom(seed=2, epochs=2)
    run = build(compose, "task=echo", "seed=2")
    params = run.task.model.params
    np.testing.assert_array_equal(params["cell.Wx"], W[:1])
    np.testing.assert_array_equal(params["cell.Wh"], W[1:])
    np.testing.assert_array_equal(params["readout.W"], W2)
    assert not params["cell.b"].any() and not params["readout.b"].any()
    windows = [next(run.batches) for _ in range(667)]
    for batch, (x, y), start in ((windows[0], series[0], 0), (windows[1], series[0], 15), (windows[666], series[1], 0)):
        np.testing.assert_array_equal(batch.inputs[..., 0], x[:, start : start + 15])
        np.testing.assert_array_equal(batch.targets, y[:, start : start + 15])
    first = run.task.model.loss_and_grads(windows[0], None).loss
    x, y = series[0]
    assert first == pytest.approx(hallstrom_first_loss(W, W2, x[:, :15], y[:, :15]), rel=1e-12)


# -- charlm: deeplearning.ai, Sequence Models, week 1, "Dinosaurus Island -- Character level language model" --------
# https://www.coursera.org/learn/nlp-sequence-models (the assignment's utils.py and its graded sample(), optimize()
# and model(), as published with the expected output "Iteration: 0, Loss: 23.087336"). The course's a = tanh(Wax x +
# Waa a_prev + b) on column vectors is our model on rows; it keeps the loss summed over a name, as our recipe.


def course(names: list[str], iterations: int, first: str | None = None) -> tuple[list[float], list[list[str]]]:
    """The course's model() on ``names``; returns the loss it prints at iterations 0, 2000, ... and the 7 names
    sampled there (lower-case: print_sample capitalises the first letter). ``first``: train iteration 0 on it."""

    def softmax(x):
        e_x = np.exp(x - np.max(x))
        return e_x / e_x.sum(axis=0)

    def smooth(loss, cur_loss):
        return loss * 0.999 + cur_loss * 0.001

    def get_initial_loss(vocab_size, seq_length):
        return -np.log(1.0 / vocab_size) * seq_length

    def initialize_parameters(n_a, n_x, n_y):
        np.random.seed(1)
        Wax = np.random.randn(n_a, n_x) * 0.01
        Waa = np.random.randn(n_a, n_a) * 0.01
        Wya = np.random.randn(n_y, n_a) * 0.01
        b = np.zeros((n_a, 1))
        by = np.zeros((n_y, 1))
        return {"Wax": Wax, "Waa": Waa, "Wya": Wya, "b": b, "by": by}

    def rnn_step_forward(parameters, a_prev, x):
        Waa, Wax, Wya, by, b = (parameters[k] for k in ("Waa", "Wax", "Wya", "by", "b"))
        a_next = np.tanh(np.dot(Wax, x) + np.dot(Waa, a_prev) + b)
        p_t = softmax(np.dot(Wya, a_next) + by)
        return a_next, p_t

    def rnn_forward(X, Y, a0, parameters, vocab_size=27):
        x, a, y_hat = {}, {}, {}
        a[-1] = np.copy(a0)
        loss = 0
        for t in range(len(X)):
            x[t] = np.zeros((vocab_size, 1))
            if X[t] is not None:
                x[t][X[t]] = 1
            a[t], y_hat[t] = rnn_step_forward(parameters, a[t - 1], x[t])
            loss -= np.log(y_hat[t][Y[t], 0])
        return loss, (y_hat, a, x)

    def rnn_step_backward(dy, gradients, parameters, x, a, a_prev):
        gradients["dWya"] += np.dot(dy, a.T)
        gradients["dby"] += dy
        da = np.dot(parameters["Wya"].T, dy) + gradients["da_next"]
        daraw = (1 - a * a) * da
        gradients["db"] += daraw
        gradients["dWax"] += np.dot(daraw, x.T)
        gradients["dWaa"] += np.dot(daraw, a_prev.T)
        gradients["da_next"] = np.dot(parameters["Waa"].T, daraw)
        return gradients

    def rnn_backward(X, Y, parameters, cache):
        gradients = {}
        (y_hat, a, x) = cache
        for name in ("Wax", "Waa", "Wya", "b", "by"):
            gradients["d" + name] = np.zeros_like(parameters[name])
        gradients["da_next"] = np.zeros_like(a[0])
        for t in reversed(range(len(X))):
            dy = np.copy(y_hat[t])
            dy[Y[t]] -= 1
            gradients = rnn_step_backward(dy, gradients, parameters, x[t], a[t], a[t - 1])
        return gradients, a

    def update_parameters(parameters, gradients, lr):
        for name in ("Wax", "Waa", "Wya", "b", "by"):
            parameters[name] += -lr * gradients["d" + name]
        return parameters

    def clip(gradients, maxValue):
        for gradient in (gradients["d" + name] for name in ("Waa", "Wax", "Wya", "b", "by")):
            np.clip(gradient, -maxValue, maxValue, out=gradient)
        return gradients

    def sample(parameters, char_to_ix, seed):
        Waa, Wax, Wya, by, b = (parameters[k] for k in ("Waa", "Wax", "Wya", "by", "b"))
        vocab_size = by.shape[0]
        n_a = Waa.shape[1]
        x = np.zeros((vocab_size, 1))
        a_prev = np.zeros((n_a, 1))
        indices = []
        idx = -1
        counter = 0
        newline_character = char_to_ix["\n"]
        while idx != newline_character and counter != 50:
            a = np.tanh(np.dot(Wax, x) + np.dot(Waa, a_prev) + b)
            z = np.dot(Wya, a) + by
            y = softmax(z)
            np.random.seed(counter + seed)
            idx = np.random.choice(list(range(vocab_size)), p=y.ravel())
            indices.append(idx)
            x = np.zeros((vocab_size, 1))
            x[idx] = 1
            a_prev = a
            seed += 1
            counter += 1
        if counter == 50:
            indices.append(char_to_ix["\n"])
        return indices

    def optimize(X, Y, a_prev, parameters, learning_rate=0.01):
        loss, cache = rnn_forward(X, Y, a_prev, parameters)
        gradients, a = rnn_backward(X, Y, parameters, cache)
        gradients = clip(gradients, 5)
        parameters = update_parameters(parameters, gradients, learning_rate)
        return loss, gradients, a[len(X) - 1]

    data = "\n".join(names) + "\n"
    chars = sorted(set(data))
    char_to_ix = {ch: i for i, ch in enumerate(chars)}
    ix_to_char = dict(enumerate(chars))
    n_a, dino_names, vocab_size = 50, 7, len(chars)
    parameters = initialize_parameters(n_a, vocab_size, vocab_size)
    loss = get_initial_loss(vocab_size, dino_names)
    examples = [x.lower().strip() for x in names]
    np.random.seed(0)
    np.random.shuffle(examples)
    a_prev = np.zeros((n_a, 1))
    losses, written = [], []
    for j in range(iterations):
        index = j % len(examples)
        X = [None] + [char_to_ix[ch] for ch in (first if first and j == 0 else examples[index])]
        Y = X[1:] + [char_to_ix["\n"]]  # noqa: RUF005 (as published)
        curr_loss, _gradients, a_prev = optimize(X, Y, a_prev, parameters, learning_rate=0.01)
        loss = smooth(loss, curr_loss)
        if j % 2000 == 0:
            losses.append(float(loss))
            names_now = []
            for seed in range(dino_names):
                sampled_indices = sample(parameters, char_to_ix, seed)
                names_now.append("".join(ix_to_char[ix] for ix in sampled_indices).split("\n")[0])
            written.append(names_now)
    return losses, written


@pytest.mark.parametrize("iteration", [0, 2000])
def test_charlm_writes_the_courses_names_and_loss_on_the_shipped_names(compose, iteration):
    """The course prints iteration j after training on it: our step j + 1. Its first name here is not the one of the
    course's own file (1536 names, "turiasaurus" first; this one has 1543): on it the loss is 23.090631."""
    run, _ = trained(compose, "task=charlm", f"train.steps={iteration + 1}")
    losses, written = course(run.dataset.names, iteration + 1)
    assert run.task.written[-1].step == iteration + 1
    assert run.task.written[-1].names == written[-1]
    assert f"{run.history.values['smooth_loss'][iteration]:.6f}" == f"{losses[-1]:.6f}"
    if iteration == 0:
        assert f"{losses[0]:.6f}" == "23.090631"
        assert written[0][:2] == ["nkzxwtdmfqoeyhsqwasjkjvu", "kneb"]  # as the course's own printout


def test_charlm_starts_from_the_courses_weights_and_order(compose):
    """The course's first name and weights give its printed first loss, 23.087336."""
    run = build(compose, "task=charlm")
    data, model = run.dataset, run.task.model
    np.random.seed(0)
    examples = list(data.names)
    np.random.shuffle(examples)
    firsts = [data.decode(next(run.batches).targets[0]) for _ in range(3)]
    assert firsts == examples[:3]
    inputs, targets = data.sequences[data.names.index("turiasaurus")]
    loss = model.loss_and_grads(Batch(inputs, targets), None).loss
    assert f"{0.999 * 7 * math.log(27) + 0.001 * loss:.6f}" == "23.087336"


# -- the settings the tutorial's data fix ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["task=adder", "train.batch_size=32"],
            "the tutorial's settings: dataset.bits=8, train.batch_size=1, cell=rnn (got train.batch_size=32)",
        ),
        (
            ["task=adder", "dataset.bits=12", "cell=lstm"],
            "the tutorial's settings: dataset.bits=8, train.batch_size=1, cell=rnn (got dataset.bits=12, "
            "train.batch_size=32, cell=lstm)",  # the pairing of cell=lstm trains 32 pairs a step
        ),
        (
            ["task=counting", "dataset.sequences=30"],
            "the tutorial's settings: dataset.sequences=20, dataset.length=10, dataset.p_one=0.5, "
            "train.batch_size=0 (got dataset.sequences=30)",
        ),
        (
            ["task=echo", "train.batch_size=25"],
            "the tutorial's settings: dataset.total_length=50000, train.batch_size=5, cell=rnn "
            "(got train.batch_size=25)",
        ),
        (
            ["task=charlm", "cell=gru", "train.batch_size=1"],
            "the tutorial's settings: train.batch_size=1, cell=rnn (got cell=gru)",
        ),
    ],
)
def test_settings_the_tutorial_never_had_are_refused_naming_its_own(compose, overrides, expected):
    with pytest.raises(ConfigError) as error:
        build(compose, *overrides)
    assert str(error.value) == f"dataset.generator='tutorial': expected {expected}"


def test_the_command_line_refuses_them_in_one_line_before_any_run(cli, tmp_path):
    result = cli("task=adder", "dataset.generator=tutorial", "optim=adam")  # its pairing trains 32 pairs a step
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        "framework: error: dataset.generator='tutorial': expected the tutorial's settings: dataset.bits=8, "
        "train.batch_size=1, cell=rnn (got train.batch_size=32)"
    )
    assert_no_runs(tmp_path / "mlruns" / "mlflow.db")


def test_a_task_without_the_tutorials_data_has_no_such_option(cli):
    result = cli("task=seq2seq", "dataset.generator=tutorial", "tracking.enabled=false")
    assert result.returncode == 2
    assert one_line(result.stderr).startswith("framework: error: dataset.generator: no such option")
