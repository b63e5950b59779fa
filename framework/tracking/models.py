"""The trained network of a run as an MLflow pyfunc model: from code, without pickle.

A run of a task that can predict (:class:`framework.core.protocols.Predictor`) logs the model ``model``:

- ``artifacts/params.npz``: the trained parameters, written by numpy and read with ``allow_pickle=False``;
- ``artifacts/config.yaml``: the run's composed config;
- ``model_code.py``: MLflow's model from code, ``set_model(TrainedNetwork())`` (:mod:`framework.tracking.model_code`);
- the signature, inferred from the task's example request and its answer, and that example.

The training process writes those files (:func:`framework.tracking.model_files.export`); the recording process
turns them into the logged model (:func:`log_model`).

Loading it (``mlflow.pyfunc.load_model("runs:/<run id>/model")``, ``mlflow models serve``) rebuilds the
task from the config with the framework's own engine, copies the parameters into it and calls the task's
``predict``. So the framework (the ``rnn-tutorial-framework`` distribution) and the task's plugin must be
installed where the model is loaded; serve it from that environment (``--env-manager local``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow.entities import LoggedModel, LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.pyfunc import PythonModel, PythonModelContext

from framework import __version__
from framework.core import checkpoint
from framework.core.protocols import Params, Predictor
from framework.tracking.model_files import CONFIG, DATA, PARAMS, read_example

log = logging.getLogger(__name__)

MODEL = "model"  # the model's name in its run: runs:/<run id>/model
DATA_ARTIFACT = "data:"  # the artifact of a data file: data:<option key>
CODE = Path(__file__).with_name("model_code.py")
DISTRIBUTION = "rnn-tutorial-framework"  # this framework's distribution, required where a model is loaded
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def load_params(params: Params, path: Path) -> None:
    """theta <- theta saved at ``path``, in place, for every parameter; the names and shapes must be the same."""
    with np.load(path, allow_pickle=False) as archive:
        saved = {name: archive[name] for name in archive.files}
    checkpoint.load_params(params, saved, path.name)


class TrainedNetwork(PythonModel):
    """The pyfunc model: a task rebuilt from its run's config, with the trained parameters."""

    task: Predictor

    def load_context(self, context: PythonModelContext) -> None:
        """Build the task from ``config.yaml`` by the engine (nothing is tracked), its data files the model's own
        copies, and load ``params.npz`` into it."""
        from framework.core import engine, plugins

        config = yaml.safe_load(Path(context.artifacts["config"]).read_text())
        for name, path in context.artifacts.items():
            if name.startswith(DATA_ARTIFACT):  # data:dataset.path -> config["dataset"]["path"]
                kind, option = name.removeprefix(DATA_ARTIFACT).split(".", 1)
                config[kind][option] = path
        self.task = engine.build(config, plugins.manager()).task
        load_params(self.task.model.params, Path(context.artifacts["params"]))

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """The task's answers to the rows of ``model_input``; a bad value is MLflow's invalid parameter (HTTP 400)."""
        request = {name: model_input[name].tolist() for name in model_input.columns}
        try:
            return pd.DataFrame(self.task.predict(request))
        except ValueError as error:
            raise MlflowException.invalid_parameter_value(str(error)) from None


def requirements(config: Mapping[str, Any]) -> list[str]:
    """The pip requirements of a logged model: this framework, MLflow and numpy, pinned (nothing inferred), and numba
    for a network whose cell runs its compiled loops (``cell.kernel=numba``), as it did in training."""
    pinned = [f"{DISTRIBUTION}=={__version__}", f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"]
    if config.get("cell", {}).get("kernel") == "numba":
        pinned.append(f"numba=={importlib.metadata.version('numba')}")
    return pinned


def signature_of(folder: Path) -> tuple[pd.DataFrame, ModelSignature]:
    """The example request exported into ``folder`` and the signature inferred from it and its answer."""
    request, answer = read_example(folder)
    return pd.DataFrame(request), infer_signature(pd.DataFrame(request), pd.DataFrame(answer))


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """MLflow's noise off for the block, then as it was: its INFO lines, the progress bar of every artifact
    a saved model copies, its hint that integer columns cannot hold missing values, its pandas deprecations."""
    logger, bar = logging.getLogger("mlflow"), os.environ.get(PROGRESS_BAR_ENV)
    level = logger.level
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="mlflow")
        logger.setLevel(logging.WARNING)
        os.environ[PROGRESS_BAR_ENV] = "false"
        try:
            yield
        finally:
            logger.setLevel(level)
            if bar is None:
                del os.environ[PROGRESS_BAR_ENV]
            else:
                os.environ[PROGRESS_BAR_ENV] = bar


def save(files: Path, into: Path, metadata: Model) -> Path:
    """Write the pyfunc model made of the exported ``files`` (see :mod:`framework.tracking.model_files`) into
    ``into``/model and return its path; ``metadata`` goes to its MLmodel."""
    example, signature = signature_of(files)
    data = {f"{DATA_ARTIFACT}{path.name}": str(path) for path in sorted((files / DATA).iterdir())}
    mlflow.pyfunc.save_model(
        into / MODEL,
        python_model=str(CODE),
        artifacts={"params": str(files / PARAMS), "config": str(files / CONFIG), **data},
        signature=signature,
        input_example=example,
        pip_requirements=requirements(yaml.safe_load((files / CONFIG).read_text())),
        mlflow_model=metadata,
    )
    return into / MODEL


def log_model(client: Any, run_id: str, files: Path, register_as: str | None = None) -> str:
    """Log the trained network exported into ``files`` as the pyfunc model ``model`` of run ``run_id``;
    its model id.

    Only ``client`` (an :class:`mlflow.MlflowClient`) talks to the store: no active run and no global
    tracking URI are involved. The model is a LoggedModel of the run's experiment whose source run is
    ``run_id`` (what ``runs:/<run id>/model`` finds) and an output of that run. With ``register_as``
    it is also registered under that name.
    """
    started = time.perf_counter()
    source = client.get_run(run_id)
    logged = client.create_logged_model(
        source.info.experiment_id, name=MODEL, source_run_id=run_id, params=source.data.params
    )
    metadata = Model(
        artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id, model_id=logged.model_id
    )
    try:
        with tempfile.TemporaryDirectory(prefix="framework-model-") as scratch, quiet():
            client.log_model_artifacts(logged.model_id, str(save(files, Path(scratch), metadata)))
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    if register_as:
        with quiet():  # a tracking server's registry says it waits for the version to be ready
            register(client, register_as, logged, run_id)
    log.info("Logged the model %r of run %s in %.2f s", MODEL, run_id, time.perf_counter() - started)
    return logged.model_id


def register(client: Any, name: str, model: LoggedModel, run_id: str) -> None:
    """Register the logged ``model`` of run ``run_id`` as a new version of the registered model ``name``
    (created if needed).

    The version's source is the model's artifact location: MLflow's SQL registry would look a
    ``models:/<model id>`` source up through the global tracking URI, not the client's.
    """
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    version = client.create_model_version(name, model.artifact_location, run_id=run_id, model_id=model.model_id)
    log.info("Registered the model of run %s as %s version %s", run_id, name, version.version)
