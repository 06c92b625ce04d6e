"""Does skipping the MADE masks' zero blocks make the paper-scale conditioners faster?  (A measured "no".)

    python benchmarks/made_blocks.py                        # one thread, float32 graphs, 4 block plans
    python benchmarks/made_blocks.py --threads 2 --jit

With the "equal" hidden degrees (:func:`flows.nn.made_masks`) the hidden units are sorted by degree, so every mask
is block-triangular: in a hidden-to-hidden layer the output units of degree ``m`` read only the input units of
degree ``<= m`` (a prefix of the rows), and output ``i`` reads only the hidden units of degree ``< i``.  For the NSF
paper's POWER conditioner (D = 6, 2 residual blocks of 256, 23 parameters per feature) the nonzero blocks hold 59%
of the dense products' multiply-adds.  This script times the 10 conditioners' forward and backward (the
``bench_nsf.py`` "pieces" shape, batch 512) both ways, alternating, median of ``--rounds``:

* dense: ``h @ (W * M) + b``, what :class:`flows.nn.MaskedMLP` computes;
* blocks: the same layer as a ``tf.custom_gradient`` over column blocks of consecutive degree groups, each block
  ``h[:, :r] @ (W * M)[:r, block]`` with ``r`` the rows its last group reads (a plan ``2,2,1`` merges the five
  hidden degree groups into blocks of 2, 2 and 1 groups; merged blocks keep the mask inside them), the input
  gradient by row blocks and the weight gradient by column blocks padded with zeros.  The input layer (6 x 256)
  stays dense.

It checks first that both give the same loss and gradients (they agree bitwise on this CPU: the skipped products
are exact zeros), then prints ms per forward + backward of the 10 conditioners and the blocks / dense ratio.
Results: ``results/nsf_speed.md`` ("Skipping the masks' zero blocks").
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PLANS = ["1,1,1,1,1/1,1,1,1,1,1", "3,2/2,2,2", "2,3/3,3", "2,2,1/2,2,2"]


def column_groups(mask):
    """Runs of consecutive columns that read the same prefix of rows: ``[(c0, c1, rows)]``."""
    import numpy as np

    need = [int(np.max(np.nonzero(mask[:, j])[0])) + 1 if mask[:, j].any() else 0 for j in range(mask.shape[1])]
    if any(not mask[:n, j].all() or mask[n:, j].any() for j, n in enumerate(need)):
        raise ValueError("the mask is not block-triangular (hidden degrees not sorted)")
    bounds = [0] + [j for j in range(1, len(need)) if need[j] != need[j - 1]] + [len(need)]
    return [(bounds[i], bounds[i + 1], need[bounds[i]]) for i in range(len(bounds) - 1)]


def merge(groups, sizes):
    """Consecutive groups merged into blocks of ``sizes`` groups; a block reads its last group's rows."""
    if sum(sizes) != len(groups):
        raise ValueError(f"plan {sizes} does not cover {len(groups)} groups")
    out, i = [], 0
    for n in sizes:
        part = groups[i:i + n]
        out.append((part[0][0], part[-1][1], part[-1][2]))
        i += n
    return out


def blocked_matmul(plan, mask):
    """``h @ (w * mask)`` over the column blocks of ``plan``, with a hand-written gradient."""
    import numpy as np
    import tensorflow as tf

    rows = mask.shape[0]
    m = tf.constant(mask.astype(np.float32))

    @tf.custom_gradient
    def f(h, w):
        wm = w * m
        batch = tf.shape(h)[0]
        out = [tf.zeros([batch, c1 - c0]) if r == 0 else tf.matmul(h if r == rows else h[:, :r], wm[:r, c0:c1])
               for c0, c1, r in plan]

        def grad(g):
            dh, done = [], 0
            for c0, _, r in plan:  # rows done..r are read by this block and every later one: columns c0..
                if r > done:
                    dh.append(tf.matmul(g[:, c0:], wm[done:r, c0:], transpose_b=True))
                    done = r
            if done < rows:
                dh.append(tf.zeros([batch, rows - done]))
            dw = []
            for c0, c1, r in plan:
                if r == 0:
                    dw.append(tf.zeros([rows, c1 - c0]))
                    continue
                part = tf.matmul(h if r == rows else h[:, :r], g[:, c0:c1], transpose_a=True)
                dw.append(part if r == rows else tf.concat([part, tf.zeros([rows - r, c1 - c0])], axis=0))
            return tf.concat(dh, axis=1), tf.concat(dw, axis=1) * m

        return tf.concat(out, axis=1), grad

    return f


def run(plan_text: str, jit: bool, rounds: int, reps: int) -> dict:
    import numpy as np
    import tensorflow as tf

    from flows import nn

    hidden_plan, out_plan = ([int(s) for s in part.split(",")] for part in plan_text.split("/"))
    tf.random.set_seed(0)
    x = tf.random.normal([512, 6])
    mades = [nn.MaskedMLP(6, 23, [256], tf.float32, residual_blocks=2) for _ in range(10)]
    for made in mades:
        made(x)
        for w, _ in made._kernels_and_biases():  # the output layer starts at zero: give every layer a gradient
            w.assign(tf.random.normal(w.shape) * 0.05)
    masks = [np.asarray(mk.numpy() > 0) for mk in mades[0].masks]
    last = len(masks) - 1
    variables = [v for made in mades for v in made.trainable_variables]
    plans = [None if i == 0 else merge(column_groups(mk), out_plan if i == last else hidden_plan)
             for i, mk in enumerate(masks)]
    macs = sum(mk.size if p is None else sum(r * (c1 - c0) for c0, c1, r in p) for mk, p in zip(masks, plans))
    share = macs / sum(mk.size for mk in masks)  # of the dense products' multiply-adds, every direction alike
    blocked = [None if p is None else blocked_matmul(p, mk) for p, mk in zip(plans, masks)]

    def conditioner(made, h, dense):
        linears = [lambda h, w=w, mk=mk, b=b, f=f: (tf.matmul(h, w * mk) if dense or f is None else f(h, w)) + b
                   for (w, b), mk, f in zip(made._kernels_and_biases(), made.masks, blocked)]
        return nn._feedforward(h, linears, made.act, made.residual_blocks, 0.0, True)

    def loss_and_grads(x, dense):
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_sum(tf.sin(conditioner(made, x, dense))) for made in mades])
        return loss, tape.gradient(loss, variables)

    (l0, g0), (l1, g1) = loss_and_grads(x, True), loss_and_grads(x, False)
    diff = max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(g0, g1))
    if not np.isclose(float(l0), float(l1), rtol=1e-5) or diff > 1e-4:
        raise AssertionError(f"blocks disagree with dense: loss {float(l0)} vs {float(l1)}, gradient diff {diff}")
    dense = tf.function(lambda x: loss_and_grads(x, True)[1], jit_compile=jit)
    blocks = tf.function(lambda x: loss_and_grads(x, False)[1], jit_compile=jit)
    dense(x), blocks(x)

    def ms(f):
        t = time.perf_counter()
        for _ in range(reps):
            out = f(x)
        out[0].numpy()
        return (time.perf_counter() - t) / reps * 1e3

    a, b = [], []
    for _ in range(rounds):
        a.append(ms(dense))
        b.append(ms(blocks))
    return {"plan": plan_text, "mac_share": share, "dense_ms": float(np.median(a)), "blocks_ms": float(np.median(b)),
            "ratio": float(np.median(b) / np.median(a)), "max_grad_diff": diff}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jit", action="store_true", help="both variants under XLA")
    ap.add_argument("--plans", default=";".join(PLANS),
                    help="';'-separated plans 'HIDDEN/OUTPUT', each a comma list of groups per block "
                         "(default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, ROOT)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    print(f"{args.threads} thread(s), {'XLA' if args.jit else 'tf.function'}; ms per forward + backward of the 10 "
          "conditioners, median of the rounds\n")
    print("| plan (hidden / output) | multiply-adds of dense | dense ms | blocks ms | blocks / dense | max grad diff |")
    print("|---|---|---|---|---|---|")
    for plan in args.plans.split(";"):
        r = run(plan, args.jit, args.rounds, args.reps)
        print(f"| {r['plan']} | {r['mac_share']:.0%} | {r['dense_ms']:.1f} | {r['blocks_ms']:.1f} | {r['ratio']:.3f} "
              f"| {r['max_grad_diff']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
