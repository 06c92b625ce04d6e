"""MAF on POWER: test log-likelihood after a fixed budget for several initialisations of the MADE layers.

    python benchmarks/maf_init.py                       # every variant, seeds 0,1,2, 2000 steps
    python benchmarks/maf_init.py --variants glorot_zero_last,fan_in --seeds 0,1,2,3,4

The flow is ``flows.build_flow("maf", [6], num_layers=5, hidden_units=[64, 64])`` trained by
``flows.training.fit`` (Adam lr 1e-3, cosine annealing, clip 5, batch 512, 5 validation checks on 20,000 rows,
best weights tested), exactly as ``bench_zuko.py``'s quality table; only the MADE weights are re-drawn after the
flow is built (with NumPy's generator seeded by the run's seed):

* ``glorot_zero_last``: Glorot-uniform kernels, zero biases, zero output layer (every layer starts as the
  identity; this project's default until 2026-11-28);
* ``fan_in_zero_bias``: kernels uniform in +-1/sqrt(fan_in), zero biases, Glorot-uniform output layer;
* ``fan_in_zero_last``: kernels and biases uniform in +-1/sqrt(fan_in), zero output layer;
* ``fan_in``: kernels and biases uniform in +-1/sqrt(fan_in) everywhere (PyTorch's ``nn.Linear`` default, which
  zuko uses; the default now).

Test log-likelihoods are in nats (mean over the test rows, +/- 2 standard errors).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
POWER = os.path.join(ROOT, "data", "processed", "power")
VARIANTS = ["glorot_zero_last", "fan_in_zero_bias", "fan_in_zero_last", "fan_in"]


def reinit(flow, variant, rng):
    import numpy as np
    import tf_keras as keras

    for layer in flow.layers:
        if not hasattr(layer, "made"):
            continue
        dense = [d for d in layer.made._network.layers if isinstance(d, keras.layers.Dense)]
        for i, d in enumerate(dense):
            fan_in, fan_out = d.kernel.shape
            last = i == len(dense) - 1
            if variant == "glorot_zero_last" or (variant == "fan_in_zero_bias" and last):
                b = math.sqrt(6.0 / (fan_in + fan_out))
                kernel, bias = rng.uniform(-b, b, d.kernel.shape), np.zeros(d.bias.shape)
            else:
                b = 1.0 / math.sqrt(fan_in)
                kernel = rng.uniform(-b, b, d.kernel.shape)
                bias = np.zeros(d.bias.shape) if variant == "fan_in_zero_bias" else rng.uniform(-b, b, d.bias.shape)
            if last and variant in ("glorot_zero_last", "fan_in_zero_last"):
                kernel, bias = np.zeros(d.kernel.shape), np.zeros(d.bias.shape)
            d.kernel.assign(kernel.astype(np.float32))
            d.bias.assign(bias.astype(np.float32))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; accepted: {', '.join(VARIANTS)}")
    if not os.path.exists(os.path.join(POWER, "test.npy")):
        raise SystemExit(f"{POWER} is missing: run `dvc repro prepare@power` first")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    sys.path.insert(0, ROOT)
    import flows
    from flows.training import TrainConfig, evaluate, fit, set_seed

    train, val, test = (np.load(os.path.join(POWER, f"{s}.npy"), mmap_mode="r") for s in ("train", "val", "test"))
    seeds = [int(s) for s in args.seeds.split(",")]
    table = {}
    for variant in variants:
        for seed in seeds:
            set_seed(seed)
            flow = flows.build_flow("maf", [6], num_layers=5, hidden_units=[64, 64])
            reinit(flow, variant, np.random.default_rng(seed))
            cfg = TrainConfig(steps=args.steps, batch_size=512, learning_rate=1e-3, eval_every=max(args.steps // 5, 1),
                              clip_norm=5.0, seed=seed)
            t0 = time.perf_counter()
            fit(flow, train, val, cfg, log=lambda s: None)
            r = evaluate(flow, test)
            table[variant, seed] = (r["test_ll"], 2 * r["test_ll_se"])
            print(f"{variant} seed {seed}: {r['test_ll']:.3f} +/- {2 * r['test_ll_se']:.3f} nats "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    print(f"\nMAF on POWER, test log-likelihood (nats, +/- 2 se) after {args.steps} steps")
    print("| MADE initialisation | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
    print("|---|" + "---|" * (len(seeds) + 1))
    for variant in variants:
        cells = [table[variant, s] for s in seeds]
        mean = sum(c[0] for c in cells) / len(cells)
        print(f"| {variant} | " + " | ".join(f"{m:.3f} +/- {e:.3f}" for m, e in cells) + f" | {mean:.3f} |")


if __name__ == "__main__":
    main()
