"""Stage overview: the figures across cells, written to plots/overview/ and logged to the MLflow run "figures".

* ``toy_overview.png``: learned density of every grid flow on every 2-D toy set of the grid, under the truth.
* ``realnvp_layers.gif`` (and ``<flow>_layers.gif`` for the other flows that sample): base samples pushed
  layer by layer through the trained flow on the first toy set of the grid.
* ``energies.png``: reverse-KL fits of planar and radial flows to U1..U4 (Rezende & Mohamed 2015, Fig. 3).
* ``overview.json``: the numbers behind them (mean |p - q| per cell, final KL(q || p) per fit, nats, seconds).

Reads params.yaml (``grid``, ``seed``), models/<flow>-<toy set>/ and data/processed/<toy set>/.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common import (  # noqa: E402
    StageError, atomic_path, cell_name, load_checked_splits, load_params, run_main, write_json,
)

#: the GIF every run writes (the paper figure of the seed project); other flows get one when they can sample
ANIMATED = "realnvp"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="plots/overview", help="output directory (default plots/overview)")
    ap.add_argument("--models", default="models", help="directory of the trained cells (default models)")
    ap.add_argument("--energy-layers", type=int, default=16, help="K of the planar / radial energy fits")
    ap.add_argument("--energy-steps", type=int, default=500, help="Adam steps per energy fit")
    ap.add_argument("--all-gifs", action=argparse.BooleanOptionalAction, default=True,
                    help="also animate every other grid flow that can sample (default on)")
    ap.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    return ap.parse_args(argv)


def toy_sets(params) -> list[str]:
    """The grid's data sets that are 2-D toy sets (those have a true density to draw)."""
    import flows.datasets as fd

    return [d for d in params["grid"]["datasets"]
            if fd.DATASETS[d].kind == "toy" and tuple(fd.DATASETS[d].event_shape) == (2,)]


def load_cells(params, models_dir: Path, datasets):
    """{(flow, dataset): trained flow} for every grid flow on ``datasets``, and the test split per data set."""
    from stages.evaluate import restore

    cells, tests = {}, {}
    for d in datasets:
        splits = load_checked_splits(d)  # present, of the right shape, finite
        tests[d] = np.asarray(splits.test)
        for f in params["grid"]["flows"]:
            model_dir = models_dir / cell_name(f, d)
            if not (model_dir / "config.json").exists():
                raise StageError(f"{model_dir} is missing: train it first (dvc repro train@{cell_name(f, d)})")
            cells[(f, d)] = restore(model_dir)[0]
    return cells, tests


def main(argv=None):
    args = parse_args(argv)
    params = load_params()
    seed = int(params["seed"])
    if args.energy_layers < 1 or args.energy_steps < 1:
        raise StageError(f"--energy-layers {args.energy_layers} and --energy-steps {args.energy_steps} must be >= 1")

    from flows import viz
    from stages.quiet import announce

    announce(os.environ.get("DVC_STAGE") or "overview", "drawing")
    datasets = toy_sets(params)
    summary = {"seed": seed, "toy_sets": datasets, "seconds": {}}
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        if datasets:
            t0 = time.perf_counter()
            cells, tests = load_cells(params, Path(args.models), datasets)
            lims = {d: viz.auto_lim(tests[d]) for d in datasets}
            scores = viz.toy_overview(cells, datasets, tmp / "toy_overview.png", lim=lims)
            summary["mean_abs_density_error"] = {cell_name(f, d): v for (f, d), v in scores.items()}
            summary["seconds"]["toy_overview"] = round(time.perf_counter() - t0, 1)

            t0 = time.perf_counter()
            d = datasets[0]
            animated = [f for f in params["grid"]["flows"] if cells[(f, d)].can_sample
                        and (f == ANIMATED or (args.all_gifs and len(cells[(f, d)].layers) > 1))]
            summary["gifs"] = {}
            for f in animated:
                name = f"{f}_layers.gif"
                k = len(cells[(f, d)].layers)
                frames = viz.animate_layers(cells[(f, d)], tmp / name, n=2000, seed=seed,
                                            frames_per_layer=max(3, min(8, 48 // k)), lim=lims[d],
                                            data=tests[d], title=f"{f} on {d}")
                summary["gifs"][name] = {"flow": f, "dataset": d, "layers": k, "frames": frames}
            summary["seconds"]["gifs"] = round(time.perf_counter() - t0, 1)
        else:
            (tmp / "README.txt").write_text("no 2-D toy data set in grid.datasets: no toy overview or animation\n")

        t0 = time.perf_counter()
        fits = viz.energy_fits(num_layers=args.energy_layers, steps=args.energy_steps, seed=seed)
        final = viz.plot_energy_fits(fits, tmp / "energies.png", seed=seed)
        summary["energy_fits"] = {"num_layers": args.energy_layers, "steps": args.energy_steps,
                                  "kl_q_p_nats": {f"{f}.{e}": v for (f, e), v in final.items()}}
        summary["seconds"]["energies"] = round(time.perf_counter() - t0, 1)
        write_json(tmp / "overview.json", summary)

    if not args.no_mlflow:
        from stages import tracking

        run = tracking.Run(name="figures", tags=tracking.run_tags("figures", kind="figures"))
        run.log_params({"grid": params["grid"], "seed": seed, "energy_layers": args.energy_layers,
                        "energy_steps": args.energy_steps})
        metrics = {f"energy_kl.{k}": v for k, v in summary["energy_fits"]["kl_q_p_nats"].items()}
        metrics.update({f"density_mae.{k}": v for k, v in summary.get("mean_abs_density_error", {}).items()})
        run.log_metrics(metrics)
        run.log_artifacts(args.out, "figures")
        run.finish()
    written = sorted(p.name for p in Path(args.out).iterdir())
    print(f"{os.environ.get('DVC_STAGE') or 'overview'}: wrote {', '.join(written)} to {args.out} "
          f"({', '.join(f'{k} {v:.0f} s' for k, v in summary['seconds'].items())})")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run_main(main)
