"""End to end: the real DVC pipeline on a tiny override of params.yaml, in a temporary copy of the repository.

Asserts the results table, one MLflow run per trained cell with its metric history, that a second `dvc repro`
runs nothing, that changing one flow's hyper-parameters invalidates only that flow's stages, that
`dvc exp run -S flow=<another>` gives a new experiment and a new MLflow run, and that `-S flow=nope` fails
with the validation message.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import copy_repo, load_params, stage_env, tiny_moons

FLOWS = ["maf", "realnvp"]


def _env(repo: Path) -> dict:
    return stage_env(git_identity=True)  # without MLFLOW_TRACKING_URI and DVC_ROOT


def run(repo, *cmd, check=True, timeout=600):
    proc = subprocess.run(list(cmd), cwd=repo, env=_env(repo), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("pipeline") / "repo")  # without outputs and state of own runs
    params = tiny_moons(load_params(), flows=FLOWS)  # maf (the default) and realnvp on moons, 40 steps
    params["figures"] = {"energy_layers": 2, "energy_steps": 10}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(repo, "git", "init", "-q")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "tiny pipeline")
    return repo


@pytest.fixture(scope="module")
def first_repro(repo):
    return run(repo, "dvc", "repro")


def mlflow_runs(repo):
    con = sqlite3.connect(repo / "mlflow.db")
    try:
        runs = con.execute("select run_uuid, name, status from runs").fetchall()
        tags = {}
        for run_id, key, value in con.execute("select run_uuid, key, value from tags"):
            tags.setdefault(run_id, {})[key] = value
        hist = {}
        for run_id, key, step in con.execute("select run_uuid, key, step from metrics"):
            hist.setdefault(run_id, {}).setdefault(key, set()).add(step)
    finally:
        con.close()
    return [{"id": r[0], "name": r[1], "status": r[2], "tags": tags.get(r[0], {}), "metrics": hist.get(r[0], {})}
            for r in runs]


def test_results_table(repo, first_repro):
    with open(repo / "metrics" / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["flow"], r["dataset"]) for r in rows) == sorted((f, "moons") for f in FLOWS)
    for r in rows:
        assert math.isfinite(float(r["test_ll"])) and float(r["test_ll_se"]) > 0
        assert int(r["n_test"]) == 1000 and int(r["steps"]) == 40
        assert r["bits_per_dim"] == ""
    md = (repo / "metrics" / "results.md").read_text()
    assert "nats" in md and "| maf | moons |" in md
    shown = run(repo, "dvc", "metrics", "show", "--json").stdout
    assert "test_ll" in shown
    plots = run(repo, "dvc", "plots", "show")
    assert "failed to load" not in plots.stdout + plots.stderr
    html = (repo / "dvc_plots" / "index.html").read_text()
    assert html.count("val_loss") >= len(FLOWS)


def test_mlflow_one_run_per_cell(repo, first_repro):
    runs = mlflow_runs(repo)
    training = [r for r in runs if r["tags"].get("dvc_stage", "").startswith("train@")]
    assert sorted(r["tags"]["dvc_stage"] for r in training) == sorted(f"train@{f}-moons" for f in FLOWS)
    for r in training:
        assert r["metrics"]["val_nll"] == {20, 40}  # the per-step history
        assert "test_ll" in r["metrics"] and r["status"] == "FINISHED"
        assert r["tags"]["flow"] in FLOWS and r["tags"]["dataset"] == "moons"
        assert len(r["tags"]["git_commit"]) == 40 and r["tags"]["dvc_experiment"] == "workspace"
    assert any(r["tags"].get("dvc_stage") == "report" for r in runs)


def test_second_repro_is_a_noop(repo, first_repro):
    out = run(repo, "dvc", "repro").stdout
    assert "Running stage" not in out, out


def test_one_flow_change_invalidates_only_that_flow(repo, first_repro):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    original = (repo / "params.yaml").read_text()
    params["flows"]["realnvp"]["vector"]["num_layers"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:  # params reach the train cells through configure's per-cell settings files (configs/<cell>.json)
        run(repo, "dvc", "repro", "-s", "configure")
        status = json.loads(run(repo, "dvc", "status", "--json", "dvc.yaml").stdout)
    finally:
        (repo / "params.yaml").write_text(original)
        run(repo, "dvc", "repro", "-s", "configure")
    changed = set(status)
    assert "train@realnvp-moons" in changed
    assert not any(s.startswith(("train@maf", "evaluate@maf", "download", "prepare")) for s in changed), changed


def test_dvc_remote_push_pull(repo, first_repro, tmp_path):
    """A local directory remote moves data and models between machines: push, lose the cache, pull back."""
    remote = tmp_path / "remote"
    run(repo, "dvc", "remote", "add", "--local", "-f", "-d", "store", str(remote))
    run(repo, "dvc", "push", "dvc.yaml")  # the default pipeline (the paper one is not run in this copy)
    model = repo / "models" / "maf-moons" / "config.json"
    before = model.read_text()
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "models")
    shutil.rmtree(repo / "data")
    run(repo, "dvc", "pull", "dvc.yaml")
    assert model.read_text() == before
    assert (repo / "data" / "processed" / "moons" / "manifest.json").exists()
    status = run(repo, "dvc", "status", "--json", "dvc.yaml").stdout
    assert json.loads(status) == {}, status


def test_exp_run_new_flow(repo, first_repro):
    before = {r["id"] for r in mlflow_runs(repo)}
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "after first repro")
    run(repo, "dvc", "exp", "run", "-S", "flow=realnvp")
    shown = json.loads(run(repo, "dvc", "exp", "show", "--json").stdout)
    text = json.dumps(shown)
    assert "realnvp" in text and "test_ll" in text
    new = [r for r in mlflow_runs(repo) if r["id"] not in before]
    exp_runs = [r for r in new if r["tags"].get("dvc_stage") == "train_exp"]
    assert len(exp_runs) == 1 and exp_runs[0]["tags"]["flow"] == "realnvp"
    assert exp_runs[0]["tags"]["dvc_experiment"] not in ("", "workspace")
    assert "test_ll" in exp_runs[0]["metrics"]


def test_exp_run_bad_flow_fails_clearly(repo, first_repro):
    params = (repo / "params.yaml").read_text()
    try:
        proc = run(repo, "dvc", "exp", "run", "-S", "flow=nope", check=False)
    finally:
        (repo / "params.yaml").write_text(params)  # -S edits the workspace's params.yaml
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "flow = 'nope' is invalid: accepted flows:" in text and "maf" in text, text[-3000:]


#: `dvc queue status` states (its last column)
QUEUE_STATES = ("Queued", "Running", "Failed", "Success", "Unknown")


def queue_states(repo) -> tuple[dict[str, str], str]:
    """`dvc queue status` as {experiment name: state}, and its text."""
    out = run(repo, "dvc", "queue", "status").stdout
    states = {}
    for line in out.splitlines():
        cells = line.split()  # Task, Name, Created (one or more words), Status
        if len(cells) >= 4 and cells[-1] in QUEUE_STATES:
            states[cells[1]] = cells[-1]
    return states, out


def queue_logs(repo, names) -> str:
    return "\n".join(f"--- dvc queue logs {n}:\n{run(repo, 'dvc', 'queue', 'logs', n, check=False).stdout[-3000:]}"
                     for n in names)


def _stop_queue_workers(repo) -> None:
    """Kill the process groups of the queue workers still alive (each worker runs in its own group).

    DVC's workers shut themselves down once the queue is empty, but not always: with ``-j 2`` a worker whose
    monitor saw the queue empty while its task still ran logs "shutting down due to empty queue", finishes the task
    and then never exits (seen in CI, dvc 3.67.1 / dvc-task 0.40.2: its log stops there, its state file has no
    return code).  Nothing of the experiment is lost; the process would only linger past the test.
    """
    import os
    import signal

    for state in (repo / ".dvc" / "tmp" / "exps" / "celery").glob("dvc-exp-worker-*.json"):
        info = json.loads(state.read_text())
        if info.get("returncode") is not None or not info.get("pid"):
            continue
        try:
            group = os.getpgid(info["pid"])
            if group != os.getpgrp():  # never this test's own group (a reused pid)
                os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_queued_experiments_in_parallel(repo, first_repro, tmp_path):
    """`dvc exp run --queue` twice, `dvc queue start -j 2`: both finish, each with exactly one MLflow run.

    `dvc queue start` only spawns the workers and returns. The test waits for the real completion condition: both
    tasks listed as Success by `dvc queue status` (a task is Success only once its worker has collected the
    experiment into the repository's refs). Waiting instead for "no task Queued or Running" is racy:
    `dvc queue status` lists the running tasks first and the queued ones second, so a task that a worker takes in
    between is in neither list, and just after `dvc queue start -j 2` both tasks can vanish from the output at
    once, long before either experiment exists.
    """
    wanted = {"q-made": "made", "q-glow": "glow"}
    run(repo, "git", "add", "-A")  # the baseline: the workspace as the earlier tests left it, committed
    if run(repo, "git", "status", "--porcelain").stdout.strip():
        run(repo, "git", "commit", "-qm", "baseline of the queued experiments")
    # only `flow` changes, so each queued experiment reruns just train_exp and evaluate_exp
    for name, flow in wanted.items():
        run(repo, "dvc", "exp", "run", "--queue", "-S", f"flow={flow}", "-n", name)
    # Not `run`: the workers are forked from `dvc queue start` and keep its stdout and stderr open, so reading
    # them through pipes waits for the workers to exit (for ever, when one hangs: see _stop_queue_workers)
    with open(tmp_path / "queue-start.log", "w") as log:
        start = subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=repo, env=_env(repo), stdout=log,
                               stderr=subprocess.STDOUT, timeout=120)
    assert start.returncode == 0, (tmp_path / "queue-start.log").read_text()
    try:
        _wait_for_the_queue(repo, wanted)
    finally:
        _stop_queue_workers(repo)
    shown = json.dumps(json.loads(run(repo, "dvc", "exp", "show", "--json").stdout))
    missing = [name for name in wanted if name not in shown]
    assert not missing, (f"queue status says Success but `dvc exp show` lacks {missing}:\n"
                         f"{queue_logs(repo, wanted)}")
    runs = [r for r in mlflow_runs(repo) if r["tags"].get("dvc_stage") == "train_exp"]
    for name, flow in wanted.items():
        mine = [r for r in runs if r["tags"].get("dvc_experiment") == name]
        assert len(mine) == 1, (name, [r["tags"] for r in runs])
        assert mine[0]["tags"]["flow"] == flow and mine[0]["status"] == "FINISHED"
        assert "test_ll" in mine[0]["metrics"]


def _wait_for_the_queue(repo, wanted, timeout=900):
    """Until every experiment in ``wanted`` is Success in `dvc queue status`; an AssertionError on a failure."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        states, out = queue_states(repo)
        mine = {name: states.get(name, "absent") for name in wanted}
        if "Failed" in mine.values():
            raise AssertionError(f"a queued experiment failed: {mine}\n{out}\n{queue_logs(repo, wanted)}")
        if all(state == "Success" for state in mine.values()):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"queued experiments not all Success after {timeout} s: {mine}\n{out}\n"
                                 f"{queue_logs(repo, wanted)}")
        time.sleep(3)
