"""Checkpoints: all a run needs to continue exactly where it was, in one ``.npz`` file (no pickle).

A checkpoint after ``step`` updates holds, as plain arrays:

* ``params/<name>``: the model's parameters;
* ``optim/<attribute>`` and ``optim/<attribute>/<name>``: the optimizer's state,
  which is its attributes besides ``config``: arrays, dicts of arrays
  (per parameter), numbers or None;
* ``state/<i>``: the hidden state carried into the next batch (truncated BPTT);
* ``history/<metric>``: every per-step metric so far (evaluations plot them);
* ``meta``: JSON with the format, the task, the step, the parameter shapes and
  the state of every random stream of the run (numpy bit-generator states);
* ``task/<key>``: the task's own training state, for a task that has one
  (``checkpoint_state`` / ``restore_state``).

Files are written to ``<name>.tmp`` and renamed, so a reader never sees half a
checkpoint. Loading uses ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "framework-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged or belongs to another run; ``str()`` is one line."""


@dataclass
class Checkpoint:
    """The contents of a checkpoint file."""

    task: str
    step: int
    params: dict[str, np.ndarray]
    optimizer: dict[str, Any]
    state: tuple[np.ndarray, ...] | np.ndarray | None
    history: dict[str, np.ndarray]
    streams: list[tuple[str, dict[str, Any]]]
    task_state: dict[str, np.ndarray]


def optimizer_state(optimizer: Any) -> dict[str, Any]:
    """The optimizer's attributes besides ``config``: its whole state."""
    state = {}
    for name, value in vars(optimizer).items():
        if name == "config":
            continue
        if isinstance(value, dict):
            value = {key: np.array(array) for key, array in value.items()}
        elif value is not None and not isinstance(value, (int, float, np.ndarray)):
            raise CheckpointError(
                f"optimizer {type(optimizer).__name__} cannot be checkpointed: its attribute {name!r} is a "
                f"{type(value).__name__} (accepted: arrays, dicts of arrays, numbers, None)"
            )
        state[name] = value
    return state


def restore_optimizer(optimizer: Any, state: Mapping[str, Any]) -> None:
    """Set the optimizer's attributes from :func:`optimizer_state`'s output."""
    expected = {name for name in vars(optimizer) if name != "config"}
    if set(state) != expected:
        raise CheckpointError(
            f"the checkpoint's optimizer state ({', '.join(sorted(state))}) does not fit "
            f"{type(optimizer).__name__} ({', '.join(sorted(expected))})"
        )
    for name, value in state.items():
        setattr(optimizer, name, dict(value) if isinstance(value, dict) else value)


def save(path: Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (write ``path.tmp``, then rename)."""
    arrays: dict[str, np.ndarray] = {f"params/{k}": v for k, v in checkpoint.params.items()}
    scalars: dict[str, float | int | None] = {}
    for name, value in checkpoint.optimizer.items():
        if isinstance(value, dict):
            arrays.update({f"optim/{name}/{k}": v for k, v in value.items()})
            scalars.setdefault(f"dict:{name}", None)
        elif isinstance(value, np.ndarray):
            arrays[f"optim/{name}"] = value
        else:
            scalars[name] = value
    state = checkpoint.state
    parts = () if state is None else (state,) if isinstance(state, np.ndarray) else tuple(state)
    arrays.update({f"state/{i}": np.asarray(part) for i, part in enumerate(parts)})
    arrays.update({f"history/{k}": np.asarray(v, dtype=np.float64) for k, v in checkpoint.history.items()})
    arrays.update({f"task/{k}": np.asarray(v) for k, v in checkpoint.task_state.items()})
    meta = {
        "format": FORMAT,
        "task": checkpoint.task,
        "step": checkpoint.step,
        "shapes": {k: list(v.shape) for k, v in checkpoint.params.items()},
        "optimizer_scalars": scalars,
        "state": "none" if state is None else "array" if isinstance(state, np.ndarray) else "tuple",
        "streams": checkpoint.streams,
    }
    arrays["meta"] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    with open(partial, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return path


def load(path: Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save`; anything else is refused in one line."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        meta = json.loads(str(arrays.pop("meta")))
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or damaged): {error}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this framework (format {meta.get('format')!r})")

    def group(prefix: str) -> dict[str, np.ndarray]:
        return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}

    optimizer: dict[str, Any] = {}
    for name, value in meta["optimizer_scalars"].items():
        if name.startswith("dict:"):
            optimizer[name.removeprefix("dict:")] = {}
        else:
            optimizer[name] = value
    for key, value in group("optim/").items():
        name, _, param = key.partition("/")
        if param:
            optimizer.setdefault(name, {})[param] = value
        else:
            optimizer[name] = value
    parts = [arrays[f"state/{i}"] for i in range(len(group("state/")))]
    state = {"none": None, "array": parts[0] if parts else None, "tuple": tuple(parts)}[meta["state"]]
    return Checkpoint(
        task=meta["task"],
        step=int(meta["step"]),
        params=group("params/"),
        optimizer=optimizer,
        state=state,
        history=group("history/"),
        streams=[(name, stream) for name, stream in meta["streams"]],
        task_state=group("task/"),
    )


def check_fits(checkpoint: Checkpoint, task: str, params: Mapping[str, np.ndarray], origin: str) -> None:
    """Refuse, in one line naming the difference, a checkpoint of another task or other shapes."""
    if checkpoint.task != task:
        raise CheckpointError(f"the checkpoint {origin} is of task {checkpoint.task!r}, not {task!r}")
    if set(checkpoint.params) != set(params):
        missing = sorted(set(params) ^ set(checkpoint.params))
        raise CheckpointError(f"the checkpoint {origin} has other parameters: {', '.join(missing)} differ")
    for name, value in params.items():
        if checkpoint.params[name].shape != value.shape:
            raise CheckpointError(
                f"the checkpoint {origin} has {name} of shape {checkpoint.params[name].shape}, "
                f"the run needs {value.shape}"
            )
