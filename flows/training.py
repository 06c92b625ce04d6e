"""One training loop and one evaluator for every flow: maximum likelihood with Adam, cosine annealing and
gradient-norm clipping (the NSF recipe), validation at an interval, early stopping, best weights restored.

Everything here works on NumPy arrays (or memory maps) and a :class:`flows.Flow`; nothing needs DVC or MLflow.
All likelihoods are in nats per example unless a name says ``bits_per_dim``.
"""

from __future__ import annotations

import math
import sys
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tensorflow as tf

from .base import Flow

__all__ = ["set_seed", "TrainConfig", "History", "fit", "evaluate", "mean_log_prob", "Checkpointer"]

#: maps a raw batch to (model-space batch, log|det d model / d raw| per example) -- e.g. dequantise + logit
Transform = Callable[[tf.Tensor, tf.Tensor], tuple]


def set_seed(seed: int):
    """Seed Python, NumPy and TensorFlow (weight initialisation); call it before building a flow."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)


@dataclass
class TrainConfig:
    """Optimisation settings (the per-data-set section of params.yaml)."""

    steps: int = 1000
    batch_size: int = 256
    learning_rate: float = 1e-3
    eval_every: int = 100
    eval_batch_size: int = 4096
    clip_norm: float = 5.0
    patience: int = 0  # evaluations without validation improvement before stopping; 0 = never stop early
    max_val: int = 20000  # validation rows used at each interval (the first ones), to bound its cost
    seed: int = 0


@dataclass
class History:
    step: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)  # mean negative log-likelihood over the interval, nats
    val_loss: list = field(default_factory=list)  # validation negative log-likelihood, nats
    seconds: list = field(default_factory=list)
    best_step: int = 0
    best_val_loss: float = math.inf
    stopped_early: bool = False
    train_seconds: float = 0.0
    steps_done: int = 0

    def rows(self):
        for i in range(len(self.step)):
            yield {
                "step": self.step[i],
                "train_loss": self.train_loss[i],
                "val_loss": self.val_loss[i],
                "seconds": self.seconds[i],
            }


def _identity_transform(x, seed):
    return x, tf.zeros(tf.shape(x)[:1], x.dtype)


def mean_log_prob(flow: Flow, data, batch_size: int = 4096, transform: Transform | None = None, seed: int = 0):
    """Per-example log-likelihoods (nats) of ``data`` in batches of ``batch_size`` (bounded memory).

    ``transform`` maps raw rows to model space and returns the log-Jacobian of that map, which is added,
    so the result is the log-density of the raw data.
    """
    transform = transform or _identity_transform
    fn = _compiled_log_prob(flow, transform)
    out = []
    for i, start in enumerate(range(0, len(data), batch_size)):
        batch = tf.convert_to_tensor(np.asarray(data[start : start + batch_size]))
        out.append(fn(batch, tf.constant([seed, i], tf.int64)).numpy())
    return np.concatenate(out) if out else np.zeros([0])


_COMPILED: "weakref.WeakKeyDictionary[Flow, dict]" = weakref.WeakKeyDictionary()


def _compiled_log_prob(flow, transform):
    """One compiled evaluation function per (flow, transform), so repeated validation never retraces."""
    per_flow = _COMPILED.setdefault(flow, {})
    if transform not in per_flow:

        @tf.function(reduce_retracing=True)
        def fn(batch, seed):
            y, ldj = transform(batch, seed)
            return flow.log_prob(y, training=False) + ldj

        per_flow[transform] = fn
    return per_flow[transform]


def evaluate(flow: Flow, data, batch_size: int = 4096, transform: Transform | None = None, seed: int = 0) -> dict:
    """Mean test log-likelihood in nats with its standard error std/sqrt(N) (papers print +/- 2 se)."""
    lp = mean_log_prob(flow, data, batch_size, transform, seed)
    n = len(lp)
    finite = np.isfinite(lp)
    mean = float(np.mean(lp)) if n else float("nan")
    se = float(np.std(lp, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"test_ll": mean, "test_ll_se": se, "n_test": int(n), "n_nonfinite": int(n - finite.sum())}


class Checkpointer:
    """Best-so-far weights kept in memory, so the test uses the best validation step, not the last."""

    def __init__(self, flow: Flow):
        self.variables = list(flow.variables)
        self.values = None

    def save(self):
        self.values = [v.numpy() for v in self.variables]

    def restore(self):
        if self.values is not None:
            for var, val in zip(self.variables, self.values):
                var.assign(val)


def _progress(line: str):
    # one plain line per interval; no carriage returns or colours, so logs stay readable when not a tty
    print(line, file=sys.stderr, flush=True)


def fit(
    flow: Flow,
    train,
    val,
    config: TrainConfig,
    transform: Transform | None = None,
    on_eval: Callable[[int, float, float], None] | None = None,
    log: Callable[[str], None] = _progress,
) -> History:
    """Train ``flow`` by maximum likelihood on ``train`` rows; validate on ``val`` every ``eval_every`` steps.

    Returns the :class:`History`; at the end the flow holds the weights of the best validation step.
    """
    import tf_keras as keras  # Keras 2, the one TFP 0.25 is built on

    if config.steps <= 0 or config.batch_size <= 0:
        raise ValueError(f"steps and batch_size must be positive, got {config.steps} and {config.batch_size}")
    transform = transform or _identity_transform
    rng = np.random.default_rng(config.seed)
    tf.random.set_seed(config.seed)
    n = len(train)
    batch_size = min(config.batch_size, n)
    val = val[: config.max_val]

    first = tf.convert_to_tensor(np.asarray(train[rng.choice(n, size=min(n, 1024), replace=False)]))
    y0, _ = transform(first, tf.constant([config.seed, -1], tf.int64))
    flow.initialize(y0)

    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=config.steps)
    optimizer = keras.optimizers.Adam(learning_rate=schedule, global_clipnorm=config.clip_norm or None)
    variables = flow.trainable_variables

    @tf.function(reduce_retracing=True)
    def train_step(batch, seed):
        with tf.GradientTape() as tape:
            y, ldj = transform(batch, seed)
            loss = -tf.reduce_mean(flow.log_prob(y, training=True) + ldj)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    history = History()
    best = Checkpointer(flow)
    bad_evals = 0
    order = rng.permutation(n)
    cursor = 0
    running, count = 0.0, 0
    start = time.perf_counter()
    last_log = start
    for step in range(1, config.steps + 1):
        if cursor + batch_size > n:
            order, cursor = rng.permutation(n), 0
        idx = np.sort(order[cursor : cursor + batch_size])  # sorted: fast reads from a memory map
        cursor += batch_size
        loss = float(train_step(tf.convert_to_tensor(np.asarray(train[idx])), tf.constant([config.seed, step], tf.int64)))
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss} at step {step}; the last good weights are those of step "
                f"{history.best_step} (validation loss {history.best_val_loss:.4f} nats); try a lower learning_rate"
            )
        running += loss
        count += 1
        if step % config.eval_every == 0 or step == config.steps:
            val_loss = -float(np.mean(mean_log_prob(flow, val, config.eval_batch_size, transform, config.seed + 1)))
            now = time.perf_counter()
            history.step.append(step)
            history.train_loss.append(running / count)
            history.val_loss.append(val_loss)
            history.seconds.append(now - start)
            running, count = 0.0, 0
            if math.isfinite(val_loss) and val_loss < history.best_val_loss:
                history.best_val_loss, history.best_step = val_loss, step
                best.save()
                bad_evals = 0
            else:
                bad_evals += 1
            rate = config.eval_every / max(now - last_log, 1e-9)
            last_log = now
            eta = (config.steps - step) / max(step / (now - start), 1e-9)
            log(
                f"step {step}/{config.steps}  train_nll {history.train_loss[-1]:.4f}  val_nll {val_loss:.4f} nats  "
                f"{rate:.1f} steps/s  eta {eta:.0f}s"
            )
            if on_eval is not None:
                on_eval(step, history.train_loss[-1], val_loss)
            if config.patience and bad_evals >= config.patience:
                history.stopped_early = True
                log(f"early stop at step {step}: no validation improvement in {config.patience} evaluations")
                break
    history.steps_done = step
    history.train_seconds = time.perf_counter() - start
    best.restore()
    return history
