"""Time training steps, log_prob and sampling of every registered flow at one fixed configuration on CPU.

    python benchmarks/bench_flows.py --steps 50                # every flow, dim 6, batch 256
    python benchmarks/bench_flows.py --flows maf nsf --dim 8

Every flow is built with its registered defaults (the small, laptop-scale ones).  Each timed function is a
``tf.function`` compiled once before timing (compile time is reported apart).  Throughput is in samples per
second; a training step is one Adam update on a batch.  The data are a fixed correlated Gaussian, so the
numbers do not depend on any data set being on disk.  Flows that only take images run at shape --image-shape.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import flows  # noqa: E402


def _data(shape, n, seed=0):
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    a = rng.normal(size=(size, size)) / np.sqrt(size)
    x = rng.normal(size=(n, size)) @ (np.eye(size) + a)
    return x.reshape((n,) + tuple(shape)).astype(np.float32)


def _timed(fn, arg, steps):
    t0 = time.perf_counter()
    out = fn(arg)
    _ = [o.numpy() for o in tf.nest.flatten(out)]
    compile_s = time.perf_counter() - t0
    fn(arg)  # one more warm call (retracing of optimizer slots etc.)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = fn(arg)
    _ = [o.numpy() for o in tf.nest.flatten(out)]
    return (time.perf_counter() - t0) / steps, compile_s


def bench_flow(name, shape, batch, steps, seed=0):
    """Seconds per call of a training step, log_prob and (where possible) sample, plus the parameter count."""
    import tf_keras as keras

    from flows.training import set_seed

    set_seed(seed)  # Python's random too: Keras' unseeded initialisers draw from it
    flow = flows.build_flow(name, shape)
    x = tf.constant(_data(shape, batch, seed))
    flow.initialize(x)
    opt = keras.optimizers.Adam(1e-3)
    variables = flow.trainable_variables

    @tf.function
    def train_step(xb):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(flow.log_prob(xb, training=True))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    log_prob = tf.function(lambda xb: flow.log_prob(xb))
    row = {"flow": name, "shape": "x".join(map(str, shape)),
           "params": int(sum(int(np.prod(v.shape)) for v in variables))}
    row["train_s"], row["train_compile_s"] = _timed(train_step, x, steps)
    row["log_prob_s"], _ = _timed(log_prob, x, steps)
    if flow.can_sample:
        sample = tf.function(lambda n: flow.sample(n))
        row["sample_s"], _ = _timed(sample, tf.constant(batch), max(1, steps // 5))
    else:
        row["sample_s"] = None
    return row


def markdown(rows, batch):
    head = ("| flow | event shape | parameters | train step (ms) | train (samples/s) | log_prob (samples/s) "
            "| sample (samples/s) | compile train (s) |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['flow']} | {r['shape']} | failed: {r['error']} | | | | | |")
            continue
        sample = "no inverse" if r["sample_s"] is None else f"{batch / r['sample_s']:,.0f}"
        lines.append(
            f"| {r['flow']} | {r['shape']} | {r['params']:,} | {1e3 * r['train_s']:.1f} | {batch / r['train_s']:,.0f} "
            f"| {batch / r['log_prob_s']:,.0f} | {sample} | {r['train_compile_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="timed calls per measurement (default 50)")
    parser.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    parser.add_argument("--dim", type=int, default=6, help="event size of vector flows (default 6, as POWER)")
    parser.add_argument("--image-shape", type=int, nargs=3, default=[4, 4, 2], help="for image-only flows")
    parser.add_argument("--flows", nargs="*", default=None, help="names (default: every registered flow)")
    args = parser.parse_args(argv)

    names = args.flows or list(flows.FLOWS)
    unknown = [n for n in names if n not in flows.FLOWS]
    if unknown:
        parser.error(f"unknown flows {unknown}; accepted: {', '.join(sorted(flows.FLOWS))}")
    rows = []
    for name in names:
        shape = (args.dim,) if "vector" in flows.FLOWS[name].kinds else tuple(args.image_shape)
        try:
            rows.append(bench_flow(name, shape, args.batch, args.steps))
        except Exception as exc:  # noqa: BLE001 -- one broken flow must not hide the others' numbers
            rows.append({"flow": name, "shape": "x".join(map(str, shape)), "error": f"{type(exc).__name__}: {exc}"[:120]})
        print(f"done {name}", file=sys.stderr, flush=True)
    print(f"CPU, TensorFlow {tf.__version__}, batch {args.batch}, {args.steps} timed steps, "
          f"{os.cpu_count()} logical CPUs, registered defaults\n")
    print(markdown(rows, args.batch))


if __name__ == "__main__":
    main()
