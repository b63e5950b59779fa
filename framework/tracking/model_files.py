"""The files a trained network's MLflow model is made from, written by the training process.

- ``params.npz``: the trained parameters (numpy, read back with ``allow_pickle=False``);
- ``config.yaml``: the run's composed config, from which the engine rebuilds the task;
- ``example.json``: the task's example request and the network's answer to it (the model's
  input example and, inferred from both, its signature).

Writing them needs neither MLflow nor pandas, so the training process never imports them:
the tracking worker turns the folder into the logged model (:mod:`framework.tracking.models`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from framework.core.protocols import Predictor
from framework.tracking.recorder_process import plain

PARAMS = "params.npz"
CONFIG = "config.yaml"
EXAMPLE = "example.json"


def export(task: Predictor, config: dict[str, Any], folder: Path) -> Path:
    """Write ``params.npz``, ``config.yaml`` and ``example.json`` of ``task``'s trained network into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / PARAMS, **task.model.params)
    (folder / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    request = task.example()
    example = {"request": request, "answer": task.predict(request)}
    (folder / EXAMPLE).write_text(json.dumps(example, default=plain))
    return folder


def read_example(folder: Path) -> tuple[dict[str, list], dict[str, list]]:
    """The example request and answer that :func:`export` wrote."""
    example = json.loads((folder / EXAMPLE).read_text())
    return example["request"], example["answer"]
