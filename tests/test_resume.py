"""Checkpoints and resume: a training killed with SIGKILL mid-way and run again ends with the same test
log-likelihood as an uninterrupted run with the same seed; a NaN keeps the last good checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import flows
from flows.training import BatchSource, TrainConfig, batch_indices, fit

ROOT = Path(__file__).resolve().parents[1]

# a small training run: MAF (with its BatchNorm statistics) on a 2-D Gaussian; prints its final numbers as JSON
SCRIPT = r"""
import json, os, sys, time
import numpy as np
import flows
from flows.training import TrainConfig, evaluate, fit, set_seed

ckpt, flow_name, slow, jit = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "xla"
seed = int(sys.argv[5]) if len(sys.argv) > 5 else 5
rng = np.random.default_rng(0)
x = (rng.normal(size=(3000, 2)) * [2.0, 0.5] + [1.0, -1.0]).astype(np.float32)
set_seed(seed)  # before building: the flow draws its initial weights when it is built
name, hparams = {"ffjord": ("ffjord", {"hidden_units": [16, 16], "trace": "hutchinson", "num_steps": 4}),
                 "nsf-dropout": ("nsf", {"num_layers": 2, "hidden_units": [16, 16], "dropout": 0.2})}.get(
    flow_name, (flow_name, {"num_layers": 2, "hidden_units": [16, 16]}))
flow = flows.build_flow(name, [2], **hparams)
config = TrainConfig(steps=120, batch_size=64, eval_every=20, checkpoint_every=10, learning_rate=3e-3, seed=seed,
                     jit_compile=jit)
h = fit(flow, x[:2000], x[2000:2500], config, checkpoint_dir=None if ckpt == "-" else ckpt,
        log=lambda line: (print(line, flush=True), time.sleep(slow)))
r = evaluate(flow, x[2500:])
print("RESULT " + json.dumps({"test_ll": r["test_ll"], "val_loss": h.val_loss, "best_step": h.best_step,
                              "resumed_from": h.resumed_from, "steps_done": h.steps_done}), flush=True)
"""


def run(args, **kw):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT, **kw)


def result(proc):
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    line = [s for s in out.splitlines() if s.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


# ffjord: stochastic (Hutchinson) training loss; nsf-dropout: dropout in its networks; xla: the whole multi-step
# call compiled by XLA
@pytest.mark.parametrize("flow_name,jit", [("maf", "plain"), ("ffjord", "plain"), ("realnvp", "xla"),
                                           ("nsf-dropout", "plain"), ("nsf-dropout", "xla")])
def test_kill_9_and_resume_gives_the_same_test_number(tmp_path, flow_name, jit):
    ckpt = tmp_path / "ckpt"
    reference = run(["-", flow_name, "0", jit])  # uninterrupted, no checkpoints
    victim = run([str(ckpt), flow_name, "0.15", jit])  # slowed down at each evaluation so the kill lands mid-way
    deadline = time.time() + 90
    while not (ckpt / "checkpoint").exists():
        assert victim.poll() is None, victim.communicate()[1][-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    index = (ckpt / "checkpoint").read_text()
    assert "ckpt-" in index
    resumed = result(run([str(ckpt), flow_name, "0", jit]))
    ref = result(reference)
    assert 0 < resumed["resumed_from"] < 120, resumed  # it really resumed mid-way
    assert ref["resumed_from"] == 0 and ref["steps_done"] == resumed["steps_done"] == 120
    assert resumed["best_step"] == ref["best_step"]
    assert resumed["val_loss"] == ref["val_loss"]  # bitwise, on this machine
    assert resumed["test_ll"] == ref["test_ll"]


# nsf: its spline parameters start at the identity (zero output layers), so the first loss does not depend on
# the hidden weights: a run whose hidden weights were drawn unseeded starts from the same loss and then drifts
@pytest.mark.parametrize("flow_name,jit", [("nsf", "xla"), ("maf", "plain"), ("nsf-dropout", "xla")])
def test_a_seeded_run_repeats_bitwise_in_a_fresh_process(flow_name, jit):
    first, again, other = (run(["-", flow_name, "0", jit, seed]) for seed in ("5", "5", "6"))
    first, again, other = result(first), result(again), result(other)
    assert again["val_loss"] == first["val_loss"] and again["test_ll"] == first["test_ll"]  # bitwise
    assert other["val_loss"] != first["val_loss"]  # the seed does reach the run


def test_a_finished_checkpoint_trains_nothing_and_restores_the_best_weights(tmp_path):
    x = np.random.default_rng(1).normal(size=(600, 2)).astype(np.float32)
    config = TrainConfig(steps=30, batch_size=50, eval_every=10, seed=2)
    lps = []
    for _ in range(2):
        tf.random.set_seed(2)
        flow = flows.build_flow("maf", [2], num_layers=1, hidden_units=[8])
        h = fit(flow, x[:500], x[500:], config, checkpoint_dir=tmp_path, log=lambda s: None)
        lps.append(flow.log_prob(x[500:]).numpy())
    assert h.resumed_from == 30 and h.steps_done == 30 and h.step == [10, 20, 30]
    np.testing.assert_array_equal(lps[0], lps[1])
    assert len(tf.train.get_checkpoint_state(str(tmp_path)).all_model_checkpoint_paths) <= config.keep_checkpoints


def test_batches_are_a_function_of_seed_and_step():
    n, bs = 10, 3  # 3 batches per epoch, one row dropped
    epoch0 = np.concatenate([batch_indices(n, bs, 1, s) for s in (1, 2, 3)])
    assert len(set(epoch0.tolist())) == 9 and all(len(batch_indices(n, bs, 1, s)) == bs for s in range(1, 10))
    assert not np.array_equal(batch_indices(n, bs, 1, 4), batch_indices(n, bs, 1, 1))  # a new epoch, new order
    np.testing.assert_array_equal(batch_indices(n, bs, 1, 5), batch_indices(n, bs, 1, 5))
    assert not np.array_equal(batch_indices(1000, 50, 1, 1), batch_indices(1000, 50, 2, 1))


@pytest.mark.parametrize("kind", ["array", "memmap", "image_memmap", "sequence"])
def test_batch_source_fills_the_rows_of_each_step(kind, tmp_path):
    # BatchSource.fill gathers ndarrays (memory maps included) with np.take straight into its buffer, anything
    # else by indexing: either way each batch is train[batch_indices(seed, step)], in the split's dtype
    rng = np.random.default_rng(0)
    shape = (50, 4, 3, 2) if kind == "image_memmap" else (50, 3)
    x = rng.normal(size=shape).astype(np.float64 if kind == "memmap" else np.float32)
    if kind in ("memmap", "image_memmap"):
        np.save(tmp_path / "x.npy", x)
        train = np.load(tmp_path / "x.npy", mmap_mode="r")
    elif kind == "sequence":
        class Rows:  # array-like, not an ndarray: fill falls back to train[rows]
            shape, dtype = x.shape, x.dtype

            def __len__(self):
                return len(x)

            def __getitem__(self, rows):
                return x[rows]
        train = Rows()
    else:
        train = x
    source = BatchSource(train, 8, seed=3, per_call=4)
    buffer = source.fill(5, 3)  # steps 5, 6, 7 in rows 0..2 (one epoch holds 6 batches: step 7 is in the next)
    assert buffer.shape == (4, 8) + shape[1:] and buffer.dtype == x.dtype
    for j, step in enumerate((5, 6, 7)):
        np.testing.assert_array_equal(buffer[j], x[batch_indices(len(x), 8, 3, step)])
    assert not np.array_equal(buffer[0], buffer[2])


def test_nan_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    x = np.random.default_rng(0).normal(size=(400, 2)).astype(np.float32)
    first_bad = 3
    x[batch_indices(400, 100, 0, first_bad)] = np.nan  # steps 1 and 2 train on clean rows, step 3 meets NaNs
    flow = flows.build_flow("realnvp", [2], num_layers=1, hidden_units=[8])
    config = TrainConfig(steps=50, batch_size=100, eval_every=1, checkpoint_every=1, seed=0)
    clean = x[np.isfinite(x).all(1)]
    with pytest.raises(FloatingPointError) as err:
        fit(flow, x, clean[:50], config, checkpoint_dir=tmp_path, log=lambda s: None)
    msg = str(err.value)
    assert f"at step {first_bad}" in msg
    latest = tf.train.latest_checkpoint(str(tmp_path))
    assert latest is not None and latest.endswith(f"ckpt-{first_bad - 1}") and latest in msg and "kept" in msg
    assert Path(latest + ".index").exists()


def test_stage_keeps_checkpoints_only_for_the_same_settings(tmp_path):
    from stages.common import prepare_checkpoints

    ckpt = tmp_path / "checkpoints" / "maf-moons"
    settings = {"flow": "maf", "hparams": {"num_layers": 2}, "train": {"steps": 10}, "seed": 0}
    assert prepare_checkpoints(ckpt, settings) is None  # fresh: nothing to resume
    tf.train.Checkpoint(v=tf.Variable(1.0)).write(str(ckpt / "ckpt-5"))
    (ckpt / "checkpoint").write_text('model_checkpoint_path: "ckpt-5"\n')
    assert prepare_checkpoints(ckpt, settings).endswith("ckpt-5")  # same settings: resume
    changed = {**settings, "train": {"steps": 20}}
    assert prepare_checkpoints(ckpt, changed) is None  # other settings: discarded
    assert not (ckpt / "checkpoint").exists() and (ckpt / "fingerprint.json").exists()
