"""Training throughput and fixed-budget quality of flows.training against zuko (PyTorch, CPU), one after the other.

    python benchmarks/bench_zuko.py                               # both tables, zuko from /tmp/zukovenv
    python benchmarks/bench_zuko.py --zuko-python benchmarks/.venv-zuko/bin/python --quality-steps 2000
    python benchmarks/bench_zuko.py --skip-quality --threads 2

zuko and torch are NOT dependencies of this project: they live in a separate virtual environment
(``python -m venv /tmp/zukovenv && /tmp/zukovenv/bin/pip install torch==2.13.0 zuko``) whose interpreter this
script starts for the zuko half (``--zuko-python``); the TensorFlow half runs in this process.

Throughput (table 1): steps/s of a full training step (batch gather from NumPy, forward, backward, Adam with
cosine annealing and gradient-norm clipping) for MAF, Real NVP, NSF (coupling and autoregressive) and Glow, same
architecture (``--layers`` transforms, ``--hidden`` units x 2 hidden layers, 8 spline bins, spline bound 5),
batch size and dimension (POWER, D = 6) on both sides, after ``--warmup`` untimed steps. Ours is measured
through :func:`flows.training.fit` itself (validation on 512 rows at the two timing marks; up to 32 steps per
compiled call), with and without XLA (``TrainConfig.jit_compile``: XLA compiles the whole call, Adam included).
zuko has no Glow; that row has ours only.

Quality (table 2): POWER test log-likelihood (nats, mean +/- 2 se over the whole test split) of MAF and NSF (AR)
after the same number of steps with the same recipe (Adam lr 1e-3, cosine annealing, clip 5, batch 512,
validation every ``--quality-steps``/5 steps, best validation weights tested).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
POWER = os.path.join(ROOT, "data", "processed", "power")
FLOWS = ["maf", "realnvp", "nsf_c", "nsf_ar", "glow"]


# ----------------------------------------------------------------------------------------------- zuko side
def zuko_flow(name, dim, layers, hidden):
    import zuko

    hf = (hidden, hidden)
    if name == "maf":
        return zuko.flows.MAF(dim, transforms=layers, hidden_features=hf)
    if name == "realnvp":
        return zuko.flows.RealNVP(dim, transforms=layers, hidden_features=hf)
    if name == "nsf_ar":
        return zuko.flows.NSF(dim, bins=8, transforms=layers, hidden_features=hf)
    if name == "nsf_c":
        return zuko.flows.NSF(dim, bins=8, transforms=layers, hidden_features=hf, passes=2)
    return None  # no Glow in zuko


def zuko_step(flow, opt, sched, x):
    """One training step of the recipe (mean NLL, gradient-norm clipping at 5, Adam, the schedule's step)."""
    import torch

    loss = -flow().log_prob(x).mean()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(flow.parameters(), 5.0)
    opt.step()
    sched.step()


def zuko_train(name, train, val, test, steps, batch, layers, hidden, seed, eval_every, threads, mark=None):
    """The same recipe as flows.training.fit, in PyTorch; returns timings and, with ``test``, the test LL."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    flow = zuko_flow(name, train.shape[1], layers, hidden)
    if flow is None:
        return None
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3, fused=True)  # torch's fastest CPU Adam
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    rng = np.random.default_rng(seed)
    n = len(train)
    val_t = torch.from_numpy(np.asarray(val[:20000]))
    best, best_state, marks = math.inf, None, {}
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = np.sort(rng.choice(n, size=batch, replace=False) if n < 10 * batch else rng.integers(0, n, batch))
        zuko_step(flow, opt, sched, torch.from_numpy(np.asarray(train[idx])))
        if mark and step in mark:
            marks[step] = time.perf_counter() - t0
        if eval_every and (step % eval_every == 0 or step == steps):
            with torch.no_grad():
                v = -float(torch.cat([flow().log_prob(b) for b in val_t.split(4096)]).mean())
            if v < best:
                best, best_state = v, {k: t.clone() for k, t in flow.state_dict().items()}
    out = {"seconds": time.perf_counter() - t0, "marks": marks}
    if test is not None:
        flow.load_state_dict(best_state)
        with torch.no_grad():
            lp = torch.cat([flow().log_prob(b) for b in torch.from_numpy(np.asarray(test)).split(4096)]).numpy()
        out.update(test_ll=float(lp.mean()), se=float(lp.std(ddof=1) / math.sqrt(len(lp))), best_val=best)
    return out


def zuko_main(args):
    import numpy as np

    train, val, test = (np.load(os.path.join(POWER, f"{s}.npy"), mmap_mode="r") for s in ("train", "val", "test"))
    results = {}
    if args.task == "throughput":
        total = args.warmup + args.steps
        for name in args.flows.split(","):
            r = zuko_train(name, train, val, None, total, args.batch, args.layers, args.hidden, 0, 0, args.threads,
                           mark={args.warmup, total})
            results[name] = None if r is None else args.steps / (r["marks"][total] - r["marks"][args.warmup])
    else:
        for name in ("maf", "nsf_ar"):
            results[name] = [zuko_train(name, train, val, test, args.quality_steps, 512, args.layers, args.hidden,
                                        seed, max(args.quality_steps // 5, 1), args.threads) for seed in _seeds(args)]
    print("JSON " + json.dumps(results), flush=True)


# ------------------------------------------------------------------------------------------------ our side
def our_flow(name, dim, layers, hidden):
    import flows

    hu = [hidden, hidden]
    if name == "maf":
        return flows.build_flow("maf", [dim], num_layers=layers, hidden_units=hu)
    if name == "realnvp":
        return flows.build_flow("realnvp", [dim], num_layers=layers, hidden_units=hu)
    if name in ("nsf_c", "nsf_ar"):
        form = "coupling" if name == "nsf_c" else "autoregressive"
        return flows.build_flow("nsf", [dim], num_layers=layers, form=form, num_bins=8, tail_bound=5.0,
                                hidden_units=hu, lu_linear=False)
    return flows.build_flow("glow", [dim], num_layers=layers, hidden_units=hu)


def _seeds(args):
    return [int(s) for s in str(args.seeds).split(",")]


def our_train(name, train, val, steps, batch, layers, hidden, eval_every, jit=False, max_val=20000, seed=0):
    from flows.training import TrainConfig, fit, set_seed

    set_seed(seed)
    flow = our_flow(name, train.shape[1], layers, hidden)
    cfg = TrainConfig(steps=steps, batch_size=batch, learning_rate=1e-3, eval_every=eval_every, clip_norm=5.0,
                      max_val=max_val, jit_compile=jit, seed=seed)
    history = fit(flow, train, val, cfg, log=lambda s: None)
    return flow, history


def tf_main(args):
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    sys.path.insert(0, ROOT)
    from flows.training import evaluate

    train, val, test = (np.load(os.path.join(POWER, f"{s}.npy"), mmap_mode="r") for s in ("train", "val", "test"))
    out = {}
    if not args.skip_throughput:
        # ours and zuko alternate flow by flow, --repeats times; each cell keeps its best rate, so a burst of load
        # from other processes on a shared machine penalises neither side systematically
        rows = {name: {False: 0.0, True: 0.0} for name in FLOWS}
        zuko = {name: 0.0 for name in FLOWS}
        for rep in range(args.repeats):
            for name in FLOWS:
                for jit in (False, True):
                    try:
                        # evaluations (512 rows) at the end of the warm-up and at the end: steps/s between the two
                        _, h = our_train(name, train, val, args.warmup + args.steps, args.batch, args.layers,
                                         args.hidden, args.warmup, jit=jit, max_val=512)
                        rows[name][jit] = max(rows[name][jit], args.steps / (h.seconds[-1] - h.seconds[0]))
                    except Exception as e:  # an op without an XLA kernel: report it, keep going
                        rows[name][jit] = f"failed: {type(e).__name__}"
                        print(f"{name} jit={jit}: {str(e).splitlines()[0][:200]}", file=sys.stderr)
                z = run_zuko(args, "throughput", name)[name]
                zuko[name] = None if z is None else max(zuko[name], z)
                print(f"repeat {rep}: {name}: ours {rows[name]}, zuko {z}; load {os.getloadavg()[0]:.1f}",
                      file=sys.stderr, flush=True)
        out["throughput"] = {"ours": rows, "zuko": zuko}
        print_throughput(args, rows, zuko)
    if not args.skip_quality:
        ours = {}
        for name in ("maf", "nsf_ar"):
            ours[name] = []
            for seed in _seeds(args):
                t0 = time.perf_counter()
                flow, h = our_train(name, train, val, args.quality_steps, 512, args.layers, args.hidden,
                                    max(args.quality_steps // 5, 1), seed=seed)
                seconds = time.perf_counter() - t0
                r = evaluate(flow, test)
                ours[name].append({"test_ll": r["test_ll"], "se": r["test_ll_se"], "best_val": h.best_val_loss,
                                   "seconds": seconds})
                print(f"ours {name} seed {seed}: {ours[name][-1]}", file=sys.stderr, flush=True)
        zuko = run_zuko(args, "quality")
        out["quality"] = {"ours": ours, "zuko": zuko}
        print_quality(args, ours, zuko)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


def run_zuko(args, task, flows_=",".join(FLOWS)):
    cmd = [args.zuko_python, os.path.abspath(__file__), "--backend", "zuko", "--task", task, "--flows", flows_]
    for k in ("steps", "warmup", "batch", "layers", "hidden", "threads", "quality_steps", "seeds"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"the zuko half failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.split("JSON ", 1)[1])


def _fmt(v):
    return f"{v:.1f}" if isinstance(v, float) else ("-" if v is None else str(v))


def print_throughput(args, ours, zuko):
    print(f"\nTraining steps/s on CPU ({args.threads} threads; best of {args.repeats}; load average now "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores), POWER D=6, batch {args.batch}, {args.layers} "
          f"transforms, 2x{args.hidden} hidden, {args.steps} timed steps after {args.warmup}")
    print("| flow | ours (tf.function) | ours (XLA) | zuko | ours / zuko | ours XLA / zuko | XLA / tf.function |")
    print("|---|---|---|---|---|---|---|")
    for name in FLOWS:
        a, b, z = ours[name][False], ours[name][True], zuko.get(name)
        ratio = f"{a / z:.2f}" if isinstance(a, float) and z else "-"
        ratio_xla = f"{b / z:.2f}" if isinstance(b, float) and z else "-"
        xla = f"{b / a:.2f}" if isinstance(a, float) and isinstance(b, float) else "-"
        print(f"| {name} | {_fmt(a)} | {_fmt(b)} | {_fmt(z)} | {ratio} | {ratio_xla} | {xla} |")


def print_quality(args, ours, zuko):
    print(f"\nPOWER test log-likelihood (nats, +/- 2 se over the test rows) after {args.quality_steps} steps, batch "
          f"512, {args.layers} transforms, 2x{args.hidden} hidden; seeds {args.seeds} (mean over seeds last)")
    print("| flow | seed | ours | zuko | ours s | zuko s |")
    print("|---|---|---|---|---|---|")
    for name in ("maf", "nsf_ar"):
        for seed, o, z in zip(_seeds(args), ours[name], zuko[name]):
            print(f"| {name} | {seed} | {o['test_ll']:.3f} +/- {2 * o['se']:.3f} | {z['test_ll']:.3f} +/- "
                  f"{2 * z['se']:.3f} | {o['seconds']:.0f} | {z['seconds']:.0f} |")
        mo = sum(o["test_ll"] for o in ours[name]) / len(ours[name])
        mz = sum(z["test_ll"] for z in zuko[name]) / len(zuko[name])
        print(f"| {name} | mean | {mo:.3f} | {mz:.3f} | | |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["tf", "zuko"], default="tf", help=argparse.SUPPRESS)
    ap.add_argument("--task", choices=["throughput", "quality"], default="throughput", help=argparse.SUPPRESS)
    ap.add_argument("--zuko-python", default="/tmp/zukovenv/bin/python", help="interpreter with torch and zuko")
    ap.add_argument("--steps", type=int, default=300, help="timed training steps per flow")
    ap.add_argument("--warmup", type=int, default=50, help="untimed steps first (tracing, allocation)")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads of each side (on a shared 2-core machine torch with 2 threads slows ~10x)")
    ap.add_argument("--quality-steps", type=int, default=3000)
    ap.add_argument("--seeds", default="0", help="quality: comma-separated seeds, each run on both sides")
    ap.add_argument("--repeats", type=int, default=3, help="throughput: best of this many alternating runs")
    ap.add_argument("--flows", default=",".join(FLOWS), help=argparse.SUPPRESS)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)
    if args.backend == "zuko":
        zuko_main(args)
    else:
        if not os.path.exists(os.path.join(POWER, "test.npy")):
            raise SystemExit(f"{POWER} is missing: run `dvc repro prepare@power` first")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        tf_main(args)


if __name__ == "__main__":
    main()
