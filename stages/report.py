"""Stage report: the results table of the grid beside the published numbers (CSV and Markdown) and its figure;
logged as its own MLflow run.  The default pipeline writes metrics/results.{csv,md} and plots/results.png; the
paper pipeline (paper/dvc.yaml) passes --params params-paper.yaml and writes metrics/paper/ and plots/paper/.

The best flow of each data set (highest test log-likelihood) is registered in the MLflow Model Registry as
``<prefix><dataset>`` (default ``density-<dataset>``; the paper pipeline: ``paper-density-<dataset>``) with the
alias ``@best`` pointing at it: ``mlflow.pyfunc.load_model("models:/density-moons@best")``.  Each version carries
the content hash of the saved flow's directory, so a rerun moves the alias and reuses the version of an
unchanged flow instead of adding a duplicate."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common import StageError, atomic_path, cell_name, flow_of, load_params, params_arg, run_main  # noqa: E402

COLUMNS = ["flow", "dataset", "test_ll", "test_ll_se", "bits_per_dim", "kl_to_truth", "n_test", "steps", "train_seconds",
           "published", "published_pm", "published_model", "published_units", "diff_in_se"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    params_arg(ap)
    ap.add_argument("--metrics", default="metrics", help="directory with eval/ (in) and results.csv/md (out)")
    ap.add_argument("--plot", default="plots/results.png", help="the figure (default plots/results.png)")
    ap.add_argument("--name", default="report", help="the MLflow run's name")
    ap.add_argument("--paper", action="store_true", help="the paper-scale table's title and notes")
    ap.add_argument("--budgets", help="YAML of each published row's training budget (paper/budgets.yaml)")
    ap.add_argument("--timing", help="directory of the train stages' wall times (default <metrics>/timing)")
    ap.add_argument("--models", default="models", help="directory of the saved flows (default models)")
    ap.add_argument("--registry-prefix", default="density-",
                    help="registered model name of a data set's best flow: <prefix><dataset> (default density-)")
    return ap.parse_args(argv)


def collect(params, metrics_dir: Path, timing_dir: Path | None = None) -> list[dict]:
    """One row per cell: our test log-likelihood (nats, +/- se), the published number with its +/- (2 se) where
    the paper reports one, and the difference in combined standard errors: (ours - published) / sqrt(se_ours^2 +
    se_published^2), se_published = (+/-) / 2 (only our se when the paper gives no +/-).  ``train_seconds``
    comes from ``timing_dir`` (default ``<metrics_dir>/timing``; empty where a cell has no timing file)."""
    from flows.published import lookup

    rows = []
    for flow in params["grid"]["flows"]:
        for dataset in params["grid"]["datasets"]:
            path = metrics_dir / "eval" / f"{cell_name(flow, dataset)}.json"
            if not path.exists():
                raise StageError(f"{path} is missing: evaluate first (dvc repro evaluate@{cell_name(flow, dataset)})")
            m = json.loads(path.read_text())
            timing = (timing_dir or metrics_dir / "timing") / f"{cell_name(flow, dataset)}.json"
            if timing.exists():
                m["train_seconds"] = json.loads(timing.read_text()).get("train_seconds")
            row = {k: m.get(k, "") for k in COLUMNS}
            pub = lookup(flow_of(params, flow), dataset, params["flows"][flow])
            if pub:
                label, value, pm, units = pub
                row.update(published=value, published_pm="" if pm is None else pm, published_model=label,
                           published_units=units)
                ours, se = (m.get("bits_per_dim"), m.get("bits_per_dim_se")) if units == "bits/dim" else (
                    m["test_ll"], m["test_ll_se"])
                if ours is not None and se:
                    row["diff_in_se"] = round((ours - value) / math.hypot(se, (pm or 0.0) / 2), 2)
            rows.append(row)
    return rows


def _fmt(v, digits=3):
    if v == "" or v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else str(v)
    return str(v)


HEADER = [
    "Test log-likelihood in **nats** per example (higher is better), +/- 2 standard errors (2 std / sqrt(N)),",
    "as the papers print it.  Images also in **bits/dim** (lower is better).  `published` is the paper's number for",
    "the matching architecture (flows/published.py: MAF, NSF, FFJORD, NAF papers) with its +/-; `se` after it is",
    "(ours - published) in combined standard errors, sqrt(se_ours^2 + se_published^2) (>= -2: within the paper's",
    "noise or better).",
]
DEFAULT_NOTE = [
    "The default params.yaml trains laptop-sized models for minutes, so it is not expected to reach the papers:",
    "the paper-scale table is [metrics/paper/results.md](paper/results.md) (`dvc repro paper/dvc.yaml`).",
    "For 2-D toy sets, `KL` is KL(truth || model) = E[log p - log q] in nats,",
    "estimated on the test set with the true density (0 is perfect).  Regenerated by `dvc repro`.",
]


def budget(row, budgets: dict) -> str:
    """Our budget beside the paper's: steps done (of the paper's, where it gives a step count, with the time the
    paper's budget would take at our measured speed)."""
    paper = budgets.get(row.get("published_model"), {})
    text = f"{int(row['steps']):,} steps" if row["steps"] not in ("", None) else ""
    if paper.get("steps") and row["steps"] and row["train_seconds"]:
        hours = float(row["train_seconds"]) / float(row["steps"]) * paper["steps"] / 3600
        text += f" of the paper's {paper['steps']:,} ({hours:.1f} h for all at our speed)"
    return text


def to_markdown(rows, title="Results", note=DEFAULT_NOTE, budgets=None) -> str:
    extra = budgets is not None
    lines = [f"# {title}", "", *HEADER, *note, "",
             "| flow | dataset | test LL (nats) | bits/dim | KL (nats) | published | N test | steps | train s |"
             + (" budget (ours; the paper's below) |" if extra else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if extra else "")]
    for r in rows:
        ll = f"{_fmt(r['test_ll'])} ± {_fmt(2 * r['test_ll_se'])}" if r["test_ll"] != "" else ""
        pub = "–"
        if r["published"] != "":
            pm = f" ± {r['published_pm']}" if r["published_pm"] != "" else ""
            pub = f"{r['published']}{pm} {r['published_units']} ({r['published_model']})"
        if r["diff_in_se"] != "":
            pub += f", {r['diff_in_se']:+.1f} se"
        lines.append(
            f"| {r['flow']} | {r['dataset']} | {ll} | {_fmt(r['bits_per_dim'])} | {_fmt(r['kl_to_truth'])} | {pub} | "
            f"{r['n_test']} | {r['steps']} | {_fmt(r['train_seconds'], 1)} |" + (f" {budget(r, budgets)} |" if extra else "")
        )
    if extra:
        used = list(dict.fromkeys(r["published_model"] for r in rows if r["published_model"] in budgets))
        lines += ["", "The papers' budgets:", ""] + [f"- {m}: {budgets[m]['rule']}" for m in used]
    return "\n".join(lines) + "\n"


def figure(rows, path: Path):
    """One panel per data set: each cell a point with its +/- 2 se bar (nats, higher is better: right), the
    published value beside it (a hollow diamond with its +/-) where a paper reports one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 0.45 * max(
        sum(r["dataset"] == d for r in rows) for d in datasets) + 1.5), constrained_layout=True, squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        sub = [r for r in rows if r["dataset"] == ds]
        ys = range(len(sub))
        ax.errorbar([r["test_ll"] for r in sub], ys, xerr=[2 * r["test_ll_se"] for r in sub], fmt="o",
                    color="tab:blue", capsize=3, label="ours (± 2 se)")
        pubs = [(i, r) for i, r in enumerate(sub) if r["published"] != "" and r["published_units"] == "nats"]
        if pubs:
            ax.errorbar([r["published"] for _, r in pubs], [i + 0.25 for i, _ in pubs],
                        xerr=[r["published_pm"] or 0.0 for _, r in pubs], fmt="D", mfc="none", color="black",
                        capsize=3, label="published")
        ax.set_yticks(list(ys), [r["flow"] for r in sub])
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("test log-likelihood (nats per example; higher is better)")
        ax.set_title(ds)
        ax.legend(loc="lower left", fontsize=7)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    params = load_params(args.params)
    metrics_dir = Path(args.metrics)
    rows = collect(params, metrics_dir, Path(args.timing) if args.timing else None)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    outputs = (metrics_dir / "results.csv", metrics_dir / "results.md", Path(args.plot))
    title, note = ("Results at paper scale", PAPER_NOTE) if args.paper else ("Results", DEFAULT_NOTE)
    budgets = None
    if args.budgets:
        import yaml

        budgets = yaml.safe_load(Path(args.budgets).read_text()) or {}
    # all three are written to temporary files first and renamed only once every one is complete, so an
    # unwritable directory (or a failing figure) leaves none of them half-updated
    with ExitStack() as stack:
        csv_tmp, md_tmp, png_tmp = (stack.enter_context(atomic_path(p)) for p in outputs)
        csv_tmp.write_text(buf.getvalue())
        md_tmp.write_text(to_markdown(rows, title, note, budgets))
        figure(rows, png_tmp)
        # each data set's best flow must have its LoggedModel: checked here, after the outputs were found
        # writable and before any of them is renamed into place
        best = best_models(rows, Path(args.models))

    from stages import tracking

    run = tracking.Run(name=args.name, tags=tracking.run_tags(args.name, kind="report"))
    run.log_params({"grid": params["grid"], "seed": params["seed"], "params_file": args.params})
    for r in rows:
        run.log_metric(f"test_ll.{cell_name(r['flow'], r['dataset'])}", r["test_ll"])
    for p in outputs:
        run.log_artifact(p, "report")
    run.finish()
    print(f"{args.name}: {len(rows)} cells -> {outputs[0]}, {outputs[1]}")
    for dataset, (cell, model, digest) in best.items():
        name = f"{args.registry_prefix}{dataset}"
        version, created = tracking.register_best(name, model, digest)
        print(f"{args.name}: {name}@{tracking.BEST_ALIAS} -> version {version} ({cell}, "
              f"{'new' if created else 'unchanged flow, version reused'})")


def best_models(rows, models_dir: Path) -> dict:
    """{dataset: (cell, LoggedModel, content hash)} of the flow with the highest test log-likelihood of each data
    set; a one-line StageError when its saved flow or its LoggedModel (logged by the evaluate stage) is missing."""
    from flows.io import read_config
    from flows.pyfunc import content_hash

    from stages import tracking

    out = {}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        row = max((r for r in rows if r["dataset"] == dataset), key=lambda r: r["test_ll"])
        cell = cell_name(row["flow"], dataset)
        model_dir = models_dir / cell
        if not (model_dir / "config.json").exists():
            raise StageError(f"{model_dir / 'config.json'} is missing: train first (dvc repro train@{cell})")
        run_id, digest = read_config(model_dir)["metadata"].get("mlflow_run_id"), content_hash(model_dir)
        model = tracking.logged_flow_model(run_id, digest) if run_id else None
        if model is None:
            raise StageError(f"{model_dir} (MLflow run {run_id}) has no LoggedModel 'flow' in {tracking.tracking_uri()}: "
                             f"evaluate it again (dvc repro -f evaluate@{cell}) to log it")
        out[dataset] = (cell, model, digest)
    return out


PAPER_NOTE = [
    "The paper pipeline: params-paper.yaml, regenerated by `dvc repro paper/dvc.yaml`.  `steps` is the budget each",
    "cell trained for (see the params file for each paper's own budget and where our recipe differs).",
]


if __name__ == "__main__":
    run_main(main)
