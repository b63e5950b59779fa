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

from framework.core.errors import CheckpointError

FORMAT = "framework-checkpoint-1"
NPY_HEADER = 4096  # bytes of an .npy file besides its data, at most
OPTIMIZER_COPIES = 8  # a checkpoint holds the parameters and up to this many arrays like them (Adam: m, v, v_max)
HISTORY_KEYS = 64  # per-step metrics a checkpoint's history may hold
SLACK_BYTES = 64 * 2**20  # the carried state, the random streams and the task's own state


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
    verdict: dict[str, Any] | None = None  # the verdict's tracker (framework.core.verdict.Tracker.state); None: older


def optimizer_state(optimizer: Any) -> dict[str, Any]:
    """The optimizer's attributes besides ``config``: its whole state."""
    state = {}
    for name, value in vars(optimizer).items():
        if name == "config":
            continue
        if isinstance(value, dict):
            value = {key: v if isinstance(v, (int, float)) else np.array(v) for key, v in value.items()}
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
    numbers: list[str] = []  # per-parameter plain numbers (e.g. Adam's step counts), not arrays
    for name, value in checkpoint.optimizer.items():
        if isinstance(value, dict):
            arrays.update({f"optim/{name}/{k}": np.asarray(v) for k, v in value.items()})
            numbers += [f"{name}/{k}" for k, v in value.items() if isinstance(v, (int, float))]
            scalars.setdefault(f"dict:{name}", None)
        elif isinstance(value, np.ndarray):
            arrays[f"optim/{name}"] = value
        else:
            scalars[name] = value
    state = checkpoint.state
    parts = () if state is None else tuple(state) if isinstance(state, (tuple, list)) else (state,)
    arrays.update({f"state/{i}": np.asarray(part) for i, part in enumerate(parts)})
    arrays.update({f"history/{k}": np.asarray(v, dtype=np.float64) for k, v in checkpoint.history.items()})
    arrays.update({f"task/{k}": np.asarray(v) for k, v in checkpoint.task_state.items()})
    meta = {
        "format": FORMAT,
        "task": checkpoint.task,
        "step": checkpoint.step,
        "shapes": {k: list(v.shape) for k, v in checkpoint.params.items()},
        "optimizer_scalars": scalars,
        "optimizer_numbers": numbers,
        "state": "none" if state is None else "tuple" if isinstance(state, (tuple, list)) else "array",
        "streams": checkpoint.streams,
        "verdict": checkpoint.verdict,
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


def check_sizes(path: Path, params: Mapping[str, np.ndarray], max_step: int) -> None:
    """Refuse, before any array is read, a checkpoint whose arrays are larger than the run's: each parameter as
    large as the network's, and the whole file, uncompressed, within what a run of ``max_step`` steps writes (a
    small damaged or forged file could otherwise ask for gigabytes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            sizes = {info.filename.removesuffix(".npy"): info.file_size for info in archive.infolist()}
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except (OSError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or damaged): {error}") from None
    params_bytes = sum(array.nbytes for array in params.values())
    for name, array in params.items():
        if sizes.get(f"params/{name}", 0) > array.nbytes + NPY_HEADER:
            raise CheckpointError(
                f"{path}: parameter {name!r} takes {sizes[f'params/{name}']} bytes, the network's {array.nbytes}"
            )
    limit = OPTIMIZER_COPIES * params_bytes + HISTORY_KEYS * 8 * (max_step + 1) + SLACK_BYTES
    if sum(sizes.values()) > limit:
        raise CheckpointError(
            f"{path} holds {sum(sizes.values()) / 2**20:.0f} MiB uncompressed, more than a checkpoint of this run "
            f"({limit / 2**20:.0f} MiB at most): it is damaged or of another run"
        )


def load(path: Path, params: Mapping[str, np.ndarray] | None = None, max_step: int | None = None) -> Checkpoint:
    """Read a checkpoint written by :func:`save`; anything else is refused in one line.

    With the network's ``params`` and the run's ``max_step`` (train.steps), it is validated against the run before
    anything is read or allocated (:func:`check_sizes`), and its step must lie in [0, max_step].
    """
    if params is not None and max_step is not None:
        check_sizes(path, params, max_step)
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
    step = meta.get("step")
    if not isinstance(step, int) or step < 0 or (max_step is not None and step > max_step):
        bound = "" if max_step is None else f" <= train.steps = {max_step}"
        raise CheckpointError(f"{path}: its step {step!r} is not an integer >= 0{bound}")

    def group(prefix: str) -> dict[str, np.ndarray]:
        return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}

    optimizer: dict[str, Any] = {}
    for name, value in meta["optimizer_scalars"].items():
        if name.startswith("dict:"):
            optimizer[name.removeprefix("dict:")] = {}
        else:
            optimizer[name] = value
    numbers = set(meta["optimizer_numbers"])
    for key, value in group("optim/").items():
        name, _, param = key.partition("/")
        if key in numbers:
            optimizer.setdefault(name, {})[param] = value.item()
        elif param:
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
        verdict=checked_verdict(meta.get("verdict"), path),
    )


def checked_verdict(state: Any, path: Path) -> dict[str, Any] | None:
    """The verdict's tracker state of a checkpoint, as :func:`save` writes it (None for a checkpoint without one);
    anything else is refused in one line."""
    if state is None:
        return None

    def count(value: Any, kind: type | tuple[type, ...]) -> bool:
        return isinstance(value, kind) and not isinstance(value, bool) and value >= 0

    fits = (
        isinstance(state, dict)
        and set(state) == {"step", "seconds", "trained"}
        and (state["step"] is None or count(state["step"], int))
        and (state["seconds"] is None or count(state["seconds"], (int, float)))
        and count(state["trained"], (int, float))
    )
    if not fits:
        raise CheckpointError(f"{path}: its verdict state {state!r} is not one this framework writes")
    return state


def check_params(saved: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray], origin: str) -> None:
    """Refuse, in one line naming the first difference, saved parameters of other names or shapes than the network's."""
    for name in sorted(set(params) | set(saved)):
        if name not in saved:
            raise CheckpointError(f"parameter {name!r} of the network is missing from {origin}")
        if name not in params:
            raise CheckpointError(f"parameter {name!r} of {origin} is not in the network")
        if saved[name].shape != params[name].shape:
            raise CheckpointError(
                f"parameter {name!r} has shape {saved[name].shape} in {origin}, {params[name].shape} in the network"
            )


def load_params(params: Mapping[str, np.ndarray], saved: Mapping[str, np.ndarray], origin: str) -> None:
    """theta <- saved theta, in place, for every parameter; names and shapes must be the network's."""
    check_params(saved, params, origin)
    for name, value in saved.items():
        params[name][...] = value


def check_fits(checkpoint: Checkpoint, task: str, params: Mapping[str, np.ndarray], origin: str) -> None:
    """Refuse, in one line naming the difference, a checkpoint of another task or other parameters."""
    if checkpoint.task != task:
        raise CheckpointError(f"the checkpoint {origin} is of task {checkpoint.task!r}, not {task!r}")
    check_params(checkpoint.params, params, f"the checkpoint {origin}")
