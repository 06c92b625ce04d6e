"""Multi-worker training (``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``): two worker processes on 127.0.0.1.

* ``flows.training.fit`` with two workers (one CPU replica each) matches the single-process run with the same
  seed and global batch: measured on this CPU, the validation losses are bitwise equal and the weights differ by
  at most 6e-8 (relative 4e-6) after 60 steps; asserted with rtol 1e-5 on the losses and atol 1e-5 on the weights.
  Only the chief writes its output file and checkpoints.
* ``stages/train.py`` as two workers, each in its own copy of a tiny repository (as on two hosts): exactly one
  MLflow run (the chief's), the outputs written once (the chief's copy), nothing written in the worker's copy,
  and the best validation NLL equal to a single-process run of the same stage (measured: bitwise equal; asserted
  with rel 1e-5).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import ROOT, copy_repo, free_ports, load_params, stage_env, tiny_moons

TIMEOUT = 300

# one worker (or the single-process reference without TF_CONFIG): argv = [output JSON, checkpoint directory]
WORKER = r"""
import json, os, sys
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)  # two workers share a small machine
tf.config.threading.set_inter_op_parallelism_threads(1)
sys.path.insert(0, os.environ["FLOWS_ROOT"])
from flows.training import TrainConfig, fit, is_chief, pick_strategy, set_seed
strategy = pick_strategy()  # first: MultiWorkerMirroredStrategy must exist before any other TF op
import numpy as np
import flows
rng = np.random.default_rng(0)
mix = rng.normal(size=(6, 6)).astype(np.float32)
x = (np.tanh(rng.normal(size=(3000, 6))) @ mix + rng.normal(size=(3000, 6)) * 0.1).astype(np.float32)
set_seed(5)
with strategy.scope():
    flow = flows.build_flow("maf", [6], num_layers=2, hidden_units=[16, 16])
h = fit(flow, x[:2400], x[2400:], TrainConfig(steps=60, eval_every=20, batch_size=128, seed=5),
        strategy=strategy, log=lambda s: None, checkpoint_dir=sys.argv[2])
result = {"strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
          "chief": is_chief(strategy), "val_loss": h.val_loss, "best_step": h.best_step,
          "weights": [v.numpy().ravel().tolist() for v in flow.variables]}
if is_chief(strategy):
    with open(sys.argv[1], "w") as fh:
        json.dump(result, fh)
print("RESULT " + json.dumps(result))
"""


def tf_config(index: int, ports) -> str:
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def base_env(**extra) -> dict:
    return stage_env(drop=("TF_CONFIG",), TF_USE_LEGACY_KERAS="1", CUDA_VISIBLE_DEVICES="", **extra)


def run_together(commands, logs: Path):
    """Start every (argv, cwd, env) at once and wait for all, TIMEOUT s in all; as soon as one fails (or at the
    timeout) kill every process still running, and fail with the tail of each one's stderr. Returns the stdouts."""
    logs.mkdir(parents=True, exist_ok=True)
    procs, files = [], []
    for i, (argv, cwd, env) in enumerate(commands):
        out, err = open(logs / f"{i}.out", "w+"), open(logs / f"{i}.err", "w+")  # files: no pipe fills up
        files.append((out, err))
        procs.append(subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err, text=True))
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
    texts = []
    for out, err in files:
        out.seek(0), err.seek(0)
        texts.append((out.read(), err.read()))
        out.close(), err.close()
    if any(p.returncode != 0 for p in procs):
        report = "\n".join(f"--- process {i} (exit {p.returncode}; killed = -9) stderr tail:\n{texts[i][1][-3000:]}"
                           for i, p in enumerate(procs))
        pytest.fail(f"a process failed, or they ran past {TIMEOUT} s:\n{report}")
    return [o for o, _ in texts]


def result_of(stdout: str) -> dict:
    return json.loads(stdout.split("RESULT ", 1)[1])


def test_two_workers_match_single_process_and_only_chief_writes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    ports = free_ports(2)
    dirs = [tmp_path / f"worker{i}" for i in range(2)] + [tmp_path / "single"]
    for d in dirs:
        d.mkdir()
    cmds = [([sys.executable, str(script), str(d / "out.json"), str(d / "ckpt")], d,
             base_env(FLOWS_ROOT=str(ROOT), **({"TF_CONFIG": tf_config(i, ports)} if i < 2 else {})))
            for i, d in enumerate(dirs)]
    chief, worker, single = (result_of(o) for o in run_together(cmds, tmp_path / "logs"))

    assert (chief["strategy"], chief["replicas"], chief["chief"]) == ("CollectiveAllReduceStrategy", 2, True)
    assert (worker["replicas"], worker["chief"]) == (2, False)
    assert (single["replicas"], single["chief"]) == (1, True)
    # both workers hold the same weights (the all-reduce gives every worker the same sum)
    assert worker["val_loss"] == chief["val_loss"] and worker["weights"] == chief["weights"]
    # two workers x 64 rows = one process x 128 rows, up to float32 summation order
    np.testing.assert_allclose(chief["val_loss"], single["val_loss"], rtol=1e-5)
    assert chief["best_step"] == single["best_step"]
    w_multi = np.concatenate([np.asarray(w) for w in chief["weights"]])
    w_single = np.concatenate([np.asarray(w) for w in single["weights"]])
    print("max |val loss diff|", np.max(np.abs(np.subtract(chief["val_loss"], single["val_loss"]))),
          "max |weight diff|", np.max(np.abs(w_multi - w_single)))
    np.testing.assert_allclose(w_multi, w_single, atol=1e-5)
    # only the chief wrote: its output file and its checkpoints; the other worker's directory stays empty
    assert (dirs[0] / "out.json").exists() and (dirs[0] / "ckpt" / "ckpt-60.index").exists()
    assert list(dirs[1].iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# stages/train.py as two workers, each in its own copy of a tiny repository

EXTRA_SKIP = {"checkpoints"}  # not copied besides helpers.TOP_SKIP
OUTPUTS = ["models/maf-moons", "plots/history/maf-moons.csv", "metrics/train/maf-moons.json",
           "metrics/timing/maf-moons.json"]


def _check(proc):
    assert proc.returncode == 0, f"{proc.args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _snapshot(repo: Path) -> dict:
    return {str(p.relative_to(repo)): p.stat().st_mtime_ns for p in repo.rglob("*")
            if "__pycache__" not in p.parts}


def _runs(db: Path):
    con = sqlite3.connect(db)
    try:
        return con.execute("select run_uuid, name, status from runs").fetchall()
    finally:
        con.close()


def test_train_stage_as_two_workers(tmp_path):
    chief_repo = tmp_path / "chief" / "repo"
    copy_repo(chief_repo, extra_skip=EXTRA_SKIP)
    params = tiny_moons(load_params())  # maf on moons, 40 steps
    (chief_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    db = tmp_path / "mlflow.db"
    env = base_env(MLFLOW_TRACKING_URI=f"sqlite:///{db}")
    env.pop("DVC_ROOT", None)
    for stage in ("download", "prepare"):
        _check(subprocess.run([sys.executable, f"stages/{stage}.py", "moons"], cwd=chief_repo, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT))
    worker_repo = tmp_path / "worker" / "repo"  # the second host: its own copy, data prepared alike
    shutil.copytree(chief_repo, worker_repo)
    before = _snapshot(worker_repo)

    ports = free_ports(2)
    cmd = [sys.executable, "stages/train.py", "--flow", "maf", "--dataset", "moons"]
    chief_out, worker_out = run_together(
        [(cmd, repo, {**env, "TF_CONFIG": tf_config(i, ports)}) for i, repo in enumerate([chief_repo, worker_repo])],
        tmp_path / "logs",
    )

    runs = _runs(db)
    assert len(runs) == 1 and runs[0][1:] == ("maf-moons", "FINISHED"), runs
    assert runs[0][0] in chief_out and "the chief writes the outputs" in worker_out
    for rel in OUTPUTS:
        assert (chief_repo / rel).exists(), rel
    assert not (chief_repo / "checkpoints").exists()  # removed once the outputs are written
    assert _snapshot(worker_repo) == before  # the other worker wrote nothing in its repository
    config = json.loads((chief_repo / "models/maf-moons/config.json").read_text())
    assert config["metadata"]["mlflow_run_id"] == runs[0][0]
    multi = json.loads((chief_repo / "metrics/train/maf-moons.json").read_text())

    # the same stage in one process (the worker's copy, no TF_CONFIG): the same result
    _check(subprocess.run(cmd, cwd=worker_repo, env=env, capture_output=True, text=True, timeout=TIMEOUT))
    single = json.loads((worker_repo / "metrics/train/maf-moons.json").read_text())
    assert multi["best_step"] == single["best_step"] and multi["steps"] == single["steps"] == 40
    print("best_val_nll two workers", multi["best_val_nll"], "one process", single["best_val_nll"])
    assert multi["best_val_nll"] == pytest.approx(single["best_val_nll"], rel=1e-5)
    assert len(_runs(db)) == 2
