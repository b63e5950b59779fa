"""End-to-end tests of ``python -m framework``: the real CLI in a subprocess, the real MLflow store.

Every CLI start costs a few seconds of imports, so runs are short (``train.steps``)
except the full-length counting runs, which several tests share and which start
in parallel, like the other runs that do not depend on each other.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml
from conftest import REPO, assert_no_runs, clean_env, one_line, runs_of, seed_store
from mlflow import MlflowClient
from mlflow.entities import ViewType

from framework.cli.subcommands import SUBCOMMANDS
from framework.core import plugins
from framework.core.registry import KINDS

# -- helpers -------------------------------------------------------------------


def launch(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``python -m framework *args`` in ``cwd`` without waiting for it."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "framework", *args],
        cwd=cwd,
        env=clean_env(**(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    """Wait for a process started by :func:`launch`."""
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def client_at(database: Path) -> MlflowClient:
    assert database.is_file(), f"no tracking database at {database}"
    return MlflowClient(tracking_uri=f"sqlite:///{database}")


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every recorded value of metric ``key``, in step order."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def all_histories(client: MlflowClient, run) -> dict[str, list[tuple[int, float]]]:
    return {key: history(client, run.info.run_id, key) for key in run.data.metrics}


def local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    assert parsed.scheme in ("file", ""), uri
    return Path(unquote(parsed.path))


def hydra_job_dirs(root: Path) -> list[Path]:
    """Hydra's output folders (outputs/<date>/<time>) under ``root``."""
    return sorted(p.parent for p in root.glob("outputs/*/*/.hydra"))


# -- full-length counting runs, shared by several tests ---------------------------

STEPS = 500  # the counting task's recipe
SEEDS = range(5)


@dataclass
class Launched:
    """A finished CLI process, its launch directory and its store."""

    result: subprocess.CompletedProcess
    launch_dir: Path
    client: MlflowClient

    def only_run(self):
        (run,) = runs_of(self.client, "counting")
        return run


@pytest.fixture(scope="module")
def counting_runs(tmp_path_factory, store_template) -> dict[str, Launched]:
    """``python -m framework`` (no arguments), ``seed=N`` for N in 0..4 and ``tracking.figures=false``, started at once.

    Each runs in its own launch directory, so each has its own default store.
    """
    commands = {
        "default": (),
        **{f"seed={n}": (f"seed={n}",) for n in SEEDS},
        "tracking.figures=false": ("tracking.figures=false",),
    }
    root = tmp_path_factory.mktemp("counting")
    started = {}
    for index, (label, args) in enumerate(commands.items()):
        launch_dir = root / f"run{index}"
        seed_store(store_template, launch_dir / "mlruns" / "mlflow.db")
        started[label] = (launch_dir, launch(launch_dir, *args))
    done = {}
    for label, (launch_dir, process) in started.items():
        result = finish(process)
        done[label] = Launched(result, launch_dir, client_at(launch_dir / "mlruns" / "mlflow.db"))
    return done


def test_default_run_records_params_tags_metrics_and_artifacts(counting_runs):
    launched = counting_runs["default"]
    assert launched.result.returncode == 0, launched.result.stderr
    store, launch_dir = launched.client, launched.launch_dir
    run = launched.only_run()
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"

    # params: the flattened composed config, with the task's recipe applied
    params = run.data.params
    assert params["train.steps"] == str(STEPS)
    assert params["seed"] == "0"
    assert params["task.w_x"] == "-1.5"
    assert params["task.w_rec"] == "2.0"
    assert params["optim.name"] == "rprop"
    assert params["optim.variant"] == "plain"
    assert params["optim.step_init"] == "0.001"
    assert params["cell.name"] == "linear"
    assert params["dataset.name"] == "counting_bits"

    # tags
    tags = run.data.tags
    assert tags["command"] == "python -m framework"
    assert tags["framework.task"] == "counting"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode == 0:
        assert tags["mlflow.source.git.commit"] == head.stdout.strip()

    # metrics: every 10th step (tracking.log_every) and the last, and the final evaluation at step=steps
    logged = [*range(0, STEPS, 10), STEPS - 1]
    with_final = [*logged, STEPS]
    steps_of = {key: [s for s, _ in values] for key, values in all_histories(store, run).items()}
    assert steps_of == {
        "loss": with_final,
        "grad_norm": logged,
        "grad_flow_ratio": list(range(0, STEPS, 10)),  # diagnostics.every=10 by default
        "w_x": with_final,
        "w_rec": with_final,
        "test_output": [STEPS],
        "reached": [STEPS],  # the verdict: the tutorial's result reached, at the final evaluation
        "steps_to_result": [STEPS],
    }
    assert run.data.metrics["reached"] == 1.0 and run.data.tags["framework.verdict"] == "reached"
    assert run.info.run_name == "counting"  # the plain default: named after its task
    w_x = history(store, run_id, "w_x")
    assert w_x[-1][1] == w_x[-2][1] == run.data.metrics["w_x"], "the final w_x is the weight after the last update"

    # artifacts, beside the database under the launch directory
    artifacts = launch_dir / "mlruns" / "artifacts" / "counting" / run_id / "artifacts"
    assert local_path(run.info.artifact_uri) == artifacts
    config = yaml.safe_load((artifacts / "config.yaml").read_text())
    assert config["train"]["steps"] == STEPS
    assert config["optim"]["name"] == "rprop"
    assert yaml.safe_load((artifacts / "overrides.yaml").read_text()) == []
    sample = (artifacts / "samples" / "test_output.txt").read_text()
    assert f"{run.data.metrics['test_output']:.4f}" in sample
    for figure in ("cost_surface", "gradient_over_time"):
        png = (artifacts / "figures" / f"{figure}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000

    # Hydra writes outputs/<date>/<time>, named after the app, and does not move the store
    (job_dir,) = hydra_job_dirs(launch_dir)
    hydra_cfg = yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())
    assert hydra_cfg["hydra"]["job"]["name"] == "framework"
    log_file = job_dir / "framework.log"
    assert log_file.is_file()
    assert run_id in log_file.read_text()
    assert not list((launch_dir / "outputs").rglob("mlruns")), "the store moved into Hydra's output folder"
    assert not list((launch_dir / "outputs").rglob("*.db"))


def test_a_run_without_figures_records_everything_else_as_the_default_run(counting_runs):
    """tracking.figures=false: no figures/ artifacts; the same metrics, samples and model as the default run."""
    default, bare = counting_runs["default"], counting_runs["tracking.figures=false"]
    assert bare.result.returncode == 0, bare.result.stderr
    run, reference = bare.only_run(), default.only_run()
    assert run.info.status == "FINISHED"
    assert run.data.params["tracking.figures"] == "False"
    assert [a.path for a in default.client.list_artifacts(reference.info.run_id, "figures")]  # the default draws them
    assert bare.client.list_artifacts(run.info.run_id, "figures") == []
    assert all_histories(bare.client, run) == all_histories(default.client, reference)

    def texts(launched: Launched, run_id: str) -> dict[str, str]:
        folder = launched.client.download_artifacts(run_id, "samples", str(launched.launch_dir / "samples"))
        return {path.name: path.read_text() for path in Path(folder).iterdir()}

    assert texts(bare, run.info.run_id) == texts(default, reference.info.run_id)
    assert bare.client.search_logged_models([run.info.experiment_id])  # the model is logged


@pytest.mark.parametrize("seed", SEEDS)
def test_reference_result_of_counting(counting_runs, seed):
    launched = counting_runs[f"seed={seed}"]
    assert launched.result.returncode == 0, launched.result.stderr
    run = launched.only_run()
    assert run.info.status == "FINISHED"
    assert run.data.params["seed"] == str(seed)
    assert run.data.params["train.steps"] == str(STEPS)
    metrics = run.data.metrics
    assert abs(metrics["w_x"] - 1) < 0.01, metrics
    assert abs(metrics["w_rec"] - 1) < 0.01, metrics
    assert abs(metrics["test_output"] - 5) < 0.05, metrics


def test_same_seed_same_metrics_other_seed_other_loss(counting_runs):
    histories = {}
    for label in ("default", "seed=0", "seed=1"):
        launched = counting_runs[label]
        assert launched.result.returncode == 0, launched.result.stderr
        run = launched.only_run()
        histories[label] = (run.data.params["seed"], all_histories(launched.client, run))

    (seed_a, a), (seed_b, b), (seed_c, c) = histories.values()
    assert seed_a == seed_b == "0" and seed_c == "1"
    assert set(a) == {
        "loss",
        "grad_norm",
        "grad_flow_ratio",
        "w_x",
        "w_rec",
        "test_output",
        "reached",
        "steps_to_result",
    }
    assert len(a["loss"]) == STEPS // 10 + 2  # every 10th step, the last, the final evaluation
    assert a == b  # every value of every metric, exactly
    assert c["loss"] != a["loss"]
    assert sum(x != y for (_, x), (_, y) in zip(a["loss"], c["loss"], strict=True)) > STEPS // 20


# -- failures and the command line ----------------------------------------------------


def test_sgd_diverges_with_one_line_and_a_failed_run(cli, default_store):
    store = default_store
    # plain gradient descent: the pairing's recipe (clipping, momentum) taken away
    result = cli("task=counting", "optim=sgd", "optim.momentum=0", "train.clip_value=null", "tracking.log_every=1")
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith("framework: error: training diverged at step ")
    diverged_at = int(line.removeprefix("framework: error: training diverged at step ").split(":")[0])
    assert diverged_at >= 1

    (run,) = runs_of(store, "counting")
    assert run.info.status == "FAILED"
    name = "counting optim=sgd optim.momentum=0 train.clip_value=null"
    where = result.stdout[result.stdout.index(f"\nto look at the FAILED run '{name}' ({run.info.run_id}):") + 1 :]
    # lines to copy, without the log's prefix
    assert (
        where.splitlines()[2]
        == f"  then open http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    )
    assert run.data.params["optim.name"] == "sgd"
    assert run.data.tags["error"].startswith(f"training diverged at step {diverged_at}")
    # the steps before the divergence are kept
    for key in ("loss", "grad_norm", "w_x", "w_rec"):
        assert [s for s, _ in history(store, run.info.run_id, key)] == list(range(diverged_at)), key
    assert "test_output" not in run.data.metrics


@pytest.mark.parametrize(
    ("args", "key", "value", "accepted"),
    [
        (["optim.step_init=-1"], "optim.step_init", "-1", "a number > 0"),
        (["optim.eta_minus=1.5"], "optim.eta_minus", "1.5", "a number > 0 and < 1"),
        (["train.steps=0"], "train.steps", "0", "an integer >= 1"),
        (["train.steps=abc"], "train.steps", "abc", "an integer >= 1"),
        (["seed=-1"], "seed", "-1", "an integer >= 0"),
        (["optim=sgd", "optim.lr=-0.1"], "optim.lr", "-0.1", "a number > 0"),
        (["task=echo", "task.epochs=[1,2]"], "task.epochs", "[1, 2]", "an integer >= 1"),  # train.steps follows it
    ],
)
def test_bad_value_exits_2_with_one_line_and_no_run(cli, tmp_path, args, key, value, accepted):
    result = cli(*args)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert line in (
        f"framework: error: {key}={value}: expected {accepted}",
        f"framework: error: {key}='{value}': expected {accepted}",  # a string value is quoted
    )
    assert_no_runs(tmp_path / "mlruns" / "mlflow.db")


def test_list_prints_every_component_with_plugin_and_version(cli):
    from framework import __version__
    from framework.core.plugins import create_manager

    result = cli("list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["KIND", "NAME", "PLUGIN", "VERSION", "DESCRIPTION"]
    rows = {tuple(line.split()[:2]): line.split()[2:4] for line in lines[1:]}
    assert len(rows) == len(lines) - 1, "a component is listed twice"

    # every registered component, once, with the plugin that provides it
    registered = {(c.kind, c.name): [c.plugin, c.version] for c in create_manager().registry.all()}
    assert rows == registered
    # ... which includes at least the tutorial's own components
    for kind, name, plugin in [
        ("task", "counting", "counting"),
        ("dataset", "counting_bits", "counting"),
        ("cell", "linear", "framework.nn.cells"),
        ("loss", "mse", "framework.nn.losses"),
        ("optim", "rprop", "framework.nn.optimizers"),
        ("optim", "sgd", "framework.nn.optimizers"),
    ]:
        assert rows[(kind, name)] == [plugin, __version__]


@pytest.mark.parametrize("command", ["list", "docs"])
def test_list_and_docs_explain_themselves_and_take_no_arguments(cli, tmp_path, command):
    helped = cli(command, "--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith(f"usage: python -m framework {command}\n\nPrints ")
    wrong = cli(command, "task=adder")
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert one_line(wrong.stderr) == (
        f"framework: error: {command} takes no arguments, got: task=adder (see: python -m framework {command} --help)"
    )
    assert not list(tmp_path.iterdir())  # no run, no store, no output folder


@pytest.mark.slow
def test_help_names_every_subcommand_and_each_explains_itself(cli):
    helped = cli("--help")
    assert helped.returncode == 0, helped.stderr
    registry = plugins.manager().registry
    for kind in KINDS:  # the groups Hydra lists come from the registry (framework/core/hydra_source.py)
        assert f"\n{kind}: {', '.join(c.name for c in registry.of_kind(kind))}\n" in helped.stdout, kind
    for word in SUBCOMMANDS:
        assert f"python -m framework {word} " in helped.stdout, word
        usage = cli(word, "--help")
        assert usage.returncode == 0, usage.stderr
        assert usage.stdout.startswith(f"usage: python -m framework {word}"), usage.stdout


def test_the_garbage_collector_is_on_while_a_run_trains(tmp_path):
    """``python -m framework`` turns the collector off for its start-up only: the run trains with it on (start-up's
    objects frozen, never walked again)."""
    script = """
import gc, runpy, sys
import framework.core.engine as engine
train = engine.train
def train_and_say(*args, **kwargs):
    print("collector on:", gc.isenabled(), "start-up frozen:", gc.get_freeze_count() > 0)
    return train(*args, **kwargs)
engine.train = train_and_say
sys.argv = ["framework", *sys.argv[1:]]
runpy.run_module("framework", run_name="__main__")
"""
    args = ("train.steps=2", "tracking.enabled=false")
    result = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=tmp_path, env=clean_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "collector on: True start-up frozen: True" in result.stdout, result.stdout


# -- the config composition -------------------------------------------------------


def test_command_line_choice_wins_over_the_task_recipe(cli, default_store):
    store = default_store
    plain = ("optim.momentum=0", "train.clip_value=null")  # over the pairing's recipe: plain gradient descent
    result = cli("task=counting", "optim=sgd", "optim.lr=1e-9", *plain, "train.steps=3")
    assert result.returncode == 0, result.stderr
    (run,) = runs_of(store, "counting")
    assert run.data.tags["command"] == (
        "python -m framework task=counting optim=sgd optim.lr=1e-9 optim.momentum=0 train.clip_value=null train.steps=3"
    )
    params = run.data.params
    assert params["optim.name"] == "sgd"
    assert params["optim.lr"] == "1e-09"
    assert params["train.steps"] == "3"
    assert params["train.clip_value"] == "None"
    assert not any(key.startswith(("optim.variant", "optim.step_", "optim.eta_")) for key in params), params
    # sgd really ran: its first update moves the weights by exactly lr * |gradient|
    # (rprop's first move would be 0.0005 per weight, whatever the gradient)
    run_id = run.info.run_id
    (_, w_x), (_, w_rec), (_, norm) = (history(store, run_id, key)[0] for key in ("w_x", "w_rec", "grad_norm"))
    moved = ((w_x + 1.5) ** 2 + (w_rec - 2.0) ** 2) ** 0.5
    assert moved == pytest.approx(1e-9 * norm, rel=1e-6)
    assert w_x > -1.5 and w_rec < 2.0  # downhill from the tutorial's start


@pytest.mark.slow  # fresh stores: MLflow creates its tables, seconds each
def test_tracking_location_uri_env_and_disabled(tmp_path, store_template):
    uri_dir, env_dir, off_dir = tmp_path / "uri", tmp_path / "env", tmp_path / "off"
    seed_store(store_template, uri_dir / "other.db")
    env_db = seed_store(store_template, tmp_path / "elsewhere" / "env.db")
    started = [
        # even when Hydra makes its output folder the working directory
        launch(uri_dir, "tracking.uri=sqlite:///other.db", "hydra.job.chdir=true", "train.steps=5"),
        launch(env_dir, "train.steps=5", env={"MLFLOW_TRACKING_URI": f"sqlite:///{env_db}"}),
        launch(off_dir, "tracking.enabled=false", "train.steps=5", env={"PYTHONPROFILEIMPORTTIME": "1"}),
    ]
    results = [finish(process) for process in started]
    for result in results:
        assert result.returncode == 0, result.stderr

    # a relative sqlite URI is relative to the launch directory, not Hydra's output folder
    client = client_at(uri_dir / "other.db")
    (run,) = runs_of(client, "counting")
    assert run.info.status == "FINISHED"
    assert run.data.params["tracking.uri"] == "sqlite:///other.db"
    artifacts = local_path(run.info.artifact_uri)
    assert artifacts.is_relative_to(uri_dir) and not artifacts.is_relative_to(uri_dir / "outputs")
    assert (artifacts / "config.yaml").is_file()
    assert not (uri_dir / "mlruns").exists()
    assert not list((uri_dir / "outputs").rglob("*.db"))

    # $MLFLOW_TRACKING_URI redirects the default store
    (run,) = runs_of(client_at(env_db), "counting")
    assert run.info.status == "FINISHED"
    assert not (env_dir / "mlruns").exists()

    # tracking.enabled=false records nothing anywhere, and draws no figure: matplotlib is never imported
    assert not list(off_dir.rglob("mlruns"))
    assert not list(off_dir.rglob("*.db"))
    imported = [line.rsplit("|", 1)[-1].strip() for line in results[2].stderr.splitlines() if "import time:" in line]
    assert "numpy" in imported and not [name for name in imported if name.startswith("matplotlib")]


@pytest.mark.slow  # fresh stores: MLflow creates its tables, seconds each
def test_two_runs_started_at_once_into_a_fresh_store(tmp_path):
    processes = [launch(tmp_path, "train.steps=20", "tracking.log_every=1") for _ in range(2)]
    results = [finish(process) for process in processes]
    for result in results:
        assert result.returncode == 0, result.stderr
    store = client_at(tmp_path / "mlruns" / "mlflow.db")

    runs = runs_of(store, "counting")
    assert len(runs) == 2
    assert len({run.info.run_id for run in runs}) == 2
    for run in runs:
        assert run.info.status == "FINISHED"
        steps = [s for s, _ in history(store, run.info.run_id, "loss")]
        assert steps == [*range(20), 20]  # 20 training steps, then the final evaluation
    default = store.get_experiment_by_name("Default")
    if default is not None:
        assert list(store.search_runs([default.experiment_id], run_view_type=ViewType.ALL)) == []
