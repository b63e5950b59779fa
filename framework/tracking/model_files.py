"""The files a trained network's MLflow model is made from, written by the training process.

- ``params.npz``: the trained parameters (numpy, read back with ``allow_pickle=False``);
- ``config.yaml``: the run's composed config, from which the engine rebuilds the task;
- ``data/``: a copy of every data file the config names (``param(file=True)``, e.g. charlm's
  ``dataset.path``), so that the model needs no file but its own (its vocabulary comes from it);
- ``example.json``: the task's example request and the network's answer to it (the model's
  input example and, inferred from both, its signature).

Writing them needs neither MLflow nor pandas, so the training process never imports them:
the recording process turns the folder into the logged model (:mod:`framework.tracking.models`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from framework.core.protocols import Predictor
from framework.tracking.connection import plain

PARAMS = "params.npz"
CONFIG = "config.yaml"
EXAMPLE = "example.json"
DATA = "data"


def export(task: Predictor, config: dict[str, Any], data_files: Mapping[str, Path], folder: Path) -> Path:
    """Write ``params.npz``, ``config.yaml``, ``example.json`` and ``data/<option key>`` (a copy of each data file
    of ``data_files``, by option key) of ``task``'s trained network into ``folder``."""
    (folder / DATA).mkdir(parents=True, exist_ok=True)
    np.savez(folder / PARAMS, **task.model.params)
    for key, path in data_files.items():
        shutil.copyfile(path, folder / DATA / key)
    (folder / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    request = task.example()
    example = {"request": request, "answer": task.predict(request)}
    (folder / EXAMPLE).write_text(json.dumps(example, default=plain))
    return folder


def read_example(folder: Path) -> tuple[dict[str, list], dict[str, list]]:
    """The example request and answer that :func:`export` wrote."""
    example = json.loads((folder / EXAMPLE).read_text())
    return example["request"], example["answer"]
