"""`mlflow ui` on a tracking store filled by the test lists the experiment and its runs, in headless Chromium and
through the REST API."""

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from helpers import free_port, server_process

SETUP = "apt-get update && apt-get install -y chromium chromium-driver"
EXPERIMENT = "ui-test-density-estimation"
RUNS = {"maf-moons-ui": {"flow": "maf", "learning_rate": 1e-3, "test_ll": -2.58},
        "nsf-moons-ui": {"flow": "nsf", "learning_rate": 3e-3, "test_ll": -2.45}}


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"headless Chromium is missing (no chromium on PATH): install it with `{SETUP}`")


def _fill_store(uri: str, artifacts: Path) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri())
    for name, values in RUNS.items():
        run = client.create_run(exp_id, run_name=name, tags={"flow": values["flow"], "dataset": "moons"})
        client.log_param(run.info.run_id, "flow", values["flow"])
        client.log_param(run.info.run_id, "train.learning_rate", values["learning_rate"])
        for step, nll in enumerate((3.0, 2.7, -values["test_ll"])):
            client.log_metric(run.info.run_id, "val_nll", nll, step=step * 100)
        client.log_metric(run.info.run_id, "test_ll", values["test_ll"])
        client.set_terminated(run.info.run_id)
    return exp_id


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture()
def server(tmp_path):
    _chromium()  # fail before starting anything when the browser is missing
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = _fill_store(uri, tmp_path / "artifacts")
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no background job workers: faster start
    base = f"http://127.0.0.1:{port}"
    with server_process(
            [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port",
             str(port), "--workers", "1"],
            tmp_path / "server.log", base + "/health", "mlflow ui", timeout=90, env=env, cwd=tmp_path):
        yield base, exp_id


def test_ui_lists_the_experiment_and_its_runs(server, tmp_path):
    base, exp_id = server
    chromium = _chromium()

    # the REST API the UI itself calls: both runs, with the same param and metric names, comparable
    found = _post(base + "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]
    assert sorted(r["info"]["run_name"] for r in found) == sorted(RUNS)
    for r in found:
        params = {p["key"]: p["value"] for p in r["data"]["params"]}
        metrics = {m["key"]: m["value"] for m in r["data"]["metrics"]}
        name = r["info"]["run_name"]
        assert params["flow"] == RUNS[name]["flow"] and set(params) == {"flow", "train.learning_rate"}
        assert metrics["test_ll"] == pytest.approx(RUNS[name]["test_ll"]) and set(metrics) == {"test_ll", "val_nll"}
    exps = _post(base + "/api/2.0/mlflow/experiments/search", {"max_results": 10})["experiments"]
    assert EXPERIMENT in {e["name"] for e in exps}

    # the JavaScript app, rendered by headless Chromium: the runs page of the experiment
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=15000", "--window-size=1400,900"]
    url = f"{base}/#/experiments/{exp_id}/runs"
    out = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    dom = out.stdout
    assert "<html" in dom.lower(), f"chromium returned no page (exit {out.returncode}): {out.stderr[-1500:]}"
    assert EXPERIMENT in dom, "the experiment name is not on the rendered page"
    for name in RUNS:
        assert name in dom, f"run {name!r} is not on the rendered page"

    # the compare view of both runs: their params and metrics side by side, the differing learning rates shown
    import urllib.parse

    ids = [r["info"]["run_id"] for r in found]
    query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([exp_id])})
    compare = subprocess.run([chromium, *flags, "--dump-dom", f"{base}/#/compare-runs?{query}"],
                             capture_output=True, text=True, timeout=120).stdout
    for text in (*RUNS, "train.learning_rate", "test_ll", "val_nll", "0.001", "0.003"):
        assert text in compare, f"{text!r} is not on the rendered compare-runs page"

    shot = os.environ.get("FLOWS_UI_SCREENSHOT")  # a PNG path: also save what the browser shows, to look at
    if shot:
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([chromium, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=120)
        assert Path(shot).stat().st_size > 10000
        shot2 = str(Path(shot).with_name(Path(shot).stem + "-compare.png"))
        subprocess.run([chromium, *flags, f"--screenshot={shot2}", f"{base}/#/compare-runs?{query}"],
                       capture_output=True, timeout=120)
        assert Path(shot2).stat().st_size > 10000
