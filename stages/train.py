"""Stage train@<flow>-<dataset>: fit one flow to one prepared data set, as one MLflow run.

Reads params.yaml (seed, flows.<flow>, datasets.<dataset>.train) and data/processed/<dataset>; writes
models/<cell>/ (weights and config), plots/history/<cell>.csv and metrics/train/<cell>.json.

While it trains, checkpoints go to checkpoints/<cell>/ (not a DVC output, git-ignored), so a stage killed at
any moment and run again (``dvc repro``) resumes there and ends with the same numbers; the directory is
deleted once the outputs are written. A checkpoint written with other settings (params, data) is discarded.

With ``TF_CONFIG`` naming a cluster of several workers (README: "Multi-worker training") every worker runs this
same command and trains under ``MultiWorkerMirroredStrategy``; only the chief writes the outputs and checkpoints
and logs to MLflow, the other workers train alongside and exit 0 without writing anything in the repository.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import platform
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common import (  # noqa: E402
    ParamsError,
    StageError,
    atomic_path,
    cell_name,
    cell_settings,
    is_stamped,
    load_checked_splits,
    load_params,
    processed_dir,
    reset_unless_stamped,
    run_main,
    write_json,
)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flow", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--out", help="model directory (default models/<flow>-<dataset>)")
    ap.add_argument("--history", help="history CSV (default plots/history/<flow>-<dataset>.csv)")
    ap.add_argument("--metrics", help="training metrics JSON (default metrics/train/<flow>-<dataset>.json)")
    ap.add_argument("--stage", help="DVC stage name, for the MLflow tag")
    ap.add_argument("--checkpoints", help="checkpoint directory (default checkpoints/<name of the model directory>)")
    return ap.parse_args(argv)


def check_choice(params, flow, dataset):
    import flows
    import flows.datasets as fd

    if flow not in flows.FLOWS:
        raise ParamsError(f"flow = {flow!r} is invalid: accepted flows: {', '.join(sorted(flows.FLOWS))}")
    if dataset not in fd.DATASETS:
        raise ParamsError(f"dataset = {dataset!r} is invalid: accepted datasets: {', '.join(sorted(fd.DATASETS))}")


def load_data(dataset):
    path = processed_dir(dataset)
    if not (path / "manifest.json").exists():
        raise StageError(
            f"{path} is missing: only the data sets in params.yaml's grid.datasets are prepared; "
            f"add {dataset!r} there (then dvc repro prepare@{dataset})"
        )
    return load_checked_splits(dataset)  # present, of the data set's event shape, finite


def device_name(strategy=None) -> str:
    import tensorflow as tf

    from flows.training import worker_task

    gpus = tf.config.list_logical_devices("GPU")
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        local = f"{len(gpus)} GPUs" if gpus else f"CPU ({platform.processor() or platform.machine()})"
        return (f"{strategy.num_replicas_in_sync} replicas (MultiWorkerMirroredStrategy, "
                f"{worker_task(strategy)[2]} workers; chief: {local})")
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        return f"{strategy.num_replicas_in_sync} GPUs ({type(strategy).__name__}: {', '.join(g.name for g in gpus)})"
    return gpus[0].name if gpus else f"CPU ({platform.processor() or platform.machine()})"


def prepare_checkpoints(path: Path, fingerprint: dict) -> str | None:
    """Keep ``path`` only if it was written by a run with the same ``fingerprint``; returns the checkpoint that
    training will resume from (None: a fresh start)."""
    import tensorflow as tf

    reset_unless_stamped(path, path / "fingerprint.json", fingerprint, "checkpoints written")
    return tf.train.latest_checkpoint(str(path))


def data_fingerprint(dataset) -> str:
    manifest = processed_dir(dataset) / "manifest.json"
    return hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.exists() else ""


def worker_resume_dir(path: Path, fingerprint: dict) -> str:
    """A non-chief worker's view of the chief's checkpoint directory, read-only: ``path`` when it holds a stamp
    of the same settings (a shared file system), otherwise a new empty temporary directory (a fresh start)."""
    import tempfile

    if is_stamped(path / "fingerprint.json", fingerprint):
        return str(path)
    return tempfile.mkdtemp(prefix="flows-worker-resume-")


def main(argv=None):
    args = parse_args(argv)
    params = load_params()
    check_choice(params, args.flow, args.dataset)
    cell = cell_name(args.flow, args.dataset)
    out = Path(args.out or f"models/{cell}")
    history_path = Path(args.history or f"plots/history/{cell}.csv")
    metrics_path = Path(args.metrics or f"metrics/train/{cell}.json")

    import tensorflow as tf

    from flows.training import TrainConfig, fit, is_chief, pick_strategy, set_seed

    # first of all TensorFlow: MultiWorkerMirroredStrategy (TF_CONFIG) must exist before the runtime starts.
    # Several GPUs: MirroredStrategy; otherwise the default (one device)
    strategy = pick_strategy()
    chief = is_chief(strategy)

    import flows.datasets as fd
    from flows.experiment import model_for_data
    from stages import tracking

    splits = load_data(args.dataset)
    spec = fd.DATASETS[args.dataset]
    hparams, train_cfg = cell_settings(params, args.flow, args.dataset)
    alpha = train_cfg.pop("logit_alpha")
    config = TrainConfig(seed=params["seed"], **train_cfg)

    ckpt_dir = Path(args.checkpoints or f"checkpoints/{out.name}")
    fingerprint = {"flow": args.flow, "dataset": args.dataset, "seed": params["seed"], "hparams": hparams,
                   "train": {**train_cfg, "logit_alpha": alpha}, "data": data_fingerprint(args.dataset)}
    if chief:
        resume_from = prepare_checkpoints(ckpt_dir, fingerprint)
        fit_ckpt_dir = ckpt_dir
    else:  # writes nothing here: resumes from the chief's checkpoints if it sees them, saves to a temporary dir
        fit_ckpt_dir = Path(worker_resume_dir(ckpt_dir, fingerprint))
        resume_from = None

    if config.mixed_precision:
        import tf_keras as keras

        keras.mixed_precision.set_global_policy("mixed_float16")  # layers that follow the global policy
    if tf.config.list_logical_devices("GPU"):
        # CPU kernels are deterministic already (a resumed run matches bitwise); GPU reductions need this
        config.deterministic = True
    set_seed(params["seed"])
    with strategy.scope():
        flow, transform, model_shape = model_for_data(
            args.flow, hparams, spec.kind, spec.event_shape, getattr(spec, "levels", None), alpha
        )
    stage = args.stage or f"train@{cell}"
    if not chief:
        return train_worker(flow, splits, config, transform, fit_ckpt_dir, ckpt_dir, strategy, stage)
    extra_tags = {"resumed_from": resume_from} if resume_from else {}
    run = tracking.Run(
        name=cell,
        tags=tracking.run_tags(stage, flow=args.flow, dataset=args.dataset, kind=spec.kind,
                               device=device_name(strategy), **extra_tags),
    )
    run.log_params(
        {
            "flow": args.flow,
            "dataset": args.dataset,
            "seed": params["seed"],
            "hp": hparams,
            "train": {**train_cfg, "logit_alpha": alpha},
            "data": params["datasets"][args.dataset]["data"],
            "n_train": len(splits.train),
            "model_shape": list(model_shape),
        }
    )
    try:
        history = fit(
            flow,
            splits.train,
            splits.val,
            config,
            transform=transform,
            on_eval=lambda step, tr, va: run.log_metrics({"train_nll": tr, "val_nll": va}, step=step),
            checkpoint_dir=fit_ckpt_dir,
            strategy=strategy,
        )
    except BaseException:
        run.finish("FAILED")
        raise

    with atomic_path(out) as tmp:
        tmp.mkdir()
        tf.train.Checkpoint(flow=flow).write(str(tmp / "weights"))
        write_json(
            tmp / "config.json",
            {
                "flow": args.flow,
                "dataset": args.dataset,
                "hparams": hparams,
                "train": {**train_cfg, "logit_alpha": alpha},
                "seed": params["seed"],
                "model_shape": list(model_shape),
                "mlflow_run_id": run.run_id,
                "mlflow_tracking_uri": run.uri,
            },
        )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["step", "train_loss", "val_loss", "seconds"])
    writer.writeheader()
    writer.writerows(history.rows())
    with atomic_path(history_path) as tmp:
        tmp.write_text(buf.getvalue())
    train_metrics = {
        "best_step": history.best_step,
        "best_val_nll": history.best_val_loss,
        "steps": history.steps_done,
        "stopped_early": history.stopped_early,
        "train_seconds": round(history.train_seconds, 3),
        "resumed_from_step": history.resumed_from,
        "units": "nats per example (images: of the dequantised data in [0,1]^D)",
    }
    write_json(metrics_path, train_metrics)
    run.log_metrics({"train_seconds": history.train_seconds, "best_val_nll": history.best_val_loss,
                     "best_step": history.best_step})
    run.log_artifact(history_path, "history")
    run.finish()
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # the outputs are written: nothing left to resume
    try:
        ckpt_dir.parent.rmdir()  # checkpoints/ itself, once no other cell is training
    except OSError:
        pass
    print(f"{stage}: best validation NLL {history.best_val_loss:.4f} nats at step {history.best_step}, "
          f"{history.train_seconds:.1f} s; MLflow run {run.run_id}")


def train_worker(flow, splits, config, transform, fit_ckpt_dir, ckpt_dir, strategy, stage):
    """A non-chief worker of a multi-worker run: the same training (its collectives pair with the chief's), no
    MLflow run, no outputs; the weights are written (every worker must call save) to a deleted temporary dir."""
    import tempfile

    import tensorflow as tf

    from flows.training import fit

    try:
        history = fit(flow, splits.train, splits.val, config, transform=transform, checkpoint_dir=fit_ckpt_dir,
                      strategy=strategy)
        tmp = tempfile.mkdtemp(prefix="flows-worker-model-")
        try:
            tf.train.Checkpoint(flow=flow).write(str(Path(tmp) / "weights"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if Path(fit_ckpt_dir) != ckpt_dir:  # the empty directory of a fresh start
            shutil.rmtree(fit_ckpt_dir, ignore_errors=True)
    print(f"{stage} (worker {strategy.cluster_resolver.task_type}:{strategy.cluster_resolver.task_id}): best "
          f"validation NLL {history.best_val_loss:.4f} nats at step {history.best_step}; the chief writes the outputs")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run_main(main)
