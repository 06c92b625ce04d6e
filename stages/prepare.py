"""Stage prepare@<dataset>: preprocess data/raw/<dataset> into data/processed/<dataset>/ (train/val/test .npy
and manifest.json), exactly as the papers did (see flows.datasets and docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common import ParamsError, StageError, load_params, params_arg, processed_dir, raw_dir, run_main  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    params_arg(ap)
    args = ap.parse_args(argv)
    params = load_params(args.params)
    import flows.datasets as fd

    if args.dataset not in fd.DATASETS:
        raise ParamsError(f"dataset {args.dataset!r} is unknown; accepted: {', '.join(sorted(fd.DATASETS))}")
    src = raw_dir(args.dataset)
    if not (src / "source.json").exists():
        raise StageError(f"{src} is missing: download it first (dvc repro download@{args.dataset})")
    # flows.datasets.prepare writes into a temporary directory and renames it, so out is never half-written (a
    # temporary directory left by a run killed mid-way is removed); the outputs are the same bytes every run
    t0 = time.time()
    manifest = fd.prepare(args.dataset, src, processed_dir(args.dataset), seed=params["seed"],
                          **params["datasets"][args.dataset]["data"])
    splits = manifest.get("splits") or {}
    sizes = ", ".join(f"{k} {v['shape'][0]:,}" for k, v in splits.items() if isinstance(v, dict) and "shape" in v)
    print(f"prepare@{args.dataset}: {sizes} -> {processed_dir(args.dataset)} ({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    run_main(main)
