"""Where one XLA-compiled training step of a small flow spends its time: TensorFlow's profiler over the compiled
call, XLA's own per-kernel events (``--xla_cpu_enable_xprof_traceme``), summed by kernel kind.

    python benchmarks/profile_step.py nsf_c                 # the bench_peers.py shape: POWER D = 6, 5 x (2 x 64)
    python benchmarks/profile_step.py maf --top 30 --threads 1
    python benchmarks/profile_step.py nsf_ar_paper          # the NSF paper's RQ-NSF for POWER (bench_nsf.hparams)
    python benchmarks/profile_step.py nsf_ar_paper --no-xla --matmul-dtype bfloat16   # ms/step only (see below)
    python benchmarks/profile_step.py nsf_ar_paper --threads 2 --shards 2 --no-profile  # TrainConfig.batch_shards
    python benchmarks/profile_step.py nsf_ar_paper --threads 2 --ceiling 8   # vs the matmul ceiling, alternating
    python benchmarks/profile_step.py nsf_c_paper --plain --no-xla --threads 2 --ceiling 8
    python benchmarks/profile_step.py nsf_ar_paper --plain --threads 2 --spline-share 8   # the splines' share

What runs: :class:`flows.training.TrainCall` (the call ``fit`` compiles: 32 steps in one ``tf.while_loop``, Adam
with cosine decay, clipping at 5) on 32 batches of 512 real POWER rows, with ``jit_compile=True``, after two untimed
calls; then three profiled calls.  Printed: ms/step without the profiler (best of 5 calls), and the XLA kernels
(fusions, dots, reduce-windows, ...) summed by kind over the profiled calls, in us per step (the profiler's own
overhead inflates them: read them as shares).  Kernel names are XLA's: ``MatMul`` = dots, ``*_fusion`` = fused
elementwise loops named after their root ops, ``wrapped_reduce-window`` = cumulative sums.  ``--no-xla`` times the
plain graph call (with ``fit``'s fused Adam) and stops there: TensorFlow 2.21's profiler records the function's
executor but not its ops on this CPU build, so there is no per-op table outside XLA.

Findings this script produced are in ``results/nsf_speed.md`` ("Small flows").
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_zuko import POWER, ROOT, our_flow  # noqa: E402

WRAPPERS = {"call", "TFE_Py_ExecuteCancelable", "EagerExecute", "EagerKernelExecute", "BlockUntilReady",
            "CpuExecutable::ExecuteAsyncOnStream", "ThunkExecutor::Execute", "EagerCopyToDevice"}


def kernel_kind(name: str) -> str:
    return re.sub(r"([._]\d+)+$", "", name)


def op_type(name: str) -> str:
    """A TensorFlow op event's type: ``scope/name:Type`` -> ``Type``; else the last path element, unnumbered."""
    if ":" in name:
        return name.rsplit(":", 1)[1]
    return kernel_kind(name.rsplit("/", 1)[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("flow", choices=["maf", "realnvp", "nsf_c", "nsf_ar", "glow", "nsf_ar_paper", "nsf_c_paper"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=20, help="kernel kinds (op types) to print")
    ap.add_argument("--no-xla", dest="xla", action="store_false",
                    help="profile the plain tf.function call instead (TensorFlow ops, summed by op type)")
    ap.add_argument("--matmul-dtype", default="float32", choices=["float32", "bfloat16"],
                    help="TrainConfig.matmul_dtype of the call (bfloat16: the conditioners' hidden products)")
    ap.add_argument("--shards", type=int, default=1, help="TrainConfig.batch_shards of the call")
    ap.add_argument("--no-profile", dest="profile", action="store_false", help="print ms/step only")
    ap.add_argument("--plain", action="store_true",
                    help="paper shapes only: the plain 2 x 256 conditioner instead of the residual one")
    ap.add_argument("--ceiling", type=int, default=0, metavar="ROUNDS",
                    help="paper shapes only: ROUNDS rounds alternating the matmul ceiling (bench_nsf.ceiling's chain, "
                         "graph and XLA, float32) and one timed call, in this process; prints each round's ratio of "
                         "the step's matrix GFLOP/s to the better ceiling, then stops")
    ap.add_argument("--spline-share", type=int, default=0, metavar="ROUNDS",
                    help="NSF with XLA only: ROUNDS timed calls alternating with the same call built with the splines "
                         "replaced by a cheap stand-in (see _spline_share); prints the splines' share of the step")
    args = ap.parse_args(argv)
    if (args.plain or args.ceiling) and not args.flow.endswith("_paper"):
        ap.error("--plain and --ceiling: the paper shapes only (nsf_ar_paper, nsf_c_paper)")
    if args.spline_share and not (args.flow.startswith("nsf") and args.xla):
        ap.error("--spline-share: the NSF flows (nsf_c, nsf_ar, nsf_ar_paper, nsf_c_paper) under XLA only")
    if args.spline_share and args.ceiling:
        ap.error("--spline-share and --ceiling: one at a time (each alternates its own timed calls)")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_xprof_traceme" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_enable_xprof_traceme=true").strip()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # Keras 2 (tf_keras), as flows itself sets before TensorFlow
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    sys.path.insert(0, ROOT)
    import tf_keras as keras

    from flows.training import TrainCall, fused_adam, set_seed
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    train = np.load(os.path.join(POWER, "train.npy"), mmap_mode="r")
    per_call, batch = 32, 512
    batches = np.stack([train[i * batch:(i + 1) * batch] for i in range(per_call)]).astype(np.float32)
    form = {"nsf_ar_paper": "autoregressive", "nsf_c_paper": "coupling"}.get(args.flow)

    def build_call():
        set_seed(0)
        if form:
            import flows
            from bench_nsf import hparams

            flow = flows.build_flow("nsf", [6], **hparams(form, residual=not args.plain))
        else:
            flow = our_flow(args.flow, 6, 5, 64)
        flow.initialize(tf.constant(batches[0]))
        schedule = keras.optimizers.schedules.CosineDecay(1e-3, 10_000)
        opt = (keras.optimizers.Adam(schedule, global_clipnorm=5.0) if args.xla
               else fused_adam(learning_rate=schedule, global_clipnorm=5.0))  # the optimizers fit uses in each mode
        call = TrainCall(flow, opt, lambda b, s: (b, tf.zeros([], b.dtype)), tf.distribute.get_strategy(), batch,
                         per_call, jit=args.xla, matmul_dtype=args.matmul_dtype, shards=args.shards)
        call(batches, per_call, 0, 1), call(batches, per_call, 0, 1)  # traced and compiled here
        return call

    call = build_call()
    if args.spline_share:
        return _spline_share(call, build_call, batches, per_call, args.spline_share)
    if args.ceiling:
        return _against_ceiling(call, batches, per_call, form, not args.plain, args.ceiling, args.threads)
    best = min(_timed(call, batches, per_call) for _ in range(5))
    mode = ("XLA" if args.xla else "tf.function") + f", {args.matmul_dtype} products, {args.shards} shard(s)"
    print(f"{args.flow} ({mode}): {best * 1e3:.3f} ms/step ({1 / best:.1f} steps/s) without the profiler, "
          f"{args.threads} thread(s)")
    if not args.profile:
        return
    if not args.xla:  # TensorFlow 2.21's profiler records no per-op events for a function's executor on CPU
        print("(no per-kernel table outside XLA: the profiler records the function's executor, not its ops)")
        return
    calls = 3
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(calls):
            call(batches, per_call, 0, 1)
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as fh:
            space.ParseFromString(fh.read())
    total, count = collections.Counter(), collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "?")
                if (name in WRAPPERS or name.startswith(("EagerLocalExecute", "__inference", "while", "end: ", "_call",
                                                         "tf.constant"))):
                    continue
                kind = kernel_kind(name)
                total[kind] += event.duration_ps / 1e6
                count[kind] += 1
    steps = calls * per_call
    print(f"XLA kernels, summed by kind (profiled; {sum(total.values()) / steps:.0f} us/step in all):")
    print("| us/step | kernels/step | kind |\n|---|---|---|")
    for kind, us in total.most_common(args.top):
        print(f"| {us / steps:.1f} | {count[kind] / steps:.0f} | {kind} |")


def _against_ceiling(call, batches, per_call, form, residual, rounds, threads):
    """Each round: the float32 chain's GFLOP/s (graph and XLA, ``bench_nsf.ceiling``, 240 chains each, about as long
    as one call), then one timed call; the step's matrix work (``bench_nsf.step_gflop``) over its time, against the
    better of the two chains of that round.  Alternating in one process keeps the two measurements inside the same
    few seconds of a VM whose speed drifts."""
    import statistics

    from bench_nsf import ceiling, step_gflop

    gflop = step_gflop(form, residual)
    print(f"matrix work {gflop:.2f} GFLOP/step ({'residual' if residual else 'plain'} conditioner)")
    print("| round | chain graph f32 | chain XLA f32 | ms/step | step GFLOP/s | of the better chain |\n"
          "|---|---|---|---|---|---|")
    ratios = []
    for r in range(rounds):
        chain = ceiling(threads, reps=240, dtypes=("float32",))  # ~3 s each, about one call
        sec = _timed(call, batches, per_call)
        best = max(chain["graph_float32"], chain["xla_float32"])
        ratios.append(gflop / sec / best)
        print(f"| {r + 1} | {chain['graph_float32']:.1f} | {chain['xla_float32']:.1f} | {sec * 1e3:.1f} | "
              f"{gflop / sec:.1f} | {ratios[-1]:.2f} |", flush=True)
    print(f"median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f} over {rounds} rounds")


def _spline_share(call, build_call, batches, per_call, rounds):
    """The splines' share of the step: the same call built again with the splines (``flows.spline._rqs_rows``, what
    ``rqs`` runs inside an XLA training call) replaced while it is traced by a cheap stand-in that keeps the
    parameters' gradient path (outputs ``x + 1e-3 sum(params)``, log-determinants ``1e-3 sum(params)``: one
    reduction, no bins), then ``rounds`` timed calls of each, alternating in this process."""
    import statistics

    import tensorflow as tf
    from flows import spline

    def stand_in(inputs, params, num_bins, tail_bound, inverse):
        z = 1e-3 * tf.reduce_sum(params, axis=-1)
        return inputs + z, z

    real, spline._rqs_rows = spline._rqs_rows, stand_in
    try:
        without = build_call()
    finally:
        spline._rqs_rows = real
    times = {"with": [], "without": []}
    print("| round | with the splines (ms/step) | without (ms/step) | share |\n|---|---|---|---|")
    for r in range(rounds):
        pair = [("with", call), ("without", without)]
        for name, c in (pair if r % 2 == 0 else pair[::-1]):
            times[name].append(_timed(c, batches, per_call) * 1e3)
        print(f"| {r + 1} | {times['with'][-1]:.1f} | {times['without'][-1]:.1f} | "
              f"{1 - times['without'][-1] / times['with'][-1]:.2f} |", flush=True)
    shares = [1 - b / a for a, b in zip(times["with"], times["without"])]
    print(f"medians: {statistics.median(times['with']):.1f} ms/step with the splines, "
          f"{statistics.median(times['without']):.1f} without; share {statistics.median(shares):.2f} "
          f"(range {min(shares):.2f}-{max(shares):.2f} over {rounds} rounds)")


def _timed(call, batches, per_call):
    start = time.perf_counter()
    call(batches, per_call, 0, 1)
    return (time.perf_counter() - start) / per_call


if __name__ == "__main__":
    main()
