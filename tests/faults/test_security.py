"""Security: no pickle in the framework's own code, and servers that bind to 127.0.0.1 as the README shows them."""

from __future__ import annotations

import ast
import re

import pytest
from conftest import REPO

PICKLING_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "shelve", "marshal", "joblib", "torch"}
UNSAFE_YAML = {"yaml.load", "yaml.load_all", "yaml.full_load", "yaml.full_load_all", "yaml.unsafe_load"}


def dotted(node: ast.AST) -> str:
    """``np.load`` for the expression ``np.load``; '' for anything but names and attributes."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def is_constant(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def pickle_uses(source: str) -> list[str]:
    """Every place in ``source`` that may load or write a pickle: ``line: what``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"{getattr(node, 'lineno', 0)}: "
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [where + f"import {m}" for m in modules if m.split(".")[0] in PICKLING_MODULES]
        elif isinstance(node, ast.Attribute | ast.Name) and "pickle" in dotted(node).rpartition(".")[2]:
            found.append(where + dotted(node))
        elif isinstance(node, ast.Call):
            name, keywords = dotted(node.func), {k.arg: k.value for k in node.keywords}
            if name in ("np.load", "numpy.load") and not is_constant(keywords.get("allow_pickle"), False):
                found.append(where + f"{name} without allow_pickle=False")
            if is_constant(keywords.get("allow_pickle"), True):
                found.append(where + "allow_pickle=True")
            if name in UNSAFE_YAML:
                found.append(where + f"{name} (yaml.safe_load builds no objects)")
            model = keywords.get("python_model")
            if model is not None and not (isinstance(model, ast.Call) and dotted(model.func) == "str"):
                found.append(where + "python_model not given as a file path (an object is pickled)")
    return found


@pytest.mark.parametrize(
    "source",
    [
        "import pickle",
        "from cloudpickle import dumps",
        "import joblib",
        "import torch",
        "data = np.load(path)",
        "data = numpy.load(path, allow_pickle=True)",
        "frame = pd.read_pickle(path)",
        "config = yaml.load(text, Loader=yaml.Loader)",
        "mlflow.pyfunc.log_model(name='model', python_model=Model())",
    ],
)
def test_the_scan_finds_every_kind_of_pickle(source):
    """The scan below is not vacuous: each way to load or write a pickle is found."""
    assert pickle_uses(source), source


def test_no_pickle_in_the_frameworks_own_files():
    """Pickle in the framework's own files (framework/, plugins/) -> none: checkpoints and models load with
    allow_pickle=False, YAML with safe_load, MLflow models from code."""
    files = sorted([*(REPO / "framework").rglob("*.py"), *(REPO / "plugins").rglob("*.py")])
    assert len(files) > 20
    uses = {str(path.relative_to(REPO)): pickle_uses(path.read_text()) for path in files}
    assert {path: found for path, found in uses.items() if found} == {}
    assert "np.load(path, allow_pickle=False)" in (REPO / "framework" / "core" / "checkpoint.py").read_text()


def commands(text: str, program: str) -> list[str]:
    """Every command line running ``program`` in ``text``, from the program on, continuation lines joined."""
    return re.findall(rf"{program} [^\n]*", re.sub(r"\\\n\s*", " ", text))


def code_blocks(markdown: str) -> str:
    """The fenced code blocks of ``markdown``."""
    return "\n".join(re.findall(r"^```[a-z]*\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL))


@pytest.mark.parametrize("program", ["mlflow ui", "mlflow server", "mlflow models serve"])
def test_documented_servers_bind_to_localhost(program):
    """A documented server reachable from the network -> every `mlflow ui`, `mlflow server` and `mlflow models
    serve` the README and --help show binds to 127.0.0.1; the README's Security section says what to add before
    exposing one."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]  # the README and the documentation site
    shown = [command for page in pages for command in commands(code_blocks(page.read_text()), program)]
    shown += commands((REPO / "conf" / "config.yaml").read_text(), program)
    assert shown, program
    for command in shown:
        assert re.search(r"(--host|-h) 127\.0\.0\.1\b", command), command
    security = (REPO / "README.md").read_text().split("## Security", 1)[1].split("\n## ", 1)[0]
    for needed in ("127.0.0.1", "authentication", "TLS", "--host 0.0.0.0"):
        assert needed in security, needed
