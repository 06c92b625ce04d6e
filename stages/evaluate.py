"""Stage evaluate@<flow>-<dataset>: test log-likelihood of a trained flow (nats; bits/dim for images).

Reads models/<cell>/ and data/processed/<dataset>; writes metrics/eval/<cell>.json and the figures in
plots/figures/<cell>/, and logs both to the training run in MLflow.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common import StageError, atomic_path, cell_name, load_checked_splits, run_main, write_json  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flow", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--model", help="model directory (default models/<flow>-<dataset>)")
    ap.add_argument("--out", help="metrics JSON (default metrics/eval/<flow>-<dataset>.json)")
    ap.add_argument("--figures", help="figure directory (default plots/figures/<flow>-<dataset>)")
    ap.add_argument("--train-metrics", help="the train stage's JSON (default metrics/train/<flow>-<dataset>.json)")
    return ap.parse_args(argv)


def restore(model_dir: Path, splits):
    """Rebuild the flow from its config.json and load its weights; returns (flow, transform, config)."""
    import numpy as np
    import tensorflow as tf

    import flows.datasets as fd
    from flows.experiment import model_for_data

    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        raise StageError(f"{cfg_path} is missing: train first (dvc repro train@{model_dir.name})")
    cfg = json.loads(cfg_path.read_text())
    spec = fd.DATASETS[cfg["dataset"]]
    flow, transform, _ = model_for_data(
        cfg["flow"], cfg["hparams"], spec.kind, spec.event_shape, getattr(spec, "levels", None),
        cfg["train"]["logit_alpha"],
    )
    batch = tf.convert_to_tensor(np.asarray(splits.train[:256]))
    if transform is not None:
        batch, _ = transform(batch, tf.constant([0, 0], tf.int64))
    flow.initialize(batch)  # creates the variables; the checkpoint then overwrites every one of them
    status = tf.train.Checkpoint(flow=flow).read(str(model_dir / "weights"))
    status.assert_existing_objects_matched()
    return flow, transform, cfg


def main(argv=None):
    args = parse_args(argv)
    cell = cell_name(args.flow, args.dataset)
    model_dir = Path(args.model or f"models/{cell}")
    out = Path(args.out or f"metrics/eval/{cell}.json")
    fig_dir = Path(args.figures or f"plots/figures/{cell}")

    import flows.datasets as fd

    if args.dataset not in fd.DATASETS:
        raise StageError(f"dataset {args.dataset!r} is unknown; accepted: {', '.join(sorted(fd.DATASETS))}")
    # the inputs are checked before anything heavy is imported or written
    splits = load_checked_splits(args.dataset)
    if not (model_dir / "config.json").exists():
        raise StageError(f"{model_dir / 'config.json'} is missing: train first (dvc repro train@{model_dir.name})")

    from flows.experiment import bits_per_dim
    from flows.training import evaluate
    from stages import figures, tracking

    flow, transform, cfg = restore(model_dir, splits)
    spec = fd.DATASETS[args.dataset]
    result = evaluate(flow, splits.test, batch_size=cfg["train"].get("eval_batch_size", 4096),
                      transform=transform, seed=cfg["seed"] + 2)
    if not math.isfinite(result["test_ll"]):
        raise StageError(f"{cell}: test log-likelihood is {result['test_ll']} ({result['n_nonfinite']} non-finite rows)")
    metrics = {"flow": args.flow, "dataset": args.dataset, **result, "units": "nats"}
    if spec.kind == "image":
        import numpy as np

        dims = int(np.prod(spec.event_shape))
        metrics["bits_per_dim"] = bits_per_dim(result["test_ll"], dims, spec.levels)
        metrics["bits_per_dim_se"] = result["test_ll_se"] / (dims * math.log(2.0))
        metrics["units"] = "nats (density of dequantised pixels in [0,1]^D); bits/dim of the discrete data"
    if spec.kind == "toy":
        # a divergence to the truth, not only a likelihood: KL(p || q) = E_p[log p - log q], estimated on the test set
        import numpy as np

        from flows.datasets import toy

        true_lp = np.asarray(toy.log_density(args.dataset, np.asarray(splits.test)), dtype=np.float64)
        metrics["true_ll"] = float(np.mean(true_lp))
        metrics["kl_to_truth"] = metrics["true_ll"] - result["test_ll"]
    train_json = Path(args.train_metrics or f"metrics/train/{cell}.json")
    if train_json.exists():
        t = json.loads(train_json.read_text())
        metrics["steps"] = t.get("steps")
        metrics["train_seconds"] = t.get("train_seconds")

    with atomic_path(fig_dir) as tmp:
        tmp.mkdir()
        figures.cell_figures(flow, splits, spec, transform, tmp, seed=cfg["seed"])
    write_json(out, metrics)

    run = tracking.Run(run_id=cfg["mlflow_run_id"]) if cfg.get("mlflow_run_id") else None
    if run is not None:
        run.log_metrics({k: metrics[k] for k in ("test_ll", "test_ll_se", "bits_per_dim", "bits_per_dim_se",
                                                 "true_ll", "kl_to_truth")
                         if k in metrics})
        run.log_artifacts(fig_dir, "figures")
        run.log_artifact(out, "metrics")
    bpd = f", {metrics['bits_per_dim']:.3f} bits/dim" if "bits_per_dim" in metrics else ""
    print(f"{os.environ.get('DVC_STAGE') or 'evaluate@' + cell}: test log-likelihood {result['test_ll']:.4f} +/- {2 * result['test_ll_se']:.4f} nats "
          f"(N={result['n_test']}){bpd}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run_main(main)
