"""MLflow tracking for the stages: where the store is, one run per training, tags that tie it to git and DVC.

Default store: ``sqlite:///<repo root>/mlflow.db`` with artifacts in ``<repo root>/mlartifacts``.  The repo
root is ``$DVC_ROOT`` when DVC runs the stage: queued and temporary experiments (``dvc exp run --queue``/``--temp``)
run in a copy under ``.dvc/tmp/exps`` but DVC_ROOT still names the original repository, so every run lands in
the one store that ``mlflow ui`` shows.  ``MLFLOW_TRACKING_URI`` overrides the store (e.g. a shared server).
"""

from __future__ import annotations

import fcntl
import functools
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from .common import ROOT

EXPERIMENT_NAME = os.environ.get("FLOWS_MLFLOW_EXPERIMENT", "density-estimation")


def repo_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or ROOT).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


@contextmanager
def store_lock():
    """Serialise writes to a SQLite store across processes (parallel `dvc queue start -j N` workers, several
    stages at once): SQLite allows one writer, and MLflow answers a busy database with "database is locked".
    A server-backed store (MLFLOW_TRACKING_URI=http://...) needs no lock."""
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock_path = Path(uri[len("sqlite:///"):]).with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _locked(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with store_lock():
            return method(*args, **kwargs)

    return wrapper


def _mlflow():
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def experiment_id(mlflow) -> str:
    """The project's MLflow experiment, created on first use with artifacts under the repo root."""
    client = mlflow.tracking.MlflowClient()
    for attempt in range(5):
        exp = client.get_experiment_by_name(EXPERIMENT_NAME)
        if exp is not None:
            return exp.experiment_id
        try:
            location = None
            if tracking_uri().startswith("sqlite:///"):  # artifacts beside the database file
                location = (Path(tracking_uri()[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
            return client.create_experiment(EXPERIMENT_NAME, artifact_location=location)
        except Exception:  # another process created it in between: read it again
            time.sleep(0.2 * (attempt + 1))
    raise RuntimeError(f"could not create or find the MLflow experiment {EXPERIMENT_NAME!r} at {tracking_uri()}")


def git_commit() -> str:
    rev = os.environ.get("DVC_EXP_BASELINE_REV")
    if rev:
        return rev
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=ROOT)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(stage: str, **extra) -> dict:
    tags = {
        "git_commit": git_commit(),
        "dvc_stage": os.environ.get("DVC_STAGE") or stage,
        "dvc_experiment": os.environ.get("DVC_EXP_NAME") or "workspace",
    }
    tags.update({k: str(v) for k, v in extra.items()})
    return tags


def flatten(d: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become their string form (MLflow params are strings)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if not isinstance(v, (list, tuple)) else str(list(v))
    return out


class Run:
    """A thin handle on one MLflow run, started fresh or resumed by id."""

    @_locked
    def __init__(self, run_id: str | None = None, name: str | None = None, tags: dict | None = None,
                 retrain: str = ""):
        """A new run (``name``, ``tags``), or the existing run ``run_id``: a ``StageError`` if the store lacks it
        (a model trained against another store), whose message ends with ``retrain`` (the command that would
        make a run here)."""
        self.mlflow = _mlflow()
        self.client = self.mlflow.tracking.MlflowClient()
        if run_id is None:
            run = self.client.create_run(experiment_id(self.mlflow), tags=tags or {}, run_name=name)
            self.run_id = run.info.run_id
        else:
            self._check_exists(run_id, retrain)
            self.run_id = run_id
            if tags:
                for k, v in tags.items():
                    self.client.set_tag(run_id, k, v)

    def _check_exists(self, run_id: str, retrain: str):
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            from .common import StageError

            raise StageError(f"MLflow run {run_id} (the training run recorded with the model) is not in the "
                             f"tracking store {tracking_uri()}: set MLFLOW_TRACKING_URI to the store it was "
                             f"trained with{', or retrain: ' + retrain if retrain else ''}") from None

    @_locked
    def log_params(self, params: dict):
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    @_locked
    def log_metric(self, key: str, value: float, step: int = 0):
        self.client.log_metric(self.run_id, key, float(value), step=int(step))

    @_locked
    def log_metrics(self, metrics: dict, step: int = 0, model_id: str | None = None):
        """Log ``metrics`` at ``step``; ``model_id`` links them to a LoggedModel of this run as well."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step), model_id=model_id) for k, v in metrics.items() if v is not None]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    @_locked
    def log_artifact(self, path, artifact_path: str | None = None):
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    @_locked
    def log_artifacts(self, path, artifact_path: str | None = None):
        self.client.log_artifacts(self.run_id, str(path), artifact_path)

    @_locked
    def log_flow_model(self, model_dir, input_rows, name: str = "flow", tags: dict | None = None):
        """Log the saved flow ``model_dir`` as this run's LoggedModel ``name`` (:func:`flows.pyfunc.log_flow_model`);
        the run's status and end time are kept.  Returns the ``ModelInfo`` (``model_id``)."""
        from flows.pyfunc import log_flow_model

        run = self.client.get_run(self.run_id)
        with self.mlflow.start_run(run_id=self.run_id):
            info = log_flow_model(model_dir, input_rows, name=name, tags=tags)
        if run.info.status != "RUNNING":  # start_run/end_run marked it again: put back what training recorded
            self.client.set_terminated(self.run_id, status=run.info.status, end_time=run.info.end_time)
        return info

    @_locked
    def finish(self, status: str = "FINISHED"):
        self.client.set_terminated(self.run_id, status=status)

    @property
    def uri(self) -> str:
        return tracking_uri()


#: the Model Registry alias of each data set's best flow
BEST_ALIAS = "best"


@_locked
def logged_flow_model(run_id: str, digest: str, name: str = "flow"):
    """The newest LoggedModel ``name`` of the training run ``run_id`` whose tag ``content_hash`` is ``digest``
    (what the evaluate stage logged for that saved flow), or None."""
    mlflow = _mlflow()
    models = mlflow.search_logged_models(experiment_ids=[experiment_id(mlflow)],
                                         filter_string=f"source_run_id = '{run_id}'", output_format="list",
                                         order_by=[{"field_name": "creation_time", "ascending": False}])
    return next((m for m in models if m.name == name and m.tags.get("content_hash") == digest), None)


@_locked
def register_best(name: str, model, digest: str, alias: str = BEST_ALIAS) -> tuple[str, bool]:
    """Point ``alias`` of the registered model ``name`` (created if needed) at the version of the LoggedModel
    ``model`` whose tag ``content_hash`` is ``digest``: an existing version with that hash is reused (a rerun
    adds no duplicate), else a new version is created.  Returns (version, whether it was created)."""
    from mlflow.exceptions import MlflowException

    mlflow = _mlflow()
    client = mlflow.tracking.MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="The flow of this data set with the highest test "
                                       f"log-likelihood (nats); alias @{alias} (stages/report.py)")
    same = sorted((v for v in client.search_model_versions(f"name = '{name}'")
                   if v.tags.get("content_hash") == digest), key=lambda v: int(v.version))
    created = not same
    if created:
        version = client.create_model_version(name, f"models:/{model.model_id}", run_id=model.source_run_id,
                                              tags={"content_hash": digest, **{k: model.tags[k] for k in ("cell",)
                                                                               if k in model.tags}},
                                              model_id=model.model_id).version
    else:
        version = same[0].version
    client.set_registered_model_alias(name, alias, version)
    return str(version), created


#: seconds between two samples of the system metrics (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it)
SYSTEM_METRICS_INTERVAL = 10


@contextmanager
def system_metrics(run: "Run | None", interval: float = SYSTEM_METRICS_INTERVAL):
    """MLflow's system metrics (``system/cpu_utilization_percentage``, memory, disk, network, GPU where there is
    one) logged to ``run`` every ``interval`` seconds while the block runs; stopped however it ends.  ``run``
    None (a non-chief worker): nothing."""
    if run is None:
        yield
        return
    import logging

    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    for name in ("mlflow.system_metrics", "mlflow.utils.autologging_utils"):
        logging.getLogger(name).setLevel(logging.WARNING)  # its "Started monitoring ..." INFO lines
    monitor = SystemMetricsMonitor(run.run_id, sampling_interval=interval, tracking_uri=run.uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def device_name(strategy=None) -> str:
    """The devices a training run uses, in words (the MLflow tag ``device``)."""
    import platform

    import tensorflow as tf

    from flows.training import worker_task

    from stages.quiet import start_tensorflow

    gpus = tf.config.list_logical_devices("GPU")
    cpu = start_tensorflow() if not gpus else f"CPU ({platform.machine() or platform.processor()})"
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        local = f"{len(gpus)} GPUs" if gpus else cpu
        return (f"{strategy.num_replicas_in_sync} replicas (MultiWorkerMirroredStrategy, "
                f"{worker_task(strategy)[2]} workers; chief: {local})")
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        return f"{strategy.num_replicas_in_sync} GPUs ({type(strategy).__name__}: {', '.join(g.name for g in gpus)})"
    return gpus[0].name if gpus else cpu


def stage_name(default: str) -> str:
    """The DVC stage running this process (``$DVC_STAGE``), else ``default``."""
    return os.environ.get("DVC_STAGE") or default
