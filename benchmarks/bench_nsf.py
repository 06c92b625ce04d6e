"""Where the paper-scale NSF training step spends its time on this CPU, and what each speed lever buys.

    python benchmarks/bench_nsf.py                       # all sections, 2 threads, ~6 min on 2 free cores
    python benchmarks/bench_nsf.py --threads 1 --steps 128 --json /tmp/nsf.json
    python benchmarks/bench_nsf.py --paper-rows --root /tmp/old-checkout     # the pipeline's rows, an older tree
    python benchmarks/bench_nsf.py --paper-all --threads 1 --steps 96       # the paper RQ-NSF each way, 8 rows

Sections (all timings after compilation; steps/s between two timing marks of the same ``fit`` call):

1. **Matmul ceiling**: TensorFlow's own ``tf.matmul`` on a chain of 20 products ``[512, 256] @ [256, 256]`` (the
   conditioners' hidden shapes), GFLOP/s in float32 and bfloat16, as ``tf.function`` (oneDNN) and under XLA.
2. **Training step** of the NSF paper's RQ-NSF for POWER (10 steps, 8 bins, tail bound 3, LU linear layers, batch
   512) through :func:`flows.training.fit` on the real POWER rows, for both forms and both conditioners (2 residual
   blocks of 256 = the paper's; and a plain 2x256 MLP/MADE), with and without XLA, and with the conditioners'
   matrix products in float32 or bfloat16 (``TrainConfig.matmul_dtype``).  Also on synthetic N(0, 1) rows of the
   same shape (is batch gathering from the memory-mapped split a cost?).  GFLOP/s counts the conditioners' matrix
   products only: ``3 x 2 x batch x sum(fan_in x fan_out)`` per step (forward, and backward for inputs and weights).
3. **Pieces**: the 10 conditioners alone (forward + backward) and the 10 splines alone (``flows.spline.rqs``,
   forward + backward) as ``tf.function`` and under XLA.

Results: ``results/nsf_speed.md`` (written by hand from the printed tables, with the machine's ``lscpu``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
POWER = os.path.join(ROOT, "data", "processed", "power")


def ceiling(threads: int, reps: int = 30, dtypes=("float32", "bfloat16")) -> dict:
    """GFLOP/s of the chain, per ``{graph,xla}_{dtype}``, in the caller's thread settings (``threads``: the caller's
    count, for the record)."""
    import tensorflow as tf

    out = {}
    for jit in (False, True):
        for dt in map(tf.as_dtype, dtypes):
            x = tf.cast(tf.random.normal([512, 256]), dt)
            ws = [tf.cast(tf.random.normal([256, 256]) * 0.06, dt) for _ in range(20)]

            @tf.function(jit_compile=jit)
            def chain(x):
                for w in ws:
                    x = tf.matmul(x, w)
                return x

            chain(x).numpy()
            t = time.perf_counter()
            for _ in range(reps):
                chain(x).numpy()
            out[f"{'xla' if jit else 'graph'}_{dt.name}"] = 2 * 512 * 256 * 256 * 20 * reps / (time.perf_counter() - t) / 1e9
    return out


def hparams(form: str, residual: bool) -> dict:
    return dict(num_layers=10, form=form, num_bins=8, tail_bound=3.0, hidden_units=[256] if residual else [256, 256],
                lu_linear=True, activation="relu", residual_blocks=2 if residual else 0, dropout=0.0)


def step_gflop(form: str, residual: bool, d: int = 6, batch: int = 512, bins: int = 8) -> float:
    """Matrix-product GFLOP of one training step (forward + backward) of the 10 conditioners."""
    # the coupling's network computes the parameters of its free (transformed) features only
    out = d * (3 * bins - 1) if form == "autoregressive" else (d - d // 2) * (3 * bins - 1)
    shapes = ([(d, 256)] + [(256, 256)] * 4 + [(256, out)]) if residual else [(d, 256), (256, 256), (256, out)]
    return 3 * 2 * batch * sum(a * b for a, b in shapes) * 10 / 1e9


def step_rate(train, form, residual, jit, matmul_dtype, steps, warm: int = 64, seed=None, details: bool = False,
              batch_shards=1):
    """Steps/s of the paper RQ-NSF through ``fit`` over ``steps`` steps after ``max(warm, steps)`` (the first
    validation ends them, so compilation and an "auto" setting's measurement are left out; ``fit`` validates at every
    multiple of ``eval_every``, so a warm-up of at least ``steps`` keeps other validations out of the window).
    ``seed``: ``set_seed`` before the build; ``details``: also the ``History`` and ``fit``'s log lines;
    ``batch_shards``: ``TrainConfig``'s (left out when 1, so that trees older than the option run too)."""
    import flows
    from flows.training import TrainConfig, fit

    if seed is not None:
        from flows.training import set_seed
        set_seed(seed)
    flow = flows.build_flow("nsf", [6], **hparams(form, residual))
    warm = max(warm, steps)
    cfg = TrainConfig(steps=warm + steps, batch_size=512, learning_rate=5e-4, eval_every=warm, max_val=512,
                      jit_compile=jit, matmul_dtype=matmul_dtype, steps_per_call=32,
                      **({} if batch_shards == 1 else {"batch_shards": batch_shards}))
    lines = []
    h = fit(flow, train, train[:512], cfg, log=lines.append)
    rate = steps / (h.seconds[-1] - h.seconds[0])
    return (rate, h, lines) if details else rate


def pieces(jit: bool, matmul_dtype: str, reps: int = 30) -> dict:
    import tensorflow as tf

    from flows import nn
    from flows.spline import rqs

    x = tf.random.normal([512, 6])
    mades = [nn.MaskedMLP(6, 23, [256], tf.float32, residual_blocks=2) for _ in range(10)]
    for m in mades:
        m(x)
    variables = [v for m in mades for v in m.trainable_variables]
    params = tf.Variable(tf.random.normal([512, 6, 23]) * 0.1)

    @tf.function(jit_compile=jit)
    def nets(x):
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_sum(m(x, training=True) ** 2) for m in mades])
        return tape.gradient(loss, variables)

    @tf.function(jit_compile=jit)
    def splines(x):
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_sum(rqs(x, params, 8, 3.0, inverse=True)[1]) for _ in range(10)])
        return tape.gradient(loss, [params])

    def ms(f):
        f(x), f(x)
        t = time.perf_counter()
        for _ in range(reps):
            f(x)
        return (time.perf_counter() - t) / reps * 1e3

    with nn.matmul_precision(matmul_dtype):
        net_ms = ms(nets)
    return {"conditioners_ms": net_ms, "splines_ms": ms(splines)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=256, help="timed training steps per variant")
    ap.add_argument("--json", help="also write the numbers here")
    ap.add_argument("--paper-rows", action="store_true",
                    help="only the training-step rows the paper pipeline runs (both forms, the paper's conditioners, "
                         "XLA, float32, real rows), after the ceiling; no pieces")
    ap.add_argument("--paper-all", action="store_true",
                    help="the paper's conditioners on the real rows, both forms, with and without XLA, float32 and "
                         "bfloat16 products (8 rows), after the ceiling; no pieces")
    ap.add_argument("--root", default=ROOT, help="the checkout whose flows/ is timed (default: this one), to time "
                                                 "an older tree against this one")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    sys.path.insert(0, os.path.abspath(args.root))
    if not os.path.exists(os.path.join(POWER, "train.npy")):
        raise SystemExit(f"{POWER} is missing: run `dvc repro prepare@power` first")
    real = np.load(os.path.join(POWER, "train.npy"), mmap_mode="r")
    synthetic = np.random.default_rng(0).normal(size=real.shape).astype(np.float32)
    out = {"threads": args.threads, "ceiling_gflops": ceiling(args.threads)}
    print(f"matmul ceiling, {args.threads} threads (GFLOP/s): " +
          ", ".join(f"{k} {v:.0f}" for k, v in out["ceiling_gflops"].items()), flush=True)
    rows = []
    print("| form | conditioner | XLA | matmul dtype | data | steps/s | GFLOP/s | of f32 ceiling |")
    print("|---|---|---|---|---|---|---|---|")
    f32 = out["ceiling_gflops"]["graph_float32"]
    variants = [(form, res, jit, mm, "real") for form in ("autoregressive", "coupling") for res in (True, False)
                for jit in (False, True) for mm in ("float32", "bfloat16")]
    variants += [("autoregressive", True, True, "float32", "synthetic"), ("autoregressive", False, True, "float32",
                                                                           "synthetic")]
    if args.paper_rows:
        variants = [(form, True, True, "float32", "real") for form in ("autoregressive", "coupling")]
    elif args.paper_all:
        variants = [v for v in variants if v[1] and v[4] == "real"]
    for form, res, jit, mm, data in variants:
        rate = step_rate(real if data == "real" else synthetic, form, res, jit, mm, args.steps)
        gf = rate * step_gflop(form, res)
        rows.append({"form": form, "residual": res, "jit": jit, "matmul_dtype": mm, "data": data, "steps_per_s": rate,
                     "gflops": gf})
        print(f"| {form} | {'2 residual blocks x 256' if res else 'plain 2x256'} | {'yes' if jit else 'no'} | {mm} | "
              f"{data} | {rate:.1f} | {gf:.0f} | {gf / f32:.0%} |", flush=True)
    out["steps"] = rows
    out["pieces"] = {} if args.paper_rows or args.paper_all else {f"{'xla' if jit else 'graph'}_{mm}": pieces(jit, mm)
                                                 for jit in (False, True) for mm in ("float32", "bfloat16")}
    for k, v in out["pieces"].items():
        print(f"pieces {k}: 10 conditioners fwd+bwd {v['conditioners_ms']:.1f} ms, 10 splines fwd+bwd "
              f"{v['splines_ms']:.2f} ms", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
