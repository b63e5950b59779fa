"""The run-wide settings: seed, precision, training loop, diagnostics and tracking.

These dataclasses are the single source of the defaults under ``train.*``,
``diagnostics.*``, ``tracking.*``, ``objective.*``, ``model.*``, ``resume``, ``seed``
and ``dtype`` (the ``framework_settings`` option that conf/config.yaml starts from, served to
Hydra by :mod:`framework.core.hydra_source`) and of the checks applied to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from framework.core.config import param
from framework.core.errors import ConfigError


@dataclass
class TrainSettings:
    """The training loop."""

    steps: int = param(100, ge=1, doc="number of optimizer updates")
    batch_size: int = param(0, ge=0, doc="sequences per update; 0: the whole data set (full batch)")
    eval_every: int = param(0, ge=0, doc="evaluate (metrics, samples, figures) every N steps; 0: only at the end")
    clip_value: float | None = param(None, gt=0, doc="clip every gradient element to [-v, v] (null: off)")
    clip_norm: float | None = param(None, gt=0, doc="rescale the gradients when their global norm exceeds this")
    checkpoint_every: int = param(
        0, ge=0, doc="save a checkpoint (run artifact checkpoints/last.npz) every N steps; 0: only at the end"
    )


@dataclass
class DiagnosticsSettings:
    """What training records about itself beyond the loss (framework/diagnostics.py)."""

    every: int = param(
        10,
        ge=0,
        doc="record the gradient flow through time (||dL/dh_k|| per step k, metric grad_flow_ratio, "
        "figure gradient_flow) every N steps; 0: off",
    )


@dataclass
class TrackingSettings:
    """Where and how the run is recorded (MLflow)."""

    enabled: bool = param(True, doc="record the run in MLflow")
    uri: str | None = param(
        None, doc="tracking URI; null: $MLFLOW_TRACKING_URI, else sqlite:///<launch dir>/mlruns/mlflow.db"
    )
    experiment: str | None = param(None, doc="experiment name; null: the task's name")
    run_name: str | None = param(None, doc="run name; null: MLflow picks one")
    log_every: int = param(
        10,
        ge=1,
        doc="log the per-step metrics of every N-th step (and the last); every step's are in the run's checkpoint",
    )
    timeout: float = param(
        30.0,
        gt=0,
        doc="seconds a run waits, after training, for a word from its recording process (while it answers, it is "
        "waited for); then the run fails, and the metrics the store did not take are in unrecorded-metrics.jsonl "
        "in the run's folder",
    )
    figures: bool = param(
        True, doc="draw the task's figures as PNG artifacts at each evaluation (0.1-0.3 s each); false: none"
    )


@dataclass
class ModelSettings:
    """The trained network as an MLflow model (pyfunc), for tasks that can predict."""

    log: bool = param(True, doc="log the trained network as the run's MLflow model 'model'")
    register: bool = param(False, doc="also register it in the MLflow model registry")
    name: str | None = param(None, doc="the registered model's name; null: the task's name")

    def __post_init__(self) -> None:
        if self.name is not None and (not self.name.strip() or set(self.name) & set("/:") or self.name in (".", "..")):
            raise ConfigError("name", self.name, "a name MLflow's registry takes: not empty, no '/' or ':'")


@dataclass
class ObjectiveSettings:
    """The final metric a run returns to a sweeper (Optuna) and by which a sweep's best run is chosen."""

    metric: str | None = param(None, doc="a final metric of the task; null: the task's own objective")
    direction: str | None = param(
        None,
        choices=("minimize", "maximize"),
        doc="whether lower or higher is better; null: the task's direction for its objective",
    )


@dataclass
class Settings:
    """Everything of a run that is not a component."""

    seed: int = param(0, ge=0, doc="the seed of every random stream of the run")
    dtype: str = param("float64", choices=("float64", "float32"), doc="floating-point precision")
    threads: int | None = param(
        1, ge=1, doc="BLAS threads; 1 is fastest for the tutorials' small matrices; null: the library's default"
    )
    train: TrainSettings = field(default_factory=TrainSettings)
    diagnostics: DiagnosticsSettings = field(default_factory=DiagnosticsSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    objective: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    resume: str | None = param(None, doc="an MLflow run id: continue that run from its last checkpoint")
