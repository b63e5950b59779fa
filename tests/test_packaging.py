"""The built wheel, installed for real (not editable), runs ``python -m framework`` from any directory.

The wheel is built from a copy of the source tree and installed with ``pip
install --no-deps --no-index`` into a fresh virtual environment. Its
dependencies (numpy, hydra, mlflow, ...) are not downloaded again: a ``.pth``
file in the new environment lists the folders of the running environment that
hold them. Those folders hold this project's editable install too, but a path
line of a ``.pth`` file does not process the ``.pth`` files of that folder, so
the editable finder stays inactive; and the new environment's site-packages
comes first on ``sys.path``, so both imports and ``importlib.metadata`` (entry
points) find the wheel's copy. The tests check exactly that, from a temporary
working directory outside the repository.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from conftest import clean_env

REPO = Path(__file__).resolve().parents[1]
DISTRIBUTION = "rnn-tutorial-framework"
# the imports of the framework and its plugins; their folders are made visible to the new environment
DEPENDENCIES = ("numpy", "hydra", "omegaconf", "mlflow", "pluggy", "matplotlib", "tqdm", "yaml")
# never copied into the build: environments, build leftovers, run outputs
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
    ".pytest_cache", ".ruff_cache", "mlruns", "outputs", "multirun",
)  # fmt: skip


def isolated_env() -> dict[str, str]:
    """The environment of a subprocess: a CLI's (:func:`conftest.clean_env`) without what redirects imports."""
    dropped = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")
    env = {k: v for k, v in clean_env().items() if k not in dropped}
    env["PIP_NO_INPUT"] = "1"
    return env


def run(command: list[str | Path], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``command`` in ``cwd``; a failure shows its output."""
    return subprocess.run(
        [str(c) for c in command], cwd=cwd, env=isolated_env(), capture_output=True, text=True, timeout=timeout
    )


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{result.args} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def dependency_dirs() -> list[str]:
    """The folders of the running environment that hold the dependencies, site-packages first."""
    dirs = [*site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    for name in DEPENDENCIES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin, f"dependency {name} is not installed"
        origin = Path(spec.origin).resolve()  # .../site-packages/numpy/__init__.py or .../site-packages/six.py
        dirs.append(str(origin.parents[1] if spec.submodule_search_locations else origin.parent))
    # the source tree on sys.path would let `framework` be imported from the repository instead of the wheel
    unique = [d for d in dict.fromkeys(dirs) if Path(d).is_dir() and Path(d).resolve() != REPO]
    return unique


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the source tree (the repository gets no build/ or egg-info)."""
    root = tmp_path_factory.mktemp("build")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE, symlinks=True)
    out = root / "wheel"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, source]
    check(run(build, cwd=root))
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed and the current dependencies visible."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    check(run([base_python, "-m", "venv", root], cwd=root.parent))
    python = root / "bin" / "python"
    check(run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], cwd=root.parent))
    purelib = check(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root.parent))
    (Path(purelib.stdout.strip()) / "_framework_test_dependencies.pth").write_text("\n".join(dependency_dirs()) + "\n")
    return root


def framework(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m framework *args`` with the new environment's interpreter, in ``cwd``."""
    return run([venv / "bin" / "python", "-m", "framework", *args], cwd=cwd)


def inside(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def test_wheel_ships_the_configs_and_the_plugins(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        declared = archive.read(entry_points).decode()
    assert "framework/conf/config.yaml" in names
    assert "framework/conf/__init__.py" in names
    # every config of the top-level conf/ reaches the package
    for config in (REPO / "conf").rglob("*.yaml"):
        assert f"framework/conf/{config.relative_to(REPO / 'conf').as_posix()}" in names
    assert "plugins/counting.py" in names
    assert "[framework]" in declared
    assert "counting = plugins.counting" in declared
    # the repository's own folders do not leak in as top-level packages
    assert not any(n.startswith(("conf/", "tests/")) for n in names)


def test_the_installed_copy_is_the_one_imported(venv: Path, tmp_path: Path) -> None:
    probe = textwrap.dedent(
        f"""
        import importlib.metadata, json, sys
        import framework, framework.conf, plugins.counting
        counting = [ep for ep in importlib.metadata.entry_points(group="framework") if ep.name == "counting"]
        dists = [d for d in importlib.metadata.distributions() if d.metadata["Name"] == {DISTRIBUTION!r}]
        print(json.dumps({{
            "modules": [framework.__file__, framework.conf.__file__, plugins.counting.__file__],
            "counting": [[ep.value, str(ep.dist.locate_file(""))] for ep in counting],
            "distribution": str(importlib.metadata.distribution({DISTRIBUTION!r}).locate_file("")),
            "all_distributions": [str(d.locate_file("")) for d in dists],
            "finders": [type(f).__name__ if not isinstance(f, type) else f.__name__ for f in sys.meta_path],
        }}))
        """
    )
    found = json.loads(check(run([venv / "bin" / "python", "-c", probe], cwd=tmp_path)).stdout)
    for module in found["modules"]:
        assert inside(module, venv), f"{module} is not the installed copy in {venv}"
    assert not any("editable" in finder.lower() for finder in found["finders"]), found["finders"]
    # the editable install's dist-info is visible too (it lives in the dependency folders), but shadowed
    (counting,) = found["counting"]
    assert counting[0] == "plugins.counting"
    assert inside(counting[1], venv), f"the entry point comes from {counting[1]}, not the wheel"
    assert inside(found["distribution"], venv)
    assert inside(found["all_distributions"][0], venv)


def test_list_finds_the_tutorial_plugin_once(venv: Path, tmp_path: Path) -> None:
    listing = check(framework(venv, tmp_path, "list")).stdout
    rows = [line.split() for line in listing.splitlines()]
    # KIND NAME PLUGIN VERSION DESCRIPTION: the task once, from the plugin of the wheel's entry point
    assert [row[:3] for row in rows if row[1:2] == ["counting"]] == [["task", "counting", "counting"]]


def test_a_run_from_any_directory_records_in_that_directory(venv: Path, tmp_path: Path) -> None:
    result = check(framework(venv, tmp_path, "train.steps=5"))
    assert (tmp_path / "mlruns" / "mlflow.db").is_file(), result.stderr
    assert "framework: warning" not in result.stderr, result.stderr


def test_the_packaged_configs_compose(venv: Path, tmp_path: Path) -> None:
    composed = check(framework(venv, tmp_path, "--cfg", "job", "task=counting")).stdout
    assert "step_init: 0.001" in composed
    assert "name: counting" in composed
