"""Fixed-budget quality check of the paper-scale RQ-NSF: POWER test log-likelihood (nats) after the same number of
steps, for one code tree (``--root``), form, seed and training setting; one JSON line per run.

    python benchmarks/nsf_quality.py --form autoregressive --seed 0 --steps 2000
    python benchmarks/nsf_quality.py --root /tmp/old-checkout --form coupling --seed 0 --steps 2000 --threads 1
    python benchmarks/nsf_quality.py --form autoregressive --matmul-dtype bfloat16 --no-jit

The model is params-paper.yaml's ``nsf_ar`` / ``nsf_c`` (10 transforms, 2 residual blocks of 256, 8 bins on
[-3, 3], LU linear layers), trained with the NSF recipe (Adam 5e-4, cosine annealing over ``--steps``, batch 512,
clipping at 5) on the real POWER train split through ``flows.training.fit``, validated on 20,000 validation rows
at the end, then tested on the whole test split (204,928 rows): mean and standard error, in nats.  Run it for the
same seed on two checkouts (``--root``: the old tree's ``flows`` is imported) to see whether a speed change moved
the result beyond the seed-to-seed spread (run two seeds on one tree for that spread).  Data:
``data/processed/power`` of this checkout (``dvc repro prepare@power``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_nsf import POWER, hparams  # noqa: E402  (the paper RQ-NSF's hyper-parameters; stdlib-only at import)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.path.join(HERE, ".."), help="the checkout whose flows/ is trained")
    ap.add_argument("--form", choices=["autoregressive", "coupling"], default="autoregressive")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--matmul-dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--no-jit", action="store_true", help="train without XLA (bfloat16 products need it off)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    sys.path.insert(0, os.path.abspath(args.root))
    import flows
    from flows.training import TrainConfig, evaluate, fit, set_seed

    train, val, test = (np.load(os.path.join(POWER, f"{s}.npy"), mmap_mode="r") for s in ("train", "val", "test"))
    cfg = TrainConfig(steps=args.steps, batch_size=512, learning_rate=5e-4, clip_norm=5.0, eval_every=args.steps,
                      max_val=20000, jit_compile=not args.no_jit, matmul_dtype=args.matmul_dtype, seed=args.seed)
    set_seed(args.seed)  # building the flow draws its initial weights
    flow = flows.build_flow("nsf", [6], **hparams(args.form, residual=True))
    start = time.perf_counter()
    history = fit(flow, train, val, cfg, log=lambda s: None)
    result = evaluate(flow, np.asarray(test))
    print(json.dumps({"root": os.path.abspath(args.root), "form": args.form, "seed": args.seed, "steps": args.steps,
                      "jit": not args.no_jit, "matmul_dtype": args.matmul_dtype, "threads": args.threads,
                      "test_ll_nats": result["test_ll"], "test_ll_se": result["test_ll_se"],
                      "val_nll": history.val_loss[-1], "train_seconds": history.train_seconds,
                      "wall_seconds": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":
    main()
