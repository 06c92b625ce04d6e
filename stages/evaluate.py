"""Stage evaluate@<flow>-<dataset>: test log-likelihood of a trained flow (nats; bits/dim for images).

Reads models/<cell>/ (a saved flow) and data/processed/<dataset>; writes metrics/eval/<cell>.json and the
figures in plots/figures/<cell>/, and logs both to the training run in MLflow, with the flow itself as the
run's MLflow 3 LoggedModel ``flow`` (an ``mlflow.pyfunc`` model, :mod:`flows.pyfunc`: per-row log-densities in
nats, samples) whose metrics are the test scores: ``mlflow.pyfunc.load_model("models:/<model_id>")``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common import StageError, atomic_path, cell_name, load_checked_splits, run_main, write_json  # noqa: E402

SCORES = ("test_ll", "test_ll_se", "bits_per_dim", "bits_per_dim_se", "true_ll", "kl_to_truth")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flow", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--model", help="model directory (default models/<flow>-<dataset>)")
    ap.add_argument("--out", help="metrics JSON (default metrics/eval/<flow>-<dataset>.json)")
    ap.add_argument("--figures", help="figure directory (default plots/figures/<flow>-<dataset>)")
    ap.add_argument("--train-metrics", help="the train stage's JSON (default metrics/train/<flow>-<dataset>.json)")
    return ap.parse_args(argv)


def restore(model_dir: Path):
    """(flow, transform, metadata) of a trained cell; a one-line error when it is missing."""
    from flows.experiment import load_for_data

    if not (model_dir / "config.json").exists():
        raise StageError(f"{model_dir / 'config.json'} is missing: train first (dvc repro train@{model_dir.name})")
    return load_for_data(model_dir)


def main(argv=None):
    args = parse_args(argv)
    cell = cell_name(args.flow, args.dataset)
    model_dir, out = Path(args.model or f"models/{cell}"), Path(args.out or f"metrics/eval/{cell}.json")
    fig_dir = Path(args.figures or f"plots/figures/{cell}")
    import flows.datasets as fd

    if args.dataset not in fd.DATASETS:
        raise StageError(f"dataset {args.dataset!r} is unknown; accepted: {', '.join(sorted(fd.DATASETS))}")
    splits = load_checked_splits(args.dataset)  # the inputs are checked before anything heavy is written
    if not (model_dir / "config.json").exists():
        raise StageError(f"{model_dir / 'config.json'} is missing: train first (dvc repro train@{model_dir.name})")
    from flows.experiment import test_scores
    from stages import figures, tracking

    from stages.quiet import announce

    announce(tracking.stage_name("evaluate@" + cell), "evaluating")
    flow, transform, meta = restore(model_dir)
    # the training run is looked up before anything is written: a model trained against another store stops here
    run = tracking.Run(run_id=meta["mlflow_run_id"], retrain=f"dvc repro -f train@{cell}") \
        if meta.get("mlflow_run_id") else None
    metrics = {"flow": args.flow, "dataset": args.dataset,
               **test_scores(flow, splits.test, fd.DATASETS[args.dataset], transform, meta["train"]["eval_batch_size"],
                             seed=meta["seed"] + 2)}
    train_json = Path(args.train_metrics or f"metrics/train/{cell}.json")
    if train_json.exists():
        t = json.loads(train_json.read_text())
        metrics.update(steps=t.get("steps"))  # the wall time is in metrics/timing/ (not a metric)
    with atomic_path(fig_dir) as tmp:
        tmp.mkdir()
        figures.cell_figures(flow, splits, fd.DATASETS[args.dataset], transform, tmp, seed=meta["seed"])
    write_json(out, metrics)
    if run is not None:
        model = run.log_flow_model(model_dir, splits.test[:5], tags={"cell": cell, "dataset": args.dataset})
        run.log_metrics({k: metrics[k] for k in SCORES if k in metrics}, model_id=model.model_id)
        run.log_artifacts(fig_dir, "figures")
        run.log_artifact(out, "metrics")
    bpd = f", {metrics['bits_per_dim']:.3f} bits/dim" if "bits_per_dim" in metrics else ""
    print(f"{tracking.stage_name('evaluate@' + cell)}: test log-likelihood {metrics['test_ll']:.4f} +/- "
          f"{2 * metrics['test_ll_se']:.4f} nats (N={metrics['n_test']}){bpd}")


if __name__ == "__main__":
    run_main(main)
