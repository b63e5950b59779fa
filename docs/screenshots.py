"""Make the screenshots of MLflow's UI that docs/tracking.md shows, from the project's own runs.

    python docs/screenshots.py [--chromium /usr/bin/chromium] [--keep]

Records a few adder runs and a small sweep into a temporary ./mlruns (through ``python -m framework``, as a
user would), serves that store with ``mlflow ui`` on a free port of 127.0.0.1, photographs the experiment page,
a run's overview, its metric charts and its artifacts with headless Chromium, driven by Playwright (``pip install
playwright``; the browser is Debian's ``chromium`` package, ``apt-get install chromium``, not Playwright's own),
writes the PNGs into docs/images/ and stops the server. ``--keep`` leaves the
temporary folder (its path is printed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

IMAGES = Path(__file__).resolve().parent / "images"
RUNS = [  # the command lines recorded, in this order
    ["task=adder"],
    ["task=adder", "optim=adam"],
    ["task=adder", "optim=rmsprop"],
    ["--multirun", "task=adder", "optim=adagrad,rprop", "seed=0,1"],
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record(folder: Path) -> None:
    """The runs, recorded into ``folder``/mlruns."""
    for overrides in RUNS:
        print("python -m framework", " ".join(overrides), flush=True)
        subprocess.run([sys.executable, "-m", "framework", *overrides], cwd=folder, check=True, capture_output=True)


def find_runs(uri: str) -> tuple[str, str, list[str]]:
    """The adder experiment's id, the id of the run ``adder optim=adam``, and the experiment's tags' kind."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("adder")
    kind = experiment.tags.get("mlflow.experimentKind")
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'adder optim=adam'")
    return experiment.experiment_id, runs[0].info.run_id, [kind]


def serve(uri: str, port: int, log: Path) -> subprocess.Popen:
    """``mlflow ui`` on 127.0.0.1:``port``, once it answers."""
    command = [shutil.which("mlflow") or "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1"]
    server = subprocess.Popen([*command, "--port", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT)
    for _ in range(120):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.terminate()
    raise SystemExit(f"mlflow ui did not answer within 60 s (its log: {log})")


def shoot(browser: Any, url: str, png: Path, size: tuple[int, int], expand: bool = False) -> None:
    """A screenshot of ``url`` into ``png``: MLflow's assistant panel closed, and with ``expand`` the sweeps' child
    runs shown."""
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.goto(url)
    page.wait_for_timeout(6000)
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()
    if expand:
        for button in page.locator('button[data-component-id*="runnamecellrenderer"]').all():
            button.click()
    page.wait_for_timeout(2000)
    page.screenshot(path=str(png))
    page.close()
    print(f"wrote {png.relative_to(IMAGES.parent)}", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder of the runs")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="framework-screenshots-"))
    server = None
    try:
        record(folder)
        uri = f"sqlite:///{folder}/mlruns/mlflow.db"
        experiment, run, kind = find_runs(uri)
        print(json.dumps({"experiment": experiment, "run": run, "mlflow.experimentKind": kind[0]}))
        port = free_port()
        server = serve(uri, port, folder / "mlflow-ui.log")
        base = f"http://127.0.0.1:{port}/#/experiments/{experiment}"
        IMAGES.mkdir(exist_ok=True)
        pages = {
            "mlflow-experiment.png": (f"{base}/runs", (1500, 700)),
            "mlflow-run.png": (f"{base}/runs/{run}", (1400, 1500)),
            "mlflow-run-metrics.png": (f"{base}/runs/{run}/model-metrics", (1400, 900)),
            "mlflow-run-artifacts.png": (f"{base}/runs/{run}/artifacts/figures/right_sums.png", (1400, 800)),
        }
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"])
            for name, (url, size) in pages.items():
                shoot(browser, url, IMAGES / name, size, expand=name == "mlflow-experiment.png")
            browser.close()
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
