"""MAF (or IAF) on POWER or the 8x8 digits: test log-likelihood after a fixed budget for several initialisations
of the MADE layers.

    python benchmarks/maf_init.py                       # MAF on POWER, every variant, seeds 0,1,2, 2000 steps
    python benchmarks/maf_init.py --variants glorot_zero_last,fan_in --seeds 0,1,2,3,4
    python benchmarks/maf_init.py --dataset digits --variants glorot_zero_last,fan_in             # MAF, 1000 steps
    python benchmarks/maf_init.py --dataset digits --flow iaf --layers 2 --steps 500 --variants glorot_zero_last,fan_in

Digits: the default run's cell (batch 128, validation every 250 steps, dequantised and logit-transformed with
alpha 0.05, 17 pixel levels; log-likelihoods in nats of the pixel levels as in the results table).

On POWER the flow is ``flows.build_flow("maf", [6], num_layers=5, hidden_units=[64, 64])`` trained by
``flows.training.fit`` (Adam lr 1e-3, cosine annealing, clip 5, batch 512, 5 validation checks on 20,000 rows,
best weights tested), exactly as ``bench_zuko.py``'s quality table; only the MADE weights are re-drawn after the
flow is built (with NumPy's generator seeded by the run's seed):

* ``glorot_zero_last``: Glorot-uniform kernels, zero biases, zero output layer (every layer starts as the
  identity; this project's default until 2026-11-28);
* ``fan_in_zero_bias``: kernels uniform in +-1/sqrt(fan_in), zero biases, Glorot-uniform output layer;
* ``fan_in_zero_last``: kernels and biases uniform in +-1/sqrt(fan_in), zero output layer;
* ``fan_in``: kernels and biases uniform in +-1/sqrt(fan_in) everywhere (PyTorch's ``nn.Linear`` default, which
  zuko uses; the ``init: fan_in`` default now; ``glorot_zero_last`` is ``init: identity``).

Test log-likelihoods are in nats (mean over the test rows, +/- 2 standard errors).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PROCESSED = os.path.join(ROOT, "data", "processed")
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
    ap.add_argument("--dataset", choices=["power", "digits"], default="power")
    ap.add_argument("--flow", choices=["maf", "iaf"], default="maf")
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--steps", type=int, default=None, help="default: 2000 on POWER, 1000 on digits")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; accepted: {', '.join(VARIANTS)}")
    data_dir = os.path.join(PROCESSED, args.dataset)
    if not os.path.exists(os.path.join(data_dir, "test.npy")):
        raise SystemExit(f"{data_dir} is missing: run `dvc repro prepare@{args.dataset}` first")
    steps = args.steps or (2000 if args.dataset == "power" else 1000)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    sys.path.insert(0, ROOT)
    from flows.experiment import model_for_data
    from flows.training import TrainConfig, evaluate, fit, set_seed

    train, val, test = (np.load(os.path.join(data_dir, f"{s}.npy"), mmap_mode="r") for s in ("train", "val", "test"))
    hparams = {"num_layers": args.layers, "hidden_units": [64, 64]}
    seeds = [int(s) for s in args.seeds.split(",")]
    table = {}
    for variant in variants:
        for seed in seeds:
            set_seed(seed)
            if args.dataset == "power":
                flow, transform, _ = model_for_data(args.flow, hparams, "tabular", (6,))
                cfg = TrainConfig(steps=steps, batch_size=512, learning_rate=1e-3, eval_every=max(steps // 5, 1),
                                  clip_norm=5.0, seed=seed)
            else:
                flow, transform, _ = model_for_data(args.flow, hparams, "image", (8, 8, 1), levels=17, logit_alpha=0.05)
                cfg = TrainConfig(steps=steps, batch_size=128, learning_rate=1e-3, eval_every=250, seed=seed)
            reinit(flow, variant, np.random.default_rng(seed))
            t0 = time.perf_counter()
            fit(flow, train, val, cfg, transform=transform, log=lambda s: None)
            r = evaluate(flow, test, transform=transform, seed=seed)
            table[variant, seed] = (r["test_ll"], 2 * r["test_ll_se"])
            print(f"{variant} seed {seed}: {r['test_ll']:.3f} +/- {2 * r['test_ll_se']:.3f} nats "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    print(f"\n{args.flow.upper()} ({args.layers} layers) on {args.dataset}, test log-likelihood (nats, +/- 2 se) after "
          f"{steps} steps")
    print("| MADE initialisation | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
    print("|---|" + "---|" * (len(seeds) + 1))
    for variant in variants:
        cells = [table[variant, s] for s in seeds]
        mean = sum(c[0] for c in cells) / len(cells)
        print(f"| {variant} | " + " | ".join(f"{m:.3f} +/- {e:.3f}" for m, e in cells) + f" | {mean:.3f} |")


if __name__ == "__main__":
    main()
