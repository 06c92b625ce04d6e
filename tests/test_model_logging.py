"""The flows as MLflow models, end to end on a tiny moons grid (maf and planar, 40 steps) run stage by stage in a
copy of the repository: the evaluate stage's LoggedModel loads in a fresh process and reproduces test_ll, it
samples (maf) or says in one line that it cannot (planar); the report registers each data set's best flow under
``density-<dataset>@best`` without duplicate versions on a rerun; training runs carry system metrics; the
timing file is apart from the metrics; and the stages print none of TensorFlow's start-up notices."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import copy_repo, load_params, stage_env, tiny_moons

NOISE = [r"absl::InitializeLog", r"oneDNN", r"Could not find cuda drivers", r"cuInit", r"E0000",
         r"retracing", r"cpu_feature_guard", r"rebuild TensorFlow",
         # C++ INFO lines of XLA's first compilation (the tiny grid's maf cell uses XLA) and MLflow's new-store set-up
         r"XLA service", r"Compiled cluster using XLA", r"MLIR crash reproducer", r"StreamExecutor",
         r"alembic", r"Context impl SQLiteImpl", r"Creating initial MLflow database"]


def _env():
    env = stage_env(MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")
    env.pop("TF_CPP_MIN_LOG_LEVEL")  # the user's default: TensorFlow prints all its notices
    return env


def stage(repo, *argv, check=True):
    proc = subprocess.run([sys.executable, *argv], cwd=repo, env=_env(), capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


#: each stage's CompletedProcess of the module's pipeline
OUTPUTS: dict = {}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("models") / "repo")
    params = tiny_moons(load_params(), flows=("maf", "planar"))
    params["flows"]["planar"] = {"num_layers": 4}
    params["datasets"]["moons"].setdefault("overrides", {})["planar"] = {"train": {"jit_compile": "auto"}}
    params["datasets"]["moons"].setdefault("overrides", {})["maf"] = {"train": {"jit_compile": True}}  # XLA's notices
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    outputs = []
    for argv in (["stages/download.py", "moons"], ["stages/prepare.py", "moons"]):
        outputs.append(stage(repo, *argv))
    for flow in ("maf", "planar"):
        outputs.append(stage(repo, "stages/train.py", "--flow", flow, "--dataset", "moons"))
        outputs.append(stage(repo, "stages/evaluate.py", "--flow", flow, "--dataset", "moons"))
    outputs.append(stage(repo, "stages/report.py"))
    OUTPUTS[repo] = outputs
    return repo


def _store(repo):
    return f"sqlite:///{repo / 'mlflow.db'}"


def _logged_model(repo, cell):
    from mlflow.tracking import MlflowClient

    run_id = json.loads((repo / "models" / cell / "config.json").read_text())["metadata"]["mlflow_run_id"]
    client = MlflowClient(_store(repo))
    exp = client.get_experiment_by_name("density-estimation")
    models = client.search_logged_models([exp.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert len(models) == 1 and models[0].name == "flow", models
    return models[0], run_id


LOAD = """
import json, sys
import mlflow, numpy as np, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
test = np.load("data/processed/moons/test.npy")
lp = model.predict(test)
lp_df = model.predict(pd.DataFrame(test, columns=["x0", "x1"]))
out = {"mean": float(np.mean(lp)), "n": len(lp), "df_max_diff": float(np.max(np.abs(lp - lp_df)))}
try:
    s = model.predict(test[:1], params={"method": "sample", "num_samples": 7, "seed": 3})
    s2 = model.unwrap_python_model().sample(7, seed=3)
    out["sample_shape"], out["same"] = list(np.shape(s)), bool(np.allclose(s, s2))
except Exception as exc:
    out["sample_error"] = str(exc)
print("RESULT " + json.dumps(out))
"""


def _load_in_fresh_process(repo, uri):
    # the copy's flows/ must not be what makes it load: run from the data directory's parent with a bare sys.path
    proc = subprocess.run([sys.executable, "-c", LOAD, _store(repo), uri], cwd=repo, capture_output=True, text=True,
                          timeout=300, env=dict(_env(), PYTHONPATH=""))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


@pytest.mark.parametrize("flow", ["maf", "planar"])
def test_logged_model_reproduces_test_ll_in_a_fresh_process(repo, flow):
    model, run_id = _logged_model(repo, f"{flow}-moons")
    ev = json.loads((repo / "metrics" / "eval" / f"{flow}-moons.json").read_text())
    got = _load_in_fresh_process(repo, f"models:/{model.model_id}")
    assert got["n"] == ev["n_test"] == 1000
    assert abs(got["mean"] - ev["test_ll"]) < 1e-5, (got, ev["test_ll"])
    assert got["df_max_diff"] < 1e-6  # a DataFrame gives the same rows as the array
    assert {m.key: m.value for m in model.metrics}["test_ll"] == pytest.approx(ev["test_ll"])  # linked metric
    assert model.tags["content_hash"] and model.source_run_id == run_id
    if flow == "maf":
        assert got["sample_shape"] == [7, 2] and got["same"]
    else:
        assert "cannot sample" in got["sample_error"] and "\n" not in got["sample_error"]


def _versions(repo, name):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(_store(repo))
    return client, sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def test_report_registers_the_best_flow_and_a_rerun_adds_no_version(repo):
    evals = {f: json.loads((repo / "metrics" / "eval" / f"{f}-moons.json").read_text())["test_ll"]
             for f in ("maf", "planar")}
    best = max(evals, key=evals.get)
    client, versions = _versions(repo, "density-moons")
    assert len(versions) == 1
    alias, model = client.get_model_version_by_alias("density-moons", "best"), _logged_model(repo, f"{best}-moons")[0]
    assert (alias.run_id, alias.tags["content_hash"]) == (model.source_run_id, model.tags["content_hash"]), alias
    assert alias.source == f"models:/{model.model_id}"
    stage(repo, "stages/report.py")  # unchanged: the same version
    client, again = _versions(repo, "density-moons")
    assert [str(v.version) for v in again] == ["1"]
    # the other flow becomes the best: the alias moves to a new version; a rerun adds nothing
    other = "planar" if best == "maf" else "maf"
    path = repo / "metrics" / "eval" / f"{other}-moons.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "test_ll": max(evals.values()) + 1.0}))
    for _ in range(2):
        out = stage(repo, "stages/report.py").stdout
    client, moved = _versions(repo, "density-moons")
    assert [str(v.version) for v in moved] == ["1", "2"], out
    alias, model = client.get_model_version_by_alias("density-moons", "best"), _logged_model(repo, f"{other}-moons")[0]
    assert (str(alias.version), alias.run_id, alias.source) == ("2", model.source_run_id, f"models:/{model.model_id}")
    assert "version reused" in out
    got = _load_in_fresh_process(repo, "models:/density-moons@best")
    assert got["n"] == 1000


def test_training_runs_log_system_metrics_and_keep_timing_out_of_the_metrics(repo):
    con = sqlite3.connect(repo / "mlflow.db")
    try:
        keys = {k for (k,) in con.execute("select distinct key from metrics where key like 'system/%'")}
    finally:
        con.close()
    assert "system/cpu_utilization_percentage" in keys and "system/system_memory_usage_megabytes" in keys
    train = json.loads((repo / "metrics" / "train" / "maf-moons.json").read_text())
    timing = json.loads((repo / "metrics" / "timing" / "maf-moons.json").read_text())
    assert "train_seconds" not in train and timing["train_seconds"] > 0
    # jit_compile as run: maf's is set (true), planar's "auto" was measured, and both say what ran
    assert timing["jit_compile"] is True and not any(k.startswith("jit_auto") for k in timing)
    assert timing["matmul_dtype"] == "float32"  # as set (params.yaml leaves it at float32)
    assert timing["batch_shards"] == 1  # as set (the default)
    auto = json.loads((repo / "metrics" / "timing" / "planar-moons.json").read_text())
    assert isinstance(auto["jit_compile"], bool)
    assert auto["jit_auto_xla_ms_per_step"] > 0 and auto["jit_auto_graph_ms_per_step"] > 0
    con = sqlite3.connect(repo / "mlflow.db")
    try:
        logged = {v for (v,) in con.execute("select value from params where key = 'jit_compile_as_run'")}
        dtypes = {v for (v,) in con.execute("select value from params where key = 'matmul_dtype_as_run'")}
        shards = {v for (v,) in con.execute("select value from params where key = 'batch_shards_as_run'")}
    finally:
        con.close()
    assert logged == {"True", str(auto["jit_compile"])} and dtypes == {"float32"} and shards == {"1"}
    assert "train_seconds" not in json.loads((repo / "metrics" / "eval" / "maf-moons.json").read_text())
    assert "train s" in (repo / "metrics" / "results.md").read_text()


def test_stages_print_no_tensorflow_start_up_notices(repo):
    text = "".join(p.stdout + p.stderr for p in OUTPUTS[repo])
    for pattern in NOISE:
        assert not re.search(pattern, text), (pattern, text[-3000:])
    assert re.search(r"^train@maf-moons: training on CPU \(\S+, \d+ threads?\)$", text, re.M), text[-3000:]
    assert re.search(r"^evaluate@maf-moons: evaluating on CPU", text, re.M)


def test_a_real_stderr_line_still_gets_through(tmp_path):
    """A line TensorFlow (or anything) writes to file descriptor 2 during the captured start-up that is not a
    known notice reaches stderr; the notices around it do not."""
    code = ("import os, sys; sys.path.insert(0, '.'); from stages import quiet\n"
            "with quiet.filtered_stderr():\n"
            "    os.write(2, b'I0000 port.cc:153] oneDNN custom operations are on. You may see\\n')\n"
            "    os.write(2, b'E0000 real_op.cc:1] something that matters\\n')\n"
            "    raise SystemExit(0)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stderr == "E0000 real_op.cc:1] something that matters\n"
