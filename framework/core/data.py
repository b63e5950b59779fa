"""Data: datasets held in memory as arrays, and the checks of the data files a run reads.

A data file is read whole into memory, so it must be a regular file (a FIFO or ``/dev/zero`` would
hang or fill the memory) of at most :data:`MAX_FILE_BYTES`; both are checked before it is opened.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from framework.core.config import param
from framework.core.errors import ConfigError
from framework.core.protocols import Batch

MAX_FILE_BYTES = 64 * 2**20  # a data file is read whole: 64 MiB of text is far beyond any tutorial's
GENERATORS = ("framework", "tutorial")  # where a dataset's random numbers come from (TutorialData)


def generator_param(tutorial: str) -> Any:
    """The ``generator`` option of a dataset that can draw as its tutorial's published code did
    (:class:`framework.core.protocols.TutorialData`); ``tutorial`` says what that code draws, and how."""
    return param(
        "framework",
        choices=GENERATORS,
        doc=f"framework: the run's own random streams; tutorial: numpy's legacy generator after np.random.seed(seed), "
        f"called as the tutorial's code calls it: {tutorial}",
    )


def check_data_file(key: str, value: str, launch_dir: Path) -> Path:
    """The absolute path of the data file ``value`` of option ``key`` (relative to ``launch_dir``), once it is known
    to be a regular file of at most :data:`MAX_FILE_BYTES`; else :class:`ConfigError` in one line."""
    path = (launch_dir / value).resolve()
    try:
        status = path.stat()
    except OSError as error:
        raise ConfigError(key, value, f"the path of a readable file ({error.strerror}: {path})") from None
    if not stat.S_ISREG(status.st_mode):
        raise ConfigError(key, value, f"the path of a regular file ({path} is not one: a folder, FIFO or device)")
    if status.st_size > MAX_FILE_BYTES:
        raise ConfigError(
            key, value, f"a file of at most {MAX_FILE_BYTES // 2**20} MiB ({path} has {status.st_size / 2**20:.0f} MiB)"
        )
    if not os.access(path, os.R_OK):
        raise ConfigError(key, value, f"the path of a readable file (permission denied: {path})")
    return path


def available_memory() -> int:
    """Bytes of memory available to a new allocation: MemAvailable of /proc/meminfo, else the physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class ArrayDataset:
    """Fixed sequences ``inputs (N, T, I)`` with their ``targets``.

    ``batches(0)`` yields the whole set every step (full batch);
    ``batches(b)`` yields shuffled minibatches of b sequences, epoch after
    epoch, dropping the last incomplete one; ``batches(1)`` is one sequence
    per step. Every batch starts from the zero state.
    """

    def __init__(self, inputs: np.ndarray, targets: np.ndarray) -> None:
        self.inputs, self.targets = inputs, targets
        self.input_size = inputs.shape[-1]

    def batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[Batch]:
        """An endless stream of batches (see the class docstring)."""
        count = len(self.inputs)
        if batch_size == 0 or batch_size >= count:
            whole = Batch(self.inputs, self.targets)
            while True:
                yield whole
        while True:
            order = rng.permutation(count)
            for start in range(0, count - batch_size + 1, batch_size):
                chosen = order[start : start + batch_size]
                yield Batch(self.inputs[chosen], self.targets[chosen])
