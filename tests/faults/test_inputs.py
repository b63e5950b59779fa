"""Inputs that could hang a run, fill the memory or read what they should not: data files that are no regular file or
too large, checkpoints that lie about their step or their size, and a model that would need a file besides its own.

Each is refused in one line before anything is read, replayed or allocated; a logged model carries its data.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import assert_no_runs, one_line, runs_of

from framework.core import checkpoint, engine, plugins
from framework.core.data import MAX_FILE_BYTES
from framework.core.errors import CheckpointError


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fifo", "device", "folder", "too large"])
def test_a_data_file_that_is_no_regular_file_or_too_large_is_refused_unread(cli, tmp_path, kind):
    """A FIFO (reading it would hang), /dev/zero (endless), a folder, or a file over 64 MiB as charlm's names -> exit
    2 before anything is read, one line naming the file and the limit, no MLflow run."""
    path = {"fifo": tmp_path / "names.fifo", "device": Path("/dev/zero"), "folder": tmp_path}.get(kind)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "too large":
        path = tmp_path / "names.txt"
        with path.open("wb") as sparse:  # a sparse file: no disk is used
            sparse.truncate(MAX_FILE_BYTES + 1)
    result = cli("task=charlm", f"dataset.path={path}", timeout=60)
    assert result.returncode == 2, result.stderr
    if kind == "too large":
        expected = f"expected a file of at most 64 MiB ({path.resolve()} has 64 MiB)"
    else:
        expected = f"expected the path of a regular file ({path.resolve()} is not one: a folder, FIFO or device)"
    assert one_line(result.stderr) == f"framework: error: dataset.path={str(path)!r}: {expected}"
    assert_no_runs(tmp_path / "mlruns" / "mlflow.db")


@pytest.fixture
def adder_run(compose):
    """A built (untrained) adder run of 200 steps."""
    return engine.build(compose("task=adder", "train.steps=200", "tracking.enabled=false"), plugins.manager())


def saved(run, path: Path, step: int, history_length: int | None = None) -> Path:
    """A checkpoint of ``run`` claiming ``step``, with a loss history of ``history_length`` values."""
    values = np.zeros(step if history_length is None else history_length)
    snapshot = checkpoint.Checkpoint(
        task=run.info.task,
        step=step,
        params=run.task.model.params,
        optimizer=checkpoint.optimizer_state(run.optimizer),
        state=None,
        history={"loss": values},
        streams=run.streams.states(),
        task_state={},
    )
    return checkpoint.save(path, snapshot)


def declare_size(path: Path, member: str, size: int) -> None:
    """Rewrite the uncompressed size the zip's central directory declares for ``member`` (as a forged or damaged file
    would); the data itself is left as it is."""
    data = bytearray(path.read_bytes())
    start = 0
    while True:  # the central directory header (signature PK 1 2) whose file name is the member
        start = data.index(b"PK\x01\x02", start)
        name_length = struct.unpack_from("<H", data, start + 28)[0]
        if data[start + 46 : start + 46 + name_length].decode() == member:
            break
        start += 4
    struct.pack_into("<I", data, start + 24, size)  # its uncompressed size
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("forge", "message"),
    [
        (lambda run, path: saved(run, path, 10**10, history_length=3), r"its step 10000000000 is not an integer >= 0 "),
        (lambda run, path: saved(run, path, -5, history_length=3), r"its step -5 is not an integer >= 0 "),
        (
            lambda run, path: declare_size(saved(run, path, 100), "params/cell.Wh.npy", 2**32 - 1),
            r"parameter 'cell.Wh' takes 4294967295 bytes, the network's 2048",
        ),
        (
            lambda run, path: saved(run, path, 100, history_length=10**7),
            r"holds 76 MiB uncompressed, more than a checkpoint of this run \(64 MiB at most\)",
        ),
    ],
    ids=["step 10**10", "negative step", "declares 4 GiB", "history too long"],
)
def test_a_checkpoint_is_validated_before_anything_is_replayed_or_allocated(adder_run, tmp_path, forge, message):
    """A checkpoint whose step lies outside [0, train.steps], or whose arrays are larger than the run's (a small file
    declaring gigabytes) -> CheckpointError in one line, before any batch is replayed or array read."""
    path = tmp_path / "last.npz"
    forge(adder_run, path)
    params = adder_run.task.model.params
    with pytest.raises(CheckpointError, match=message) as refused:
        checkpoint.load(path, params, adder_run.settings.train.steps)
    assert "\n" not in str(refused.value)


def test_a_resumed_run_refuses_a_forged_checkpoint_in_one_line(compose, tmp_path):
    """The same through the engine: resuming from a checkpoint claiming step 10**10 -> refused at once (replaying 10**10
    batches would take days)."""
    config = compose("task=adder", "train.steps=200", "tracking.enabled=false")
    run = engine.build(config, plugins.manager())
    path = saved(run, tmp_path / "last.npz", 10**10, history_length=3)
    with pytest.raises(
        CheckpointError, match=re.escape("its step 10000000000 is not an integer >= 0 <= train.steps = 200")
    ):
        engine.execute(config, resume_from=(path, "forged"), output_dir=tmp_path / "out")


@pytest.mark.slow  # a run, then its model loaded three times (19 s)
def test_a_logged_model_needs_no_file_but_its_own(cli, default_store, tmp_path, monkeypatch):
    """A charlm model trained on a names file named by a relative path -> loaded from another folder, after the file
    changed and then disappeared, it writes the same names as when it was logged (it carries its vocabulary)."""
    import mlflow.pyfunc

    (tmp_path / "names.txt").write_text("abba\nbaab\naabb\nbbaa\n" * 20)
    result = cli("task=charlm", "dataset.path=names.txt", "train.steps=50", "train.batch_size=8")
    assert result.returncode == 0, result.stderr
    (run,) = runs_of(default_store, "charlm")
    request = pd.DataFrame({"n": [5], "temperature": [1.0], "seed": [3]})
    model_uri = default_store.search_logged_models([run.info.experiment_id])[0].artifact_location
    before = mlflow.pyfunc.load_model(model_uri).predict(request)["names"][0]
    assert set("".join(before)) <= set("ab")
    (tmp_path / "names.txt").write_text("xyz\n")  # another vocabulary
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert mlflow.pyfunc.load_model(model_uri).predict(request)["names"][0] == before
    (tmp_path / "names.txt").unlink()
    assert mlflow.pyfunc.load_model(model_uri).predict(request)["names"][0] == before
