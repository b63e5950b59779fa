"""Bad data through the real CLI: data files charlm cannot read, a dataset plugin whose batches have the wrong shape.

Each is refused before any run exists (exit 2, one line naming the file or the dataset);
a data file that is merely small trains.
"""

from __future__ import annotations

import os

import pytest
from conftest import assert_no_runs, one_line, runs_of

TEXT_FILE = "expected a UTF-8 text file with one example per line"


def memory_filling_line() -> str:
    """One line of 20000 distinct characters, repeated until charlm's padded one-hot data would not fit in memory."""
    alphabet = "".join(chr(0x4E00 + i) for i in range(20000))  # CJK ideographs: 20000 symbols
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    length = memory // ((len(alphabet) + 1) * 8) + 1  # float64 one-hot rows of the alphabet plus newline
    return (alphabet * (length // len(alphabet) + 1))[:length]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        pytest.param(b"", "(it has none)", id="empty"),
        pytest.param(b"\n \n\t\n", "(it has none)", id="blank lines"),
        pytest.param(b"\x00\x01\x02ELF\x00\x00names\n", "(it is binary: a NUL character at 0)", id="binary"),
        pytest.param(b"caf\xe9\nna\xefve\n", "(not UTF-8: invalid continuation byte at byte 3)", id="latin-1"),
        pytest.param(None, "GiB available)", id="one line filling memory"),
    ],
)
@pytest.mark.slow
def test_unreadable_data_file_is_refused_before_any_run(cli, tmp_path, content, reason):
    """A charlm data file that is empty, binary, not UTF-8, or one line too long to hold -> exit 2, one line naming
    the file and what is wrong with it, no MLflow run."""
    path = tmp_path / "names.txt"
    path.write_bytes(memory_filling_line().encode() if content is None else content)
    result = cli("task=charlm", "dataset.path=names.txt")
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    # the file, made absolute against the launch directory when the run was built
    assert line.startswith(f"framework: error: dataset.path='{path.resolve()}': {TEXT_FILE} ("), line
    assert reason in line
    assert_no_runs(tmp_path / "mlruns" / "mlflow.db")


def test_a_one_line_data_file_trains(cli, tmp_path, default_store):
    """A charlm data file of one short line (one name, no newline) -> it trains: FINISHED, exit 0."""
    (tmp_path / "names.txt").write_text("Tyrannosaurus", encoding="utf-8")
    result = cli("task=charlm", "dataset.path=names.txt", "train.steps=20", "model.log=false")
    assert result.returncode == 0, result.stderr
    (run,) = runs_of(default_store, "charlm")
    assert run.info.status == "FINISHED"


BAD_SHAPES = '''
from dataclasses import dataclass

import numpy as np

from framework.core.hookspecs import hookimpl
from framework.core.protocols import Batch


@dataclass
class BadShapesConfig:
    """Sequences of 3 features that say they have 1."""


class BadShapes:
    input_size = 1

    def batches(self, batch_size, rng):
        while True:
            yield Batch(np.zeros((4, 10, 3)), np.zeros((4, 1)))


@hookimpl
def framework_register_datasets(register):
    register("badshapes", lambda config, rng, dtype: BadShapes(), BadShapesConfig)
'''


def test_dataset_plugin_with_wrong_shapes_is_refused_before_any_run(cli, install_plugin, tmp_path):
    """A dataset plugin whose batches do not have the shape it declares -> exit 2, one line naming the dataset,
    no MLflow run."""
    env = install_plugin("shapeshifter", BAD_SHAPES)
    result = cli("task=counting", "dataset=badshapes", env=env)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert line.startswith("framework: error: task 'counting' cannot train with dataset=badshapes cell=linear "), line
    assert_no_runs(tmp_path / "mlruns" / "mlflow.db")
