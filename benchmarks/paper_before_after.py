"""The paper-scale RQ-NSF training step, an older tree against this one, alternating, each row in a fresh process.

    git worktree add /tmp/base a1c2c85          # issue 13's baseline tree
    python benchmarks/paper_before_after.py --old /tmp/base --rounds 2 --threads 1 --json /tmp/ba.jsonl
    python benchmarks/paper_before_after.py --old /tmp/base --rounds 2 --threads 2 --forms autoregressive
    python benchmarks/paper_before_after.py --old /tmp/base --rounds 4 --threads 2 --forms autoregressive --rows old,new

Rows, per form (autoregressive, coupling) and round: the old tree with the paper pipeline's former setting (XLA,
float32 products), this tree the same way, this tree with bfloat16 products without XLA, with ``--threads`` above 1
those two with the batch in one shard per thread (``TrainConfig.batch_shards``), and this tree with ``jit_compile``,
``matmul_dtype`` and ``batch_shards`` "auto" (params-paper.yaml's NSF rows: the row's own choice is printed).  Each
row builds params-paper.yaml's model (``bench_nsf.hparams``: 10 transforms, 2 residual blocks of 256 (``--plain``: a
plain 2x256 network instead), 8 bins on [-3, 3], LU linear layers) with the tree's ``flows`` and trains it through
``fit`` on the real POWER rows (batch 512, 32 steps per compiled call); steps/s between the validations at step ``w =
max(--warmup, --steps)`` and ``w + --steps`` (``bench_nsf.step_rate``: no other validation in between), so
compilation, and the "auto" row's measurement, are left out.  Rows alternate, so a change in the machine's speed hits
every setting; compare within a round.  Data: ``data/processed/power`` of this checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = ("old", "new", "new-bf16", "new-shards", "new-bf16-shards", "auto")  # --rows; "-shards": --threads > 1 only
ROOT = os.path.abspath(os.path.join(HERE, ".."))

CHILD = """
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
root, form, jit, mm, shards, threads, warm, steps, residual = json.loads(sys.argv[1])
sys.path.insert(0, root)
sys.path.insert(1, {here!r})
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(threads)
import bench_nsf
train = np.load(os.path.join({data_root!r}, "data", "processed", "power", "train.npy"), mmap_mode="r")
rate, h, lines = bench_nsf.step_rate(train, form, residual, jit, mm, steps, warm=warm, seed=0, details=True,
                                    batch_shards=shards)
print(json.dumps({{"steps_per_s": rate, "jit_as_run": h.jit_compile,
                  "matmul_dtype_as_run": getattr(h, "matmul_dtype", None) or mm,
                  "batch_shards_as_run": getattr(h, "batch_shards", None) or shards,
                  "auto": [line for line in lines if "auto:" in line]}}))
""".format(here=HERE, data_root=ROOT)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="the older checkout (its flows/ is imported), e.g. a git worktree")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=64, help="untimed steps (the first validation ends them)")
    ap.add_argument("--steps", type=int, default=96, help="timed steps")
    ap.add_argument("--forms", default="autoregressive,coupling")
    ap.add_argument("--plain", action="store_true",
                    help="plain 2x256 conditioners (MLP / MADE) instead of the paper's 2 residual blocks of 256")
    ap.add_argument("--json", help="also append the rows here, one JSON line each")
    ap.add_argument("--rows", default=",".join(ROWS),
                    help=f"which rows, in this order each round (default all: {','.join(ROWS)}; "
                         "'old,new' compares the trees alone, XLA and float32 both)")
    args = ap.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        ap.error(f"--rows: unknown row(s) {', '.join(unknown) or '(none given)'}; accepted: {', '.join(ROWS)}")
    if not os.path.exists(os.path.join(ROOT, "data", "processed", "power", "train.npy")):
        raise SystemExit("data/processed/power is missing: run `dvc repro prepare@power` first")
    named = {"old": ("old", os.path.abspath(args.old), True, "float32", 1), "new": ("new", ROOT, True, "float32", 1),
             "new-bf16": ("new", ROOT, False, "bfloat16", 1),
             "new-shards": ("new", ROOT, True, "float32", args.threads),
             "new-bf16-shards": ("new", ROOT, False, "bfloat16", args.threads),
             "auto": ("new", ROOT, "auto", "auto", "auto")}
    # the batch in one shard per core (TrainConfig.batch_shards) pays only with several threads
    settings = [named[r] for r in rows if args.threads > 1 or not r.endswith("-shards")]
    if not settings:
        ap.error(f"--rows {args.rows}: the '-shards' rows need --threads above 1; with --threads 1 choose from "
                 f"{', '.join(r for r in ROWS if not r.endswith('-shards'))}")
    print("| round | form | tree | jit_compile | matmul_dtype | batch_shards | as run | steps/s |\n"
          "|---|---|---|---|---|---|---|---|", flush=True)
    for rnd in range(1, args.rounds + 1):
        for form in args.forms.split(","):
            for tree, root, jit, mm, shards in settings:
                spec = json.dumps([root, form, jit, mm, shards, args.threads, args.warmup, args.steps, not args.plain])
                out = subprocess.run([sys.executable, "-c", CHILD, spec], capture_output=True, text=True)
                try:
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                except (IndexError, ValueError):
                    row = {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"rc {out.returncode}"}
                row.update(round=rnd, form=form, tree=tree, root=root, jit_compile=jit, matmul_dtype=mm,
                           batch_shards=shards, threads=args.threads)
                ran = (f"{'XLA' if row.get('jit_as_run') else 'no XLA'}, {row.get('matmul_dtype_as_run')}, "
                       f"{row.get('batch_shards_as_run')} shard(s)")
                rate = f"{row['steps_per_s']:.2f}" if "steps_per_s" in row else row["error"]
                print(f"| {rnd} | {form} | {tree} | {jit} | {mm} | {shards} | {ran} | {rate} |", flush=True)
                if args.json:
                    with open(args.json, "a") as fh:
                        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
