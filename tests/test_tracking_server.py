"""Shared tracking: `mlflow server` on a real PostgreSQL backend store (Debian's `postgresql`, a throwaway cluster
started here) with a served artifact store; a training stage logs to it through MLFLOW_TRACKING_URI=http://...
and the run is read back through the MLflow client, and straight from PostgreSQL's tables.

Both servers listen on 127.0.0.1 only.  PostgreSQL refuses to run as root: as root the cluster is created and
run by Debian's `postgres` system user (runuser).  `bash scripts/setup.sh --test` installs the package.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from helpers import free_port, load_params, server_process, stage_env, tiny_moons

ROOT = Path(__file__).resolve().parents[1]
SETUP = "bash scripts/setup.sh --test (as root), or: apt-get install -y postgresql"
EXPERIMENT = "density-estimation"  # stages/tracking.py's default
DB, DB_USER, DB_PASSWORD = "mlflow", "mlflow", "mlflow-test-pw"
STAGE = "train@maf-moons"


def _pg_bin() -> Path:
    """The directory with initdb and pg_ctl: Debian keeps them in /usr/lib/postgresql/<version>/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parts[4].split(".")])
    if not found and shutil.which("pg_ctl"):
        found = [shutil.which("pg_ctl")]
    if not found or not (Path(found[-1]).parent / "initdb").exists():
        pytest.fail(f"PostgreSQL server binaries (initdb, pg_ctl) are missing: install them with `{SETUP}`",
                    pytrace=False)
    return Path(found[-1]).parent


def _as_db_owner(cmd: list[str]) -> list[str]:
    """PostgreSQL will not run as root: then run it as the `postgres` user that Debian's package creates."""
    if os.geteuid() != 0:
        return cmd
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(f"running as root but there is no `postgres` system user to run PostgreSQL: `{SETUP}`",
                    pytrace=False)
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *cmd]
    import shlex

    return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(cmd)]


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _listening_addresses(port: int) -> set[str]:
    import psutil

    return {c.laddr.ip for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port}


@pytest.fixture(scope="module")
def postgres():
    """A fresh PostgreSQL cluster on 127.0.0.1:<free port> (socket in its own temporary directory), with a
    database and a password-authenticated role for MLflow; stopped (pg_ctl stop -m fast) and removed after."""
    bindir = _pg_bin()
    # not under pytest's tmp dir: /tmp/pytest-of-<user> is private to this user, and the server may run as postgres
    base = Path(tempfile.mkdtemp(prefix="flows-pg-"))
    if os.geteuid() == 0:
        _as_db_owner([])  # fails with the install hint when there is no postgres user
        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
    data, log = base / "data", base / "server.log"
    port = free_port()
    started = False
    try:
        _run(_as_db_owner([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--locale=C",
                           "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"]),
             cwd=base)
        opts = (f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off -c full_page_writes=off "
                f"-c shared_buffers=16MB -c max_connections=40")
        started = True
        _run(_as_db_owner([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60",
                           "start"]), cwd=base)
        import psycopg

        # over the unix socket as the superuser (local connections: trust), like `psql -h <socket dir>`
        with psycopg.connect(host=str(base), port=port, user="postgres", dbname="postgres", autocommit=True) as con:
            con.execute(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'")
            con.execute(f"CREATE DATABASE {DB} OWNER {DB_USER}")
        yield {"port": port, "uri": f"postgresql://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{port}/{DB}", "log": log}
    except Exception:
        if log.exists():
            print(f"PostgreSQL log:\n{log.read_text()[-3000:]}")
        raise
    finally:
        if started:
            stop = subprocess.run(_as_db_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                                  capture_output=True, text=True, timeout=60, cwd=base)
            pidfile = data / "postmaster.pid"
            if stop.returncode != 0 and pidfile.exists():  # the last resort: the postmaster by its own pid
                try:
                    os.kill(int(pidfile.read_text().split()[0]), signal.SIGQUIT)
                    time.sleep(2)
                except (ValueError, ProcessLookupError):
                    pass
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    """`mlflow server` on 127.0.0.1:<free port> with the PostgreSQL backend store and artifacts it serves itself."""
    tmp = tmp_path_factory.mktemp("mlflow-server")
    artifacts = tmp / "artifacts"
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no background job workers
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = tmp / "server.log"
    base = f"http://127.0.0.1:{port}"
    with server_process(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres["uri"],
             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            log_path, base + "/health", "mlflow server", timeout=90, env=env, cwd=tmp):
        yield {"uri": base, "port": port, "artifacts": artifacts, "log": log_path}


@pytest.fixture(scope="module")
def trained(tracking_server, tmp_path_factory):
    """A tiny copy of the project (code and a small params.yaml) where download, prepare and one training stage
    run with MLFLOW_TRACKING_URI pointing at the server."""
    repo = tmp_path_factory.mktemp("tracking") / "repo"
    repo.mkdir()
    for name in ("flows", "stages"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = tiny_moons(load_params())  # maf on moons, 40 steps
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = stage_env(drop=("DVC_ROOT", "FLOWS_MLFLOW_EXPERIMENT"), MLFLOW_TRACKING_URI=tracking_server["uri"])
    for cmd in (["stages/download.py", "moons"], ["stages/prepare.py", "moons"],
                ["stages/train.py", "--flow", "maf", "--dataset", "moons", "--out", "models/maf-moons",
                 "--history", "plots/history/maf-moons.csv", "--metrics", "metrics/train/maf-moons.json",
                 "--stage", STAGE]):
        try:
            _run([sys.executable, *cmd], cwd=repo, env=env, timeout=600)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nmlflow server log:\n{tracking_server['log'].read_text()[-3000:]}") from None
    return repo


def _training_run(server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server["uri"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None, f"no experiment {EXPERIMENT!r} on {server['uri']}"
    runs = client.search_runs([exp.experiment_id])
    training = [r for r in runs if r.data.tags.get("dvc_stage") == STAGE]
    assert len(training) == 1, [r.data.tags for r in runs]
    return client, exp, training[0]


def test_run_read_back_through_the_client(tracking_server, trained):
    client, exp, run = _training_run(tracking_server)
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location  # served by the server
    assert run.info.status == "FINISHED"
    assert run.data.tags["flow"] == "maf" and run.data.tags["dataset"] == "moons"
    history = client.get_metric_history(run.info.run_id, "train_nll")
    assert sorted(m.step for m in history) == [20, 40]
    assert {m.step for m in client.get_metric_history(run.info.run_id, "val_nll")} == {20, 40}
    assert "best_val_nll" in run.data.metrics
    params = run.data.params
    assert params["flow"] == "maf" and params["dataset"] == "moons"
    assert params["hp.num_layers"] == "2" and params["train.steps"] == "40"

    # the artifact went through the server into its --artifacts-destination, and reads back through the client
    listed = [a.path for a in client.list_artifacts(run.info.run_id, "history")]
    assert listed == ["history/maf-moons.csv"], listed
    on_disk = list(tracking_server["artifacts"].rglob("maf-moons.csv"))
    assert len(on_disk) == 1 and run.info.run_id in on_disk[0].parts, on_disk
    local = client.download_artifacts(run.info.run_id, "history/maf-moons.csv", str(trained / "downloaded"))
    assert Path(local).read_text() == (trained / "plots/history/maf-moons.csv").read_text()

    # the stage recorded where it logged, and nothing fell back to a local SQLite store
    config = json.loads((trained / "models/maf-moons/config.json").read_text())
    assert config["metadata"]["mlflow_run_id"] == run.info.run_id
    assert config["metadata"]["mlflow_tracking_uri"] == tracking_server["uri"]
    assert not (trained / "mlflow.db").exists() and not (trained / "mlflow.lock").exists()
    assert not (trained / "mlartifacts").exists() and not (trained / "mlruns").exists()


def test_backend_store_is_postgresql(postgres, tracking_server, trained):
    import psycopg

    _, exp, run = _training_run(tracking_server)
    run_id = run.info.run_id
    # the same role and password over TCP as the server uses: the run's rows are in PostgreSQL's tables
    with psycopg.connect(host="127.0.0.1", port=postgres["port"], user=DB_USER, password=DB_PASSWORD,
                         dbname=DB) as con:
        rows = con.execute("SELECT status, experiment_id FROM runs WHERE run_uuid = %s", (run_id,)).fetchall()
        assert rows == [("FINISHED", int(exp.experiment_id))]
        steps = con.execute("SELECT step FROM metrics WHERE run_uuid = %s AND key = 'train_nll' ORDER BY step",
                            (run_id,)).fetchall()
        assert steps == [(20,), (40,)]
        flow = con.execute("SELECT value FROM tags WHERE run_uuid = %s AND key = 'flow'", (run_id,)).fetchone()
        assert flow == ("maf",)


def test_servers_listen_on_loopback_only(postgres, tracking_server):
    assert _listening_addresses(tracking_server["port"]) == {"127.0.0.1"}
    assert _listening_addresses(postgres["port"]) == {"127.0.0.1"}
