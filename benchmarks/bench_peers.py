"""Training throughput of flows.training side by side with zuko (PyTorch) and flowjax (JAX), on CPU, in one run.

    python benchmarks/bench_peers.py                                   # peers from /tmp/zukovenv and /tmp/fjvenv
    python benchmarks/bench_peers.py --threads 1 --flows maf,nsf_ar_paper --repeats 3
    python benchmarks/bench_peers.py --zuko-python benchmarks/.venv-zuko/bin/python --flowjax-python /opt/fj/bin/python

zuko/torch and flowjax/jax are NOT dependencies of this project.  Each lives in its own virtual environment whose
interpreter this script starts for that peer's half (``--zuko-python``, ``--flowjax-python``)::

    python3.11 -m venv /tmp/zukovenv && /tmp/zukovenv/bin/pip install torch==2.13.0 zuko    # torch: the CPU build
    python3.11 -m venv /tmp/fjvenv && /tmp/fjvenv/bin/pip install "jax[cpu]" flowjax optax   # equinox, paramax come along
    dvc repro prepare@power                                                                    # data/processed/power

What is measured: steps/s of a full training step (batch of ``--batch`` rows drawn by NumPy from the POWER train
split, forward, backward, Adam lr 1e-3 with cosine decay over the run, global-norm clipping at 5) after
``--warmup`` untimed steps (tracing, compilation), for

* ``maf``, ``realnvp``, ``nsf_c`` (NSF coupling), ``nsf_ar`` (NSF autoregressive), ``glow``: the shapes of
  ``bench_zuko.py`` (POWER D = 6, 5 transforms, conditioners 2 x 64 hidden, 8 spline bins on [-5, 5], no LU
  layer in NSF), ``--steps`` timed steps.  Neither zuko nor flowjax has Glow: that row has ours only.
* ``nsf_ar_paper``: the NSF paper's RQ-NSF (AR) for POWER (Durkan et al. 2019, table 5): 10 transforms,
  conditioners = 2 residual blocks of 256 units, 8 bins on [-3, 3], ``--paper-steps`` timed steps.

  - ours: ``flows.build_flow("nsf", [6], form="autoregressive", num_layers=10, hidden_units=[256],
    residual_blocks=2, num_bins=8, tail_bound=3.0, lu_linear=True)``;
  - zuko 1.6: its ``MaskedMLP`` has a ``residual`` option (stem, then one ``x + L2(relu(L1(x)))`` block per hidden
    width after the first, then the output layer), so the same conditioner is ``zuko.flows.MAF(6, transforms=10,
    univariate=partial(MonotonicRQSTransform, bound=3.0), shapes=[(8,), (8,), (7,)], hidden_features=(256, 256),
    residual=True)`` (= ``zuko.flows.NSF`` with its bound 5 changed to 3; zuko has no LU layer: it reverses the
    order between transforms; the 6x6 LU products are left out of the count below);
  - flowjax 19: ``masked_autoregressive_flow`` has no residual option; the same matmul work is a plain masked MLP
    with ``nn_width=256, nn_depth=5`` (eqx's depth = hidden layers: 6->256, 4 x 256->256, 256->out, the matrices
    of a stem + 2 residual blocks + output) and ``transformer=RationalQuadraticSpline(knots=7, interval=3)``
    (flowjax's ``knots`` are the inner knots: 7 -> 8 bins; its spline also learns the two boundary derivatives,
    so 25 outputs per dimension against 23 here and in zuko).

  Matrix-product work per training step of that row, 2 * batch * sum(fan_in * fan_out) for the forward pass and
  x 3 for forward + backward, at batch 512: ours and zuko 10 * (6*256 + 4*256*256 + 256*138) -> 9.19 GFLOP,
  flowjax 10 * (6*256 + 4*256*256 + 256*150) -> 9.28 GFLOP (``paper_gflop``); the table prints GFLOP/s from it.

Each side at each of ``--threads`` (default 1 and 2), every side alone (one after the other, never two at once),
each in a child process pinned to the first 1 or 2 of the cores the script may use (``taskset`` narrows them) with
``os.sched_setaffinity``:

* ours: a child of this interpreter (TensorFlow's thread pools are fixed once created), timed through
  :func:`flows.training.fit` itself (validation on 512 rows at the end of the warm-up and at the end; steps/s between
  the two marks; up to 32 steps per compiled call; the warm-up is ``max(--warmup, timed steps)`` steps,
  :func:`timing_warmup`, so that no other validation falls between the marks: before 2026-12-06 it was ``--warmup``
  and ``fit`` validated at every multiple of it, 7 validations inside the window of 200 steps) with and without XLA
  (``TrainConfig.jit_compile``), and for the paper row also with ``TrainConfig.matmul_dtype="bfloat16"`` outside XLA
  (the column "ours bf16 products"; "ours best" is float32's); with several threads each of those also with the batch
  in one shard per thread (``TrainConfig.batch_shards``: the shards' ops run at once, one per core; "ours best"
  includes them); intra- and inter-op threads set with ``tf.config.threading``;
* zuko: as ``bench_zuko.py`` (``torch.set_num_threads``, fused Adam, ``CosineAnnealingLR``, ``clip_grad_norm_``);
* flowjax: an ``optax.chain(clip_by_global_norm(5), adam(cosine_decay_schedule(1e-3, steps)))`` loop written with
  ``equinox.filter_jit`` / ``filter_value_and_grad`` over ``dist.log_prob`` (not ``fit_to_data``), timed two
  ways: one jit-compiled step per Python call ("jit") and a ``jax.lax.scan`` over 32 steps per call ("scan",
  32 batches stacked by NumPy per call), compilation excluded; 1 thread is
  ``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"`` plus the pinning.

Flow by flow the sides alternate (ours, flowjax, zuko), ``--repeats`` times; every cell keeps its best rate, so a
burst of load from other processes penalises no side systematically.  Before the flows, TensorFlow's own matmul
ceiling on this CPU: a chain of 20 products [512, 256] @ [256, 256], GFLOP/s at each thread count, in float32 as a
tf.function (oneDNN) and under XLA (Eigen; the float32 ceiling is the better of the two), and in bfloat16 as a
tf.function, and with several threads also one independent chain per thread in the same function (run at once:
the rate sharded batches can reach); the paper row also gets its GFLOP/s against the float32 and the bfloat16
ceilings (the one-chain ceiling, as issue 13 defines it, and the one-chain-per-thread one).  Those ceilings are
measured minutes before the paper row, and this VM's speed drifts by a third within minutes, so each float32 run of
the paper row is also bracketed by the float32 chain in its own process (just before and just after it, each the
better of tf.function and XLA, timed as one 2 s window) and its GFLOP/s are also given against their mean.

Output: markdown (printed and written to ``--out-md``, with the command, CPU model, AMX / AVX512-BF16 flags, date and
load average) and the raw numbers as JSON (``--out-json``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_zuko import POWER, ROOT, our_flow, zuko_flow, zuko_step  # noqa: E402  (stdlib-only at import time)

FLOWS = ["maf", "realnvp", "nsf_c", "nsf_ar", "glow", "nsf_ar_paper"]
LAYERS, HIDDEN, BATCH = 5, 64, 512  # the shapes of bench_zuko.py
PAPER = {"layers": 10, "width": 256, "blocks": 2, "bins": 8, "bound": 3.0}
SCAN = 32  # steps per call of flowjax's scanned loop
CEIL_CHAIN, CEIL_M, CEIL_K = 20, 512, 256  # the matmul ceiling: CEIL_CHAIN products [M, K] @ [K, K]
RESULTS = os.path.join(HERE, "results")


def timing_warmup(warmup: int, steps: int) -> int:
    """Untimed steps before ``steps`` timed ones through ``fit``: ``--warmup``, or ``steps`` if that is more.

    ``fit`` validates at every multiple of ``eval_every`` and at the end; the timed window runs from the validation
    that ends the warm-up to the last one, so with ``eval_every`` = the warm-up and the warm-up at least ``steps``,
    no other validation falls inside it (the peers' loops validate nothing)."""
    return max(int(warmup), int(steps))


def paper_gflop(side: str, dim: int = 6, batch: int = BATCH) -> float:
    """Matrix-product GFLOP of one training step (forward + backward = 3 x forward) of the paper row on ``side``."""
    per_dim = {"ours": 3 * PAPER["bins"] - 1, "zuko": 3 * PAPER["bins"] - 1, "flowjax": 3 * (PAPER["bins"] - 1) + 4}
    h, out = PAPER["width"], dim * per_dim[side]
    macs = PAPER["layers"] * (dim * h + 2 * PAPER["blocks"] * h * h + h * out)
    return 3 * 2 * batch * macs / 1e9


def _pin(threads: int):
    """Pin this process to the first ``threads`` cores it may run on (before any framework creates its thread
    pools): {0} or {0, 1} by default, {1} under ``taskset -c 1`` (to leave core 0 to something else)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(allowed[:max(1, threads)]))
    except (AttributeError, OSError):
        pass


def _data():
    import numpy as np

    return tuple(np.load(os.path.join(POWER, f"{s}.npy"), mmap_mode="r") for s in ("train", "val"))


def _batch_indices(rng, n, batch):
    import numpy as np

    return np.sort(rng.choice(n, size=batch, replace=False) if n < 10 * batch else rng.integers(0, n, batch))


def _emit(obj):
    print("JSON " + json.dumps(obj), flush=True)


# ------------------------------------------------------------------------------------------------ ours (child)
def tf_child(args):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import tensorflow_probability as tfp

    versions = {"tensorflow": tf.__version__, "tensorflow_probability": tfp.__version__}
    if args.task == "ceiling":
        out = {"versions": versions, **{dt: tf_ceiling(tf, dt) for dt in ("float32", "bfloat16")},
               "float32_xla": tf_ceiling(tf, "float32", jit=True)}
        if args.threads > 1:  # one independent chain per thread in one graph: what sharded batches can reach
            out.update({f"{dt}_parallel": tf_ceiling(tf, dt, parallel=args.threads) for dt in ("float32", "bfloat16")})
        _emit(out)
        return
    sys.path.insert(0, ROOT)
    import flows
    from flows.training import TrainConfig, fit, set_seed

    train, val = _data()
    steps = args.paper_steps if args.flow == "nsf_ar_paper" else args.steps
    out = {"versions": versions}
    runs = [("tf_function", False, "float32", 1), ("xla", True, "float32", 1)]
    if args.flow == "nsf_ar_paper":  # the bfloat16 lever (TrainConfig.matmul_dtype), outside XLA: XLA has no AMX path
        runs.append(("bf16", False, "bfloat16", 1))
    if args.threads > 1:  # the batch in one shard per thread (TrainConfig.batch_shards): only with several cores
        runs += [(f"{key}_shards", jit, mm, args.threads) for key, jit, mm, _ in runs]
    paper, beside = args.flow == "nsf_ar_paper", None
    for key, jit, mm, shards in runs:
        if paper and mm == "float32" and beside is None:  # the float32 chain just before this run
            beside = _ceiling_beside(tf)
        elif mm != "float32":
            beside = None
        try:
            set_seed(0)
            if args.flow == "nsf_ar_paper":
                flow = flows.build_flow("nsf", [train.shape[1]], form="autoregressive", num_layers=PAPER["layers"],
                                        hidden_units=[PAPER["width"]], residual_blocks=PAPER["blocks"],
                                        num_bins=PAPER["bins"], tail_bound=PAPER["bound"], lu_linear=True)
            else:
                flow = our_flow(args.flow, train.shape[1], LAYERS, HIDDEN)
            warm = timing_warmup(args.warmup, steps)
            cfg = TrainConfig(steps=warm + steps, batch_size=args.batch, learning_rate=1e-3,
                              eval_every=warm, clip_norm=5.0, max_val=512, jit_compile=jit, seed=0,
                              matmul_dtype=mm, batch_shards=shards)
            h = fit(flow, train, val, cfg, log=lambda s: None)
            out[key] = (h.step[-1] - h.step[0]) / (h.seconds[-1] - h.seconds[0])
            if paper and mm == "float32":  # the chain again just after: this run's ceiling is the two's mean
                after = _ceiling_beside(tf)
                out[f"{key}_ceiling_beside"], beside = (beside + after) / 2, after
        except Exception as e:  # e.g. an op without an XLA kernel: report it, keep going
            out[key] = f"failed: {type(e).__name__}"
            print(f"ours {args.flow} {key}: {str(e).splitlines()[0][:300] if str(e) else e!r}", file=sys.stderr)
    _emit(out)


def _ceiling_beside(tf, seconds=2.0):
    """The float32 ceiling measured beside a paper-row run: the better of the tf.function and XLA chains, each
    timed over ``seconds`` as one chunk (a mean over a window, like a run's rate; not a best of chunks)."""
    return max(tf_ceiling(tf, "float32", seconds=seconds, chunks=1, jit=jit) for jit in (False, True))


def tf_ceiling(tf, dtype, seconds=1.0, chunks=3, jit=False, parallel=1):
    """GFLOP/s of a tf.function chain of CEIL_CHAIN products [M, K] @ [K, K] (best of ``chunks`` timed chunks);
    ``jit``: compiled by XLA (whose CPU dots are Eigen's, not oneDNN's: faster with 2 threads on some CPUs);
    ``parallel``: that many independent chains in the one function (TensorFlow runs them at once, as it runs the
    shards of ``TrainConfig.batch_shards``)."""
    dt = tf.as_dtype(dtype)
    g = tf.random.Generator.from_seed(0)
    x = tf.cast(g.normal([CEIL_M, CEIL_K]), dt)
    w = tf.cast(g.normal([CEIL_K, CEIL_K]) / math.sqrt(CEIL_K), dt)  # keeps the chain's scale about constant

    @tf.function(jit_compile=jit)
    def chain(x, w):
        outs = []
        for i in range(parallel):  # from the argument: nothing constant to fold
            y = x if i == 0 else x * (1.0 + 0.01 * i)
            for _ in range(CEIL_CHAIN):
                y = tf.matmul(y, w)
            outs.append(y)
        return tf.add_n(outs)

    chain(x, w).numpy()  # trace
    flop = parallel * CEIL_CHAIN * 2 * CEIL_M * CEIL_K * CEIL_K
    best = 0.0
    for _ in range(chunks):
        n, t0 = 0, time.perf_counter()
        while True:
            chain(x, w).numpy()
            n += 1
            t = time.perf_counter() - t0
            if t >= seconds / chunks and n >= 2:
                break
        best = max(best, n * flop / t / 1e9)
    return best


# ------------------------------------------------------------------------------------------------ zuko (child)
def zuko_child(args):
    import numpy as np
    import torch
    import zuko

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    versions = {"torch": torch.__version__, "zuko": zuko.__version__}
    train, _ = _data()
    dim = train.shape[1]
    if args.flow == "nsf_ar_paper":
        from functools import partial

        from zuko.transforms import MonotonicRQSTransform

        b = PAPER["bins"]
        flow = zuko.flows.MAF(dim, transforms=PAPER["layers"],
                              univariate=partial(MonotonicRQSTransform, bound=PAPER["bound"], slope=1e-3),
                              shapes=[(b,), (b,), (b - 1,)], hidden_features=(PAPER["width"],) * PAPER["blocks"],
                              residual=True)
        steps = args.paper_steps
    else:
        flow = zuko_flow(args.flow, dim, LAYERS, HIDDEN)
        steps = args.steps
    if flow is None:
        _emit({"versions": versions, "rate": None})
        return
    total = args.warmup + steps
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3, fused=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    rng = np.random.default_rng(0)
    t0 = None
    for step in range(1, total + 1):
        zuko_step(flow, opt, sched, torch.from_numpy(np.asarray(train[_batch_indices(rng, len(train), args.batch)])))
        if step == args.warmup:
            t0 = time.perf_counter()
    _emit({"versions": versions, "rate": steps / (time.perf_counter() - t0)})


# --------------------------------------------------------------------------------------------- flowjax (child)
def flowjax_flow(name, dim, key):
    import jax.numpy as jnp
    from flowjax.bijections import RationalQuadraticSpline
    from flowjax.distributions import Normal
    from flowjax.flows import coupling_flow, masked_autoregressive_flow

    base = Normal(jnp.zeros(dim))
    small = {"flow_layers": LAYERS, "nn_width": HIDDEN, "nn_depth": 2}
    spline = RationalQuadraticSpline(knots=7, interval=5.0)  # 7 inner knots = 8 bins on [-5, 5]
    if name == "maf":
        return masked_autoregressive_flow(key, base_dist=base, **small)
    if name == "realnvp":
        return coupling_flow(key, base_dist=base, **small)
    if name == "nsf_c":
        return coupling_flow(key, base_dist=base, transformer=spline, **small)
    if name == "nsf_ar":
        return masked_autoregressive_flow(key, base_dist=base, transformer=spline, **small)
    if name == "nsf_ar_paper":  # no residual option: 5 hidden layers of 256 = the matrices of 2 residual blocks
        return masked_autoregressive_flow(
            key, base_dist=base, flow_layers=PAPER["layers"], nn_width=PAPER["width"], nn_depth=1 + 2 * PAPER["blocks"],
            transformer=RationalQuadraticSpline(knots=PAPER["bins"] - 1, interval=PAPER["bound"]))
    return None  # no Glow in flowjax


def flowjax_child(args):
    import equinox as eqx
    import flowjax
    import jax
    import numpy as np
    import optax
    import paramax

    try:
        from importlib.metadata import version

        fj_version = version("flowjax")
    except Exception:
        fj_version = getattr(flowjax, "__version__", "?")
    versions = {"jax": jax.__version__, "flowjax": fj_version, "optax": optax.__version__, "equinox": eqx.__version__}
    train, _ = _data()
    dim = train.shape[1]
    steps = args.paper_steps if args.flow == "nsf_ar_paper" else args.steps
    out = {"versions": versions}
    if flowjax_flow(args.flow, dim, jax.random.key(0)) is None:
        _emit({**out, "step": None, "scan": None})
        return

    def loss_fn(params, static, x):
        dist = paramax.unwrap(eqx.combine(params, static))
        return -dist.log_prob(x).mean()

    for mode in ("step", "scan"):
        flow = flowjax_flow(args.flow, dim, jax.random.key(0))
        params, static = eqx.partition(flow, eqx.is_inexact_array,
                                       is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable))
        per_call = 1 if mode == "step" else SCAN
        warm_calls = max(1, -(-args.warmup // per_call))
        timed_calls = max(1, -(-steps // per_call))
        total = (warm_calls + timed_calls) * per_call
        opt = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(optax.cosine_decay_schedule(1e-3, total)))
        opt_state = opt.init(params)

        def one_step(params, opt_state, x):
            loss, grads = eqx.filter_value_and_grad(loss_fn)(params, static, x)
            updates, opt_state = opt.update(grads, opt_state, params)
            return eqx.apply_updates(params, updates), opt_state, loss

        if mode == "step":
            call = eqx.filter_jit(one_step)
        else:
            @eqx.filter_jit
            def call(params, opt_state, xs):
                def body(carry, x):
                    p, s, loss = one_step(*carry, x)
                    return (p, s), loss

                (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), xs)
                return params, opt_state, losses[-1]

        rng = np.random.default_rng(0)

        def draw():
            if per_call == 1:
                return np.asarray(train[_batch_indices(rng, len(train), args.batch)])
            return np.stack([np.asarray(train[_batch_indices(rng, len(train), args.batch)]) for _ in range(per_call)])

        for _ in range(warm_calls):  # the first compiles
            params, opt_state, loss = call(params, opt_state, draw())
        jax.block_until_ready((params, opt_state, loss))
        t0 = time.perf_counter()
        for _ in range(timed_calls):
            params, opt_state, loss = call(params, opt_state, draw())
        jax.block_until_ready((params, opt_state, loss))
        out[mode] = timed_calls * per_call / (time.perf_counter() - t0)
        if not math.isfinite(float(loss)):
            out[mode] = "failed: non-finite loss"
    _emit(out)


# ------------------------------------------------------------------------------------------------- the parent
def run_child(args, python, backend, threads, task="throughput", flow=None):
    """Run this script as ``--backend`` in ``python``, pinned to ``threads`` cores; its JSON or {"error": ...}."""
    cmd = [python, os.path.abspath(__file__), "--backend", backend, "--task", task, "--threads", str(threads)]
    if flow:
        cmd += ["--flow", flow]
    for k in ("steps", "warmup", "paper_steps", "batch"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    t = str(threads)
    env = {**os.environ, "OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t,
           "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    if backend == "flowjax":
        env.pop("XLA_FLAGS", None)
        if threads == 1:
            env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or "JSON " not in proc.stdout:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        print(f"{backend} {task} {flow or ''} threads={threads} failed (rc {proc.returncode}): {tail[0][:300]}\n"
              f"  {shlex.join(cmd)}", file=sys.stderr, flush=True)
        return {"error": f"failed: rc {proc.returncode}"}
    if proc.stderr.strip() and backend == "tf":
        for line in proc.stderr.splitlines():
            if line.startswith("ours "):
                print(line, file=sys.stderr)
    return json.loads(proc.stdout.split("JSON ", 1)[1].splitlines()[0])


def _better(old, new):
    """The larger rate; a number beats a failure message; None (no such flow) stays None."""
    if isinstance(new, (int, float)) and not isinstance(new, bool):
        return max(old, new) if isinstance(old, (int, float)) else float(new)
    return old if isinstance(old, (int, float)) else new


def machine_facts():
    model, flags = platform.processor() or "?", set()
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "Flags":
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "amx_bf16": "amx_bf16" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "python": platform.python_version()}


def cpu_tag(model: str) -> str:
    """``epyc``, ``xeon`` or ``cpu``: the results file of a run is named after the CPU it ran on."""
    low = model.lower()
    return "epyc" if "epyc" in low else "xeon" if "xeon" in low else "cpu"


def parent(args):
    for opt, path in (("--zuko-python", args.zuko_python), ("--flowjax-python", args.flowjax_python)):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise SystemExit(f"{opt} {path}: no such interpreter; install the peer's venv (see this script's "
                             f"docstring) or pass {opt} PATH")
    if not os.path.exists(os.path.join(POWER, "train.npy")):
        raise SystemExit(f"{POWER} is missing: run `dvc repro prepare@power` first")
    names = [f.strip() for f in args.flows.split(",") if f.strip()]
    bad = [f for f in names if f not in FLOWS]
    if bad:
        raise SystemExit(f"--flows: unknown {', '.join(bad)}; accepted: {', '.join(FLOWS)}")
    threads = [int(t) for t in str(args.threads).split(",")]
    started = datetime.datetime.now().astimezone()
    facts = {**machine_facts(), "date": started.isoformat(timespec="seconds"),
             "load_start": [round(x, 2) for x in os.getloadavg()]}
    tag = cpu_tag(facts["cpu"])  # the default results files are named after the CPU
    args.out_md = args.out_md or os.path.join(RESULTS, f"peers_{tag}.md")
    args.out_json = args.out_json or os.path.join(RESULTS, f"peers_{tag}.json")
    command = shlex.join([os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(os.path.abspath(ROOT))
                          else sys.executable, os.path.relpath(os.path.abspath(__file__), os.path.abspath(ROOT)),
                          *sys.argv[1:]])
    versions = {}

    ceiling = {}
    for t in threads:
        r = run_child(args, sys.executable, "tf", t, task="ceiling")
        versions.update(r.pop("versions", {}))
        ceiling[t] = r
        print(f"matmul ceiling, {t} threads: {r}", file=sys.stderr, flush=True)

    ours_keys = ("tf_function", "xla", "bf16", "tf_function_shards", "xla_shards", "bf16_shards")
    cells = {(n, t): {**{k: None for k in ours_keys}, "fj_step": None, "fj_scan": None, "zuko": None}
             for n in names for t in threads}
    for rep in range(args.repeats):
        for t in threads:
            for name in names:
                c = cells[name, t]
                r = run_child(args, sys.executable, "tf", t, flow=name)
                versions.update(r.pop("versions", {}))
                for k in ours_keys:
                    if (not k.startswith("bf16") or name == "nsf_ar_paper") and (t > 1 or not k.endswith("shards")):
                        new = r.get(k, r.get("error"))
                        if _num(new) and _num(r.get(f"{k}_ceiling_beside")) and (not _num(c[k]) or new > c[k]):
                            c[f"{k}_ceiling_beside"] = r[f"{k}_ceiling_beside"]  # that of the run kept
                        c[k] = _better(c[k], new)
                r = run_child(args, args.flowjax_python, "flowjax", t, flow=name)
                versions.update(r.pop("versions", {}))
                c["fj_step"] = _better(c["fj_step"], r.get("step", r.get("error")))
                c["fj_scan"] = _better(c["fj_scan"], r.get("scan", r.get("error")))
                r = run_child(args, args.zuko_python, "zuko", t, flow=name)
                versions.update(r.pop("versions", {}))
                c["zuko"] = _better(c["zuko"], r.get("rate", r.get("error")))
                print(f"repeat {rep}: {name}, {t} threads: {c}; load {os.getloadavg()[0]:.1f}", file=sys.stderr,
                      flush=True)
    facts["load_end"] = [round(x, 2) for x in os.getloadavg()]
    facts["seconds"] = round((datetime.datetime.now().astimezone() - started).total_seconds())
    md = render(args, command, facts, versions, ceiling, cells, names, threads)
    print(md)
    for path in (args.out_md, args.out_json):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(args.out_md, "w") as f:
        f.write(md)
    with open(args.out_json, "w") as f:
        json.dump({"command": command, "machine": facts, "versions": versions,
                   "settings": {"steps": args.steps, "warmup": args.warmup, "paper_steps": args.paper_steps,
                                "repeats": args.repeats, "batch": args.batch, "threads": threads,
                                "paper_gflop_per_step": {s: paper_gflop(s, batch=args.batch)
                                                         for s in ("ours", "zuko", "flowjax")}},
                   "ceiling_gflops": {str(t): v for t, v in ceiling.items()},
                   "steps_per_s": {n: {str(t): cells[n, t] for t in threads} for n in names}}, f, indent=2)
    print(f"wrote {args.out_md} and {args.out_json}", file=sys.stderr)


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(v, digits=1):
    return f"{v:.{digits}f}" if _num(v) else ("-" if v is None else str(v))


def _best(*vs):
    nums = [v for v in vs if _num(v)]
    return max(nums) if nums else None


def _ratio(a, b):
    return f"{a / b:.2f}" if _num(a) and _num(b) and b else "-"


def render(args, command, facts, versions, ceiling, cells, names, threads):
    flag = {True: "present", False: "absent"}
    lines = [
        "# Training throughput: flows.training vs flowjax (JAX) vs zuko (PyTorch), CPU",
        "",
        f"Command: `{command}`  ",
        f"Machine: {facts['cpu']}, {facts['cores']} cores; amx_bf16 {flag[facts['amx_bf16']]}, avx512_bf16 "
        f"{flag[facts['avx512_bf16']]} (lscpu)  ",
        f"Date: {facts['date']}; load average (1/5/15 min) at the start {facts['load_start']}, at the end "
        f"{facts['load_end']}; {facts['seconds']} s in all  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())),
        "",
        f"## TensorFlow's matmul ceiling (a chain of {CEIL_CHAIN} products [{CEIL_M}, {CEIL_K}] @ [{CEIL_K}, {CEIL_K}], "
        "GFLOP/s; float32 as a tf.function (oneDNN) and under XLA (Eigen), bfloat16 as a tf.function; the float32 "
        "ceiling below is the better of the two; with several threads also one independent chain per thread in the "
        "same tf.function, run at once: the rate the batch's shards (`TrainConfig.batch_shards`) can reach)",
        "",
        "| threads | float32, tf.function | float32, XLA | bfloat16, tf.function | float32, one chain per thread | "
        "bfloat16, one chain per thread |",
        "|---|---|---|---|---|---|",
    ]
    for t in threads:
        c = ceiling[t]
        lines.append(f"| {t} | " + " | ".join(_fmt(c.get(k, c.get("error") if t > 1 or "parallel" not in k else None))
                                             for k in ("float32", "float32_xla", "bfloat16", "float32_parallel",
                                                       "bfloat16_parallel")) + " |")
    lines += [
        "",
        f"## Training steps/s (best of {args.repeats}; each side alone, pinned to the first `threads` cores)",
        "",
        f"POWER D=6, batch {args.batch}; rows but nsf_ar_paper: {LAYERS} transforms, 2x{HIDDEN} hidden, 8 bins on "
        f"[-5, 5], {args.steps} timed steps after {args.warmup}; nsf_ar_paper: {PAPER['layers']} transforms, "
        f"{PAPER['blocks']} residual blocks of {PAPER['width']} (flowjax: 5 hidden layers of 256), 8 bins on "
        f"[-3, 3], {args.paper_steps} timed steps after {args.warmup}. flowjax: jit step / {SCAN}-step scan per "
        "call. '-': the peer has no such flow. Ours in float32 (tf.function, XLA) and, for nsf_ar_paper, with "
        "`TrainConfig(matmul_dtype='bfloat16')` outside XLA (the hidden products in bfloat16; 'ours best' is the "
        "float32 best). With several threads each also with the batch in one shard per thread "
        "(`TrainConfig(batch_shards=threads)`, the column 'ours, shards': tf.function / XLA, and bf16 for "
        "nsf_ar_paper); 'ours best' is the best float32 rate with or without shards.",
        "",
        "| flow | threads | ours (tf.function) | ours (XLA) | ours, shards | ours best | ours bf16 products | "
        "flowjax jit/scan | zuko | ours best / flowjax best | ours best / zuko |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        for t in threads:
            c = cells[n, t]
            ours = _best(c["tf_function"], c["xla"], c.get("tf_function_shards"), c.get("xla_shards"))
            fj = _best(c["fj_step"], c["fj_scan"])
            fj_cell = "-" if c["fj_step"] is None and c["fj_scan"] is None else \
                f"{_fmt(c['fj_step'])} / {_fmt(c['fj_scan'])}"
            shards = "-" if t == 1 else f"{_fmt(c.get('tf_function_shards'))} / {_fmt(c.get('xla_shards'))}" + (
                f" / {_fmt(c.get('bf16_shards'))}" if n == "nsf_ar_paper" else "")
            bf16 = _best(c.get("bf16"), c.get("bf16_shards"))
            lines.append(f"| {n} | {t} | {_fmt(c['tf_function'])} | {_fmt(c['xla'])} | {shards} | {_fmt(ours)} | "
                         f"{_fmt(bf16)} | {fj_cell} | {_fmt(c['zuko'])} | {_ratio(ours, fj)} | "
                         f"{_ratio(ours, c['zuko'])} |")
    if "nsf_ar_paper" in names:
        g = {s: paper_gflop(s, batch=args.batch) for s in ("ours", "zuko", "flowjax")}
        lines += [
            "",
            f"## nsf_ar_paper: matmul GFLOP/s (2 x batch x sum(fan_in x fan_out) x 3 per step: ours "
            f"{g['ours']:.2f}, zuko {g['zuko']:.2f}, flowjax {g['flowjax']:.2f} GFLOP)",
            "",
            "'ours float32 / ceiling beside it': the best float32 run's matrix GFLOP/s against the float32 chain "
            "measured in the same process just before and just after that run (their mean; each the better of "
            "tf.function and XLA over 2 s): on a VM whose speed drifts within minutes, the ceiling of the same "
            "minute. 'ours float32 / float32 ceiling': against the ceiling table above, measured at the start.",
            "",
            "| threads | ours best (float32) | ours best (bf16 products) | flowjax best | zuko | ours float32 / "
            "ceiling beside it | ours float32 / float32 ceiling | ours bf16 / bfloat16 ceiling | "
            "ours bf16 / flowjax best |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for t in threads:  # the ceilings: one chain on every thread (the issue's), and one chain per thread
            c = cells["nsf_ar_paper", t]
            ours = _best(c["tf_function"], c["xla"], c.get("tf_function_shards"), c.get("xla_shards"))
            bf = _best(c.get("bf16"), c.get("bf16_shards"))
            fj = _best(c["fj_step"], c["fj_scan"])
            o = ours * g["ours"] if _num(ours) else None
            b = bf * g["ours"] if _num(bf) else None
            z = c["zuko"] * g["zuko"] if _num(c["zuko"]) else None
            f = fj * g["flowjax"] if _num(fj) else None
            ceil32 = _best(ceiling[t].get("float32"), ceiling[t].get("float32_xla"))
            keys = ("tf_function", "xla", "tf_function_shards", "xla_shards")
            best_key = max((k for k in keys if _num(c.get(k))), key=lambda k: c[k], default=None)
            near = c.get(f"{best_key}_ceiling_beside") if best_key else None
            beside = f"{_ratio(o, near)} (of {_fmt(near)}, {best_key})" if _num(near) else "-"

            def of(x, one, par):
                return _ratio(x, one) + (f" ({_ratio(x, par)} of one chain per thread)" if _num(par) else "")
            lines.append(f"| {t} | {_fmt(o)} | {_fmt(b)} | {_fmt(f)} | {_fmt(z)} | {beside} | "
                         f"{of(o, ceil32, ceiling[t].get('float32_parallel'))} | "
                         f"{of(b, ceiling[t].get('bfloat16'), ceiling[t].get('bfloat16_parallel'))} | "
                         f"{_ratio(bf, fj)} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["parent", "tf", "zuko", "flowjax"], default="parent", help=argparse.SUPPRESS)
    ap.add_argument("--task", choices=["throughput", "ceiling"], default="throughput", help=argparse.SUPPRESS)
    ap.add_argument("--flow", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=300, help="timed training steps per flow (default 300)")
    ap.add_argument("--warmup", type=int, default=50, help="untimed steps first: tracing, compilation (default 50)")
    ap.add_argument("--paper-steps", type=int, default=60,
                    help="timed steps of the nsf_ar_paper row (default 60; about 10 steps/s)")
    ap.add_argument("--repeats", type=int, default=2, help="best of this many alternating runs (default 2)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--flows", default=",".join(FLOWS), help=f"comma-separated rows (default {','.join(FLOWS)})")
    ap.add_argument("--batch", type=int, default=BATCH, help=argparse.SUPPRESS)
    ap.add_argument("--zuko-python", default="/tmp/zukovenv/bin/python", help="interpreter with torch and zuko")
    ap.add_argument("--flowjax-python", default="/tmp/fjvenv/bin/python",
                    help="interpreter with jax, flowjax, equinox and optax")
    ap.add_argument("--out-md", help="markdown tables (default benchmarks/results/peers_<cpu>.md, <cpu> = epyc, "
                    "xeon or cpu from lscpu's model name)")
    ap.add_argument("--out-json", help="raw numbers (default benchmarks/results/peers_<cpu>.json)")
    args = ap.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.paper_steps < 1 or args.repeats < 1:
        raise SystemExit("--steps, --warmup, --paper-steps and --repeats must be >= 1")
    if args.backend == "parent":
        parent(args)
        return
    args.threads = int(args.threads)  # a child runs at one thread count
    _pin(args.threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    {"tf": tf_child, "zuko": zuko_child, "flowjax": flowjax_child}[args.backend](args)


if __name__ == "__main__":
    main()
