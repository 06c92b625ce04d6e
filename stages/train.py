"""Stage train@<flow>-<dataset>: fit one flow to one prepared data set, as one MLflow run.

Reads params.yaml (seed, flows.<flow>, datasets.<dataset>) and data/processed/<dataset>; writes models/<cell>/
(a saved flow, :func:`flows.save`), plots/history/<cell>.csv, metrics/train/<cell>.json (nats per example) and
metrics/timing/<cell>.json (wall time: kept out of the metrics that ``dvc exp show`` compares).  MLflow's system
metrics (CPU, memory, GPU) are logged to the run while it trains.

Checkpoints go to checkpoints/<cell>/ (git-ignored), so a stage killed at any moment and run again resumes there
and ends with the same numbers; a checkpoint written with other settings is discarded.  With ``TF_CONFIG``
naming several workers (README: "Multi-worker training") every worker runs this command; only the chief writes
outputs, checkpoints and the MLflow run.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common import (  # noqa: E402
    cell_name, cell_settings, data_fingerprint, flow_of, load_checked_splits, load_params, params_arg,
    prepare_checkpoints, run_main, worker_resume_dir, write_history, write_json,
)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flow", required=True, help="a flow, or a named configuration of params' flows section")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--out", help="model directory (default models/<flow>-<dataset>)")
    ap.add_argument("--history", help="history CSV (default plots/history/<flow>-<dataset>.csv)")
    ap.add_argument("--metrics", help="training metrics JSON (default metrics/train/<flow>-<dataset>.json)")
    ap.add_argument("--timing", help="wall-time JSON, not a metric (default metrics/timing/<flow>-<dataset>.json)")
    ap.add_argument("--stage", help="DVC stage name, for the MLflow tag")
    ap.add_argument("--checkpoints", help="checkpoint directory (default checkpoints/<name of the model directory>)")
    params_arg(ap)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    params = load_params(args.params)
    hparams, config = cell_settings(params, args.flow, args.dataset)  # refuses an unknown flow or data set
    flow_name = flow_of(params, args.flow)  # the registered flow of a named configuration (maf10 -> maf)
    cell, seed = cell_name(args.flow, args.dataset), params["seed"]
    out, stage = Path(args.out or f"models/{cell}"), args.stage or f"train@{cell}"
    import tensorflow as tf

    import flows.datasets as fd
    from flows.experiment import model_for_data, save_for_data
    from flows.training import fit, is_chief, pick_strategy, set_seed
    from stages import tracking

    strategy = pick_strategy()  # first TensorFlow call: a multi-worker strategy must exist before the runtime
    chief, spec = is_chief(strategy), fd.DATASETS[args.dataset]
    print(f"{stage}: training on {tracking.device_name(strategy)}", flush=True)
    splits = load_checked_splits(args.dataset)
    train = {k: v for k, v in dataclasses.asdict(config).items() if k != "seed"}
    ckpt_dir = Path(args.checkpoints or f"checkpoints/{out.name}")
    fingerprint = {"flow": args.flow, "model": flow_name, "dataset": args.dataset, "seed": seed, "hparams": hparams,
                   "train": train, "data": data_fingerprint(args.dataset)}
    resume = prepare_checkpoints(ckpt_dir, fingerprint) if chief else None
    fit_dir = ckpt_dir if chief else Path(worker_resume_dir(ckpt_dir, fingerprint))  # a worker writes nothing here
    if config.mixed_precision:
        import tf_keras as keras

        keras.mixed_precision.set_global_policy("mixed_float16")
    if tf.config.list_logical_devices("GPU") or config.deterministic:
        tf.config.experimental.enable_op_determinism()  # GPU reductions need it; CPU kernels are deterministic
    set_seed(seed)  # before the flow is built: building draws its initial weights
    with strategy.scope():
        flow, transform, model_shape = model_for_data(flow_name, hparams, spec.kind, spec.event_shape,
                                                      spec.levels, config.logit_alpha)
    run = tracking.Run(name=cell, tags=tracking.run_tags(stage, flow=args.flow, dataset=args.dataset, kind=spec.kind,
                                                         device=tracking.device_name(strategy),
                                                         **({"resumed_from": resume} if resume else {}))) if chief else None
    if run:
        run.log_params({"flow": args.flow, "model": flow_name, "dataset": args.dataset, "seed": seed, "hp": hparams, "train": train,
                        "data": params["datasets"][args.dataset]["data"], "n_train": len(splits.train),
                        "model_shape": list(model_shape)})
    try:
        with tracking.system_metrics(run):  # CPU, memory, disk, GPU of the run, every 10 s; stopped on failure
            history = fit(flow, splits.train, splits.val, config, transform=transform, checkpoint_dir=fit_dir,
                          strategy=strategy,
                          on_eval=run and (lambda step, tr, va: run.log_metrics({"train_nll": tr, "val_nll": va}, step)))
    except BaseException:
        if run:
            run.finish("FAILED")
        raise
    finally:
        if not chief and fit_dir != ckpt_dir:
            shutil.rmtree(fit_dir, ignore_errors=True)
    if not chief:  # every worker must save (collectives); only the chief keeps what it writes
        with tempfile.TemporaryDirectory(prefix="flows-worker-model-") as tmp:
            save_for_data(flow, Path(tmp) / "model", args.dataset, transform)
        return print(f"{stage} (worker {strategy.cluster_resolver.task_type}:{strategy.cluster_resolver.task_id}): "
                     f"best validation NLL {history.best_val_loss:.4f} nats; the chief writes the outputs")
    save_for_data(flow, out, args.dataset, transform, name=args.flow, train=train, seed=seed, mlflow_run_id=run.run_id,
                  mlflow_tracking_uri=run.uri)
    write_history(Path(args.history or f"plots/history/{cell}.csv"), history)
    metrics_path = Path(args.metrics or f"metrics/train/{cell}.json")
    write_json(metrics_path, {"best_step": history.best_step, "best_val_nll": history.best_val_loss,
                              "steps": history.steps_done, "stopped_early": history.stopped_early,
                              "units": "nats per example (images: of the dequantised data in [0,1]^D)"})
    # jit_compile, matmul_dtype and batch_shards as run (params "auto" resolved by a measurement:
    # flows.training.pick_jit) and that measurement
    jit_ms = {f"jit_auto_{k}_ms_per_step": round(1e3 * v, 4) for k, v in history.jit_timing.items() if k != "margin"}
    write_json(Path(args.timing or f"metrics/timing/{cell}.json"),  # differs from run to run: not a DVC metric
               {"train_seconds": round(history.train_seconds, 3), "resumed_from_step": history.resumed_from,
                "jit_compile": history.jit_compile, "matmul_dtype": history.matmul_dtype,
                "batch_shards": history.batch_shards, **jit_ms})
    run.log_metrics({"train_seconds": history.train_seconds, "best_val_nll": history.best_val_loss,
                     "best_step": history.best_step, **jit_ms})
    run.log_params({"jit_compile_as_run": history.jit_compile, "matmul_dtype_as_run": history.matmul_dtype,
                    "batch_shards_as_run": history.batch_shards})
    run.log_artifact(Path(args.history or f"plots/history/{cell}.csv"), "history")
    run.finish()
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # the outputs are written: nothing left to resume
    if ckpt_dir.parent.exists() and not any(ckpt_dir.parent.iterdir()):
        ckpt_dir.parent.rmdir()  # checkpoints/ itself, once no other cell is training
    print(f"{stage}: best validation NLL {history.best_val_loss:.4f} nats at step {history.best_step}, "
          f"{history.train_seconds:.1f} s; MLflow run {run.run_id}")


if __name__ == "__main__":
    run_main(main)
