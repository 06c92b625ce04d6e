"""How long the paper-scale configuration (params-paper.yaml) takes: measured time per training step of every cell,
times the cell's step budget.

    python benchmarks/paper_budget.py                         # ours (TensorFlow), on the device TF picks
    python benchmarks/paper_budget.py --backend zuko          # the PyTorch/zuko reference (GPU if torch sees one)
    python benchmarks/paper_budget.py --cells nsf-power,maf-gas --steps 20 --json out.json
    python benchmarks/paper_budget.py --params params-paper-images.yaml --steps 3 --warmup 1   # the image cells

For each cell of the paper grid, the flow is built with the cell's hyper-parameters (the flow's section plus the
data set's overrides, exactly as `dvc repro` does) for the data set's dimension, and trained on standard-normal
rows of that dimension with the cell's batch size: ``max(--warmup, --steps)`` untimed steps (ours; zuko's are
``--warmup``), then ``--steps`` timed ones.
Ours is the real training step of :func:`flows.training.fit` (Adam, cosine annealing, clipping; XLA when the cell
asks for it). The estimate is ``seconds/step x train.steps``: an upper bound, since early stopping (``patience``)
usually ends a run sooner, and it leaves out evaluation (every ``eval_every`` steps, on up to ``max_val`` rows).

zuko has MAF, Real NVP, NSF and NAF only (architectures as close as zuko allows: no batch norm, its own NAF
network); the other cells print n/a. torch and zuko are not project dependencies (see README.md in this folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DIMS = {"power": 6, "gas": 8, "hepmass": 21, "miniboone": 43, "bsds300": 63, "moons": 2, "digits": 64,
        "mnist": (28, 28, 1), "celeba": (64, 64, 3), "celeba32": (32, 32, 3)}  # images: the flow sees [h, w, c]


def load_cells(path, only=None):
    import dataclasses

    sys.path.insert(0, ROOT)
    from stages.common import cell_settings, load_params

    params = load_params(path)  # validated; each cell resolved by the library, as the train stage does
    cells = []
    for ds in params["grid"]["datasets"]:
        for fl in params["grid"]["flows"]:
            name = f"{fl}-{ds}"
            if only and name not in only:
                continue
            hp, config = cell_settings(params, fl, ds)
            train = dataclasses.asdict(config)
            cells.append({"cell": name, "flow": fl, "dataset": ds, "dim": DIMS[ds], "hparams": hp, "train": train})
    return cells


def time_ours(cell, warmup, steps):
    import numpy as np

    sys.path.insert(0, ROOT)
    import flows
    from flows.training import TrainConfig, fit, set_seed

    set_seed(0)
    shape = list(cell["dim"]) if isinstance(cell["dim"], tuple) else [cell["dim"]]
    flow = flows.build_flow(cell["flow"], shape, **cell["hparams"])
    t = cell["train"]
    rows = max(20 * t["batch_size"], 4096 if len(shape) == 1 else 256)
    x = np.random.default_rng(0).normal(size=[rows] + shape).astype(np.float32)
    warmup = max(warmup, steps)  # fit validates at every multiple of eval_every: none inside the timed window
    cfg = TrainConfig(steps=warmup + steps, batch_size=t["batch_size"], learning_rate=t["learning_rate"],
                      clip_norm=t.get("clip_norm", 5.0), eval_every=warmup, max_val=256,
                      jit_compile=bool(t.get("jit_compile", False)), seed=0)
    h = fit(flow, x, x[:256], cfg, log=lambda s: None)
    return (h.seconds[-1] - h.seconds[0]) / steps


def time_zuko(cell, warmup, steps):
    import torch
    import zuko

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    hp, d, fl = cell["hparams"], cell["dim"], cell["flow"]
    if isinstance(d, tuple):
        return None  # zuko has no image flows
    hf = tuple(hp.get("hidden_units", (64, 64)))
    n = int(hp.get("num_layers", 5))
    if fl == "maf":
        flow = zuko.flows.MAF(d, transforms=n, hidden_features=hf)
    elif fl == "realnvp":
        flow = zuko.flows.RealNVP(d, transforms=n, hidden_features=hf)
    elif fl == "nsf":
        passes = 2 if hp.get("form", "coupling") == "coupling" else None
        flow = zuko.flows.NSF(d, bins=int(hp.get("num_bins", 8)), transforms=n, hidden_features=hf, passes=passes)
    elif fl == "naf":
        flow = zuko.flows.NAF(d, transforms=n, signal=int(hp.get("num_sigmoids", 16)),
                              network={"hidden_features": hf})
    else:
        return None
    flow = flow.to(dev)
    torch.manual_seed(0)
    t = cell["train"]
    x = torch.randn(max(20 * t["batch_size"], 4096), d, device=dev)
    opt = torch.optim.Adam(flow.parameters(), lr=t["learning_rate"])

    def step():
        idx = torch.randint(0, len(x), (t["batch_size"],), device=dev)
        loss = -flow().log_prob(x[idx]).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), t.get("clip_norm", 5.0))
        opt.step()

    for _ in range(warmup):
        step()
    if dev == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def device_name(backend):
    if backend == "zuko":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else f"CPU ({os.cpu_count()} cores)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=os.path.join(ROOT, "params-paper.yaml"))
    ap.add_argument("--backend", choices=["tf", "zuko"], default="tf")
    ap.add_argument("--cells", help="comma-separated <flow>-<dataset> names (default: the whole grid)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)
    only = set(args.cells.split(",")) if args.cells else None
    cells = load_cells(args.params, only)
    dev = device_name(args.backend)
    timer = time_ours if args.backend == "tf" else time_zuko
    print(f"| cell | batch | steps | ms/step ({args.backend}, {dev}) | hours for the budget |")
    print("| --- | ---: | ---: | ---: | ---: |")
    total, rows = 0.0, []
    for cell in cells:
        try:
            sec = timer(cell, args.warmup, args.steps)
        except Exception as e:  # report and go on: one cell must not hide the others
            sec = None
            print(f"{cell['cell']}: {type(e).__name__}: {str(e).splitlines()[0][:200]}", file=sys.stderr)
        hours = None if sec is None else sec * cell["train"]["steps"] / 3600
        total += hours or 0.0
        rows.append({**cell, "seconds_per_step": sec, "hours": hours})
        ms = "n/a" if sec is None else f"{1000 * sec:.1f}"
        hs = "n/a" if hours is None else f"{hours:.2f}"
        print(f"| {cell['cell']} | {cell['train']['batch_size']} | {cell['train']['steps']} | {ms} | {hs} |",
              flush=True)
    print(f"| total | | | | {total:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": args.backend, "device": dev, "rows": rows, "total_hours": total}, f, indent=2)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    main()
