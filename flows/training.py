"""One training loop and one evaluator for every flow: maximum likelihood with Adam, cosine annealing and
gradient-norm clipping (the NSF recipe), validation at an interval, early stopping, best weights restored.

Everything here works on NumPy arrays (or memory maps) and a :class:`flows.Flow`; nothing needs DVC or MLflow.
All likelihoods are in nats per example unless a name says ``bits_per_dim``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tensorflow as tf

from .base import Flow

__all__ = [
    "set_seed",
    "TrainConfig",
    "History",
    "fit",
    "evaluate",
    "mean_log_prob",
    "Checkpointer",
    "pick_strategy",
    "is_chief",
    "worker_task",
    "batch_indices",
    "auto_steps_per_call",
]

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
    checkpoint_every: int = 0  # steps between checkpoints when fit has a checkpoint_dir; 0 = at each evaluation
    keep_checkpoints: int = 2  # checkpoints kept on disk (tf.train.CheckpointManager's max_to_keep)
    jit_compile: bool = False  # XLA-compile the training call (see fit), tf.function(jit_compile=True)
    steps_per_call: int = 0  # training steps run by one compiled call (a loop in the graph); 0 = automatic
    mixed_precision: bool = False  # dynamic loss scaling for float16 compute; see fit's docstring
    deterministic: bool = False  # tf.config.experimental.enable_op_determinism() (process-wide) before training
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
    resumed_from: int = 0  # the step of the checkpoint this run resumed from (0 = fresh start)
    checkpoint: str = ""  # the last checkpoint written (empty without a checkpoint directory)

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
    """Best-so-far weights kept in variables beside the flow's, so the test uses the best validation step and
    a training checkpoint carries them."""

    def __init__(self, flow: Flow):
        self.variables = list(flow.variables)
        with tf.init_scope():
            self.module = tf.Module(name="best")
            self.module.values = [
                tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name="best_" + v.name.split(":")[0])
                for v in self.variables
            ]
        self.saved = False

    def save(self):
        for dst, src in zip(self.module.values, self.variables):
            dst.assign(tf.convert_to_tensor(src))
        self.saved = True

    def restore(self):
        if self.saved:
            for var, val in zip(self.variables, self.module.values):
                var.assign(val)


def _progress(line: str):
    # one plain line per interval: no carriage returns or colours, whether or not stderr is a terminal
    print(line, file=sys.stderr, flush=True)


def _tf_config() -> dict:
    text = os.environ.get("TF_CONFIG", "")
    return json.loads(text) if text.strip() else {}


def _cluster_workers(tf_config: dict) -> int:
    """Number of training tasks (chief + workers) in a TF_CONFIG cluster."""
    cluster = tf_config.get("cluster", {})
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def pick_strategy() -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy for this process; build the flow under ``strategy.scope()`` and pass it to
    :func:`fit`.

    * ``TF_CONFIG`` names a cluster of more than one task (chief and/or workers): ``MultiWorkerMirroredStrategy``
      over every worker's GPUs (or its CPU), gradients all-reduced over gRPC (ring on CPUs, NCCL where the runtime
      picks it on GPUs). Call this at program start, before any other TensorFlow op: collectives can only be
      configured before the runtime is initialised. Every worker must run the same program with its own TF_CONFIG.
    * otherwise ``MirroredStrategy`` over every visible GPU when there are several, else the default strategy
      (one GPU if present, else the CPU)."""
    if _cluster_workers(_tf_config()) > 1:
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([g.name for g in gpus])
    return tf.distribute.get_strategy()


def worker_task(strategy) -> tuple:
    """(task_type, task_id, number of training tasks) of this process under a multi-worker strategy; (None, None, 1)
    otherwise."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None, None, 1
    spec = resolver.cluster_spec().as_dict()
    n = len(spec.get("chief", [])) + len(spec.get("worker", []))
    return resolver.task_type, resolver.task_id, n


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes outputs and logs: the ``chief`` task, or worker 0 when the cluster has no chief.
    True for a single process (no TF_CONFIG, or any strategy other than ``MultiWorkerMirroredStrategy``); without a
    strategy, decided from ``TF_CONFIG`` alone."""
    if strategy is None:
        conf = _tf_config()
        if _cluster_workers(conf) <= 1:
            return True
        task = conf.get("task", {})
        task_type, task_id, has_chief = task.get("type"), int(task.get("index", 0)), bool(conf["cluster"].get("chief"))
    else:
        task_type, task_id, n = worker_task(strategy)
        if n <= 1 or task_type is None:
            return True
        has_chief = bool(strategy.cluster_resolver.cluster_spec().as_dict().get("chief"))
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The sorted training rows of ``step`` (1-based): epoch ``e`` visits ``default_rng([seed, e]).permutation(n)``
    in consecutive batches, dropping the remainder. A pure function of (seed, step), so a resumed run draws
    exactly the batches the uninterrupted one would have, with no RNG state to save."""
    per_epoch = max(n // batch_size, 1)
    epoch, pos = divmod(step - 1, per_epoch)
    order = _epoch_order(n, seed, epoch)
    return np.sort(order[pos * batch_size : (pos + 1) * batch_size])  # sorted: fast reads from a memory map


_ORDER_CACHE: dict = {}


def _epoch_order(n, seed, epoch):
    key = (n, seed, epoch)
    if key not in _ORDER_CACHE:
        _ORDER_CACHE.clear()
        _ORDER_CACHE[key] = np.random.default_rng([seed, epoch, 7919]).permutation(n)
    return _ORDER_CACHE[key]


def auto_steps_per_call(batch_bytes: int, limit: int = 32, budget: int = 16 << 20) -> int:
    """Training steps per compiled call when ``TrainConfig.steps_per_call`` is 0: as many as ``limit``, but the
    call's batches (``batch_bytes`` each, copied in at once) stay within ``budget`` bytes."""
    return int(max(1, min(limit, budget // max(int(batch_bytes), 1))))


def _all_finite(variables) -> bool:
    return all(bool(tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(v)))) for v in variables
               if v.dtype.is_floating)


def fit(
    flow: Flow,
    train,
    val,
    config: TrainConfig,
    transform: Transform | None = None,
    on_eval: Callable[[int, float, float], None] | None = None,
    log: Callable[[str], None] = _progress,
    checkpoint_dir: str | os.PathLike | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> History:
    """Train ``flow`` by maximum likelihood on ``train`` rows; validate on ``val`` every ``eval_every`` steps.

    Returns the :class:`History`; at the end the flow holds the weights of the best validation step.

    * ``checkpoint_dir``: every ``config.checkpoint_every`` steps (0: at each evaluation) the flow, the optimizer
      (its step counter drives the cosine schedule), the step, the running history and the best weights are
      written there with ``tf.train.CheckpointManager`` (each checkpoint is complete before the index file points
      at it, so a kill at any moment leaves the previous one usable). When the directory already holds a
      checkpoint, training resumes from it and ends where the uninterrupted run would (batches are a pure
      function of (seed, step), see :func:`batch_indices`; the per-step noise seeds are stateless).
    * A NaN or Inf loss (or non-finite weights when a checkpoint is due) raises ``FloatingPointError`` naming the
      step and the last good checkpoint, which is kept.
    * ``strategy``: the ``tf.distribute`` strategy the flow's variables were created under (default: the current
      one, i.e. the default strategy: one device). Under ``MirroredStrategy`` each batch is split over the
      replicas and the gradients are summed; the loss is ``-sum(log p) / global_batch`` in every case.
      Under ``MultiWorkerMirroredStrategy`` (see :func:`pick_strategy`) every worker draws the same global batch
      (:func:`batch_indices`) and feeds only its own replicas' shares; each worker evaluates the whole validation
      set on its (identical) copy of the weights, so every worker takes the same decisions (best step, early
      stop). Only the chief (:func:`is_chief`) keeps checkpoints in ``checkpoint_dir``; the other workers save to a
      temporary directory that is deleted at once, and resume from ``checkpoint_dir`` when they can see it (a
      shared file system): a resume where the workers would start from different steps is refused.
    * ``config.mixed_precision``: the loss is scaled dynamically (``LossScaleOptimizer``) so float16 gradients do
      not underflow. Which ops run in float16 is decided when the flow is built (Keras' global policy
      ``mixed_float16``, set by the caller); log-densities, log-determinants, the loss and all variables stay
      float32.
    * ``config.steps_per_call``: one compiled call runs up to this many steps in a loop inside the graph (one
      Python round trip per call instead of per step; calls end at every evaluation and checkpoint, so results,
      progress lines and resumes are the same as with 1). 0 picks :func:`auto_steps_per_call` (up to 32 steps,
      at most about 16 MB of batches). With several replicas it is 1.
    * ``config.jit_compile``: XLA compiles the whole call with one replica (loss, gradients, clipping, the Adam
      update and the loop), and the loss-and-gradient function with several replicas.
    """
    import tf_keras as keras  # Keras 2, the one TFP 0.25 is built on

    if config.steps <= 0 or config.batch_size <= 0:
        raise ValueError(f"steps and batch_size must be positive, got {config.steps} and {config.batch_size}")
    if config.steps_per_call < 0:
        raise ValueError(f"steps_per_call must be >= 0 (0 = automatic), got {config.steps_per_call}")
    if config.checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0 (0 = at each evaluation), got {config.checkpoint_every}")
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    transform = transform or _identity_transform
    rng = np.random.default_rng(config.seed)
    tf.random.set_seed(config.seed)
    n = len(train)
    batch_size = min(config.batch_size, n)
    if batch_size < replicas:
        raise ValueError(f"batch_size {batch_size} is smaller than the number of replicas {replicas}")
    val = val[: config.max_val]

    first = tf.convert_to_tensor(np.asarray(train[rng.choice(n, size=min(n, 1024), replace=False)]))
    y0, _ = transform(first, tf.constant([config.seed, -1], tf.int64))
    with strategy.scope():
        flow.initialize(y0)
        variables = flow.trainable_variables
        schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=config.steps)
        optimizer = keras.optimizers.Adam(learning_rate=schedule, global_clipnorm=config.clip_norm or None)
        if config.mixed_precision:
            optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
        optimizer.build(variables)  # slots exist now, so a checkpoint restores into them at once

    def loss_and_grads(batch, seed):
        with tf.GradientTape() as tape:
            y, ldj = transform(batch, seed)
            lp = flow.log_prob(y, training=True) + tf.cast(ldj, flow.dtype)  # in the flow's dtype, no downcast
            loss = -tf.reduce_sum(lp) / tf.cast(batch_size, flow.dtype)  # this replica's share of the mean
            scaled = optimizer.get_scaled_loss(loss) if config.mixed_precision else loss
        grads = tape.gradient(scaled, variables)
        if config.mixed_precision:
            grads = optimizer.get_unscaled_gradients(grads)
        return loss, grads

    grad_fn = tf.function(loss_and_grads, jit_compile=config.jit_compile or None, reduce_retracing=True)

    def replica_step(batch, seed):
        rid = tf.distribute.get_replica_context().replica_id_in_sync_group
        seed = tf.stack([seed[0], seed[1] * replicas + tf.cast(rid, tf.int64)])  # = seed with one replica
        loss, grads = grad_fn(batch, seed)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    @tf.function(reduce_retracing=True)
    def train_step(batch, seed):
        losses = strategy.run(replica_step, args=(batch, seed))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    row_shape, row_dtype = tuple(train.shape[1:]), np.dtype(train.dtype)
    row_bytes = row_dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
    per_call = 1 if replicas > 1 else (config.steps_per_call or auto_steps_per_call(batch_size * row_bytes))
    per_call = max(1, min(per_call, config.steps))
    # one call's batches, gathered in place; rows past a short call's count are stale and never read
    batches = np.zeros((per_call, batch_size) + row_shape, row_dtype) if replicas == 1 else None

    def train_loop(batches, count, seed, first_step):
        # `count` (<= per_call) steps on batches[0..count-1]; the batches tensor always has per_call rows, so the
        # function (and XLA's compilation) sees one shape; returns the per_call losses, zeros after `count`
        def body(i, losses):
            step_seed = tf.stack([seed, first_step + tf.cast(i, tf.int64)])
            loss, grads = loss_and_grads(batches[i], step_seed)
            optimizer.apply_gradients(zip(grads, variables))
            return i + 1, tf.tensor_scatter_nd_update(losses, [[i]], [loss])

        losses = tf.zeros([per_call], flow.dtype)
        return tf.while_loop(lambda i, _: i < count, body, (tf.constant(0), losses))[1]

    train_loop = tf.function(train_loop, jit_compile=config.jit_compile or None)

    def run_steps(first, last):
        """Train steps first..last (1-based, inclusive); returns their losses as Python floats."""
        if replicas > 1:
            rows = np.asarray(train[batch_indices(n, batch_size, config.seed, first)])
            return [float(train_step(distribute(rows), tf.constant([config.seed, first], tf.int64)))]
        count = last - first + 1
        for j in range(count):
            batches[j] = train[batch_indices(n, batch_size, config.seed, first + j)]
        losses = train_loop(tf.convert_to_tensor(batches), tf.constant(count, tf.int32),
                            tf.constant(config.seed, tf.int64), tf.constant(first, tf.int64))
        return [float(v) for v in losses.numpy()[:count]]

    def call_end(first):
        """The last step of the call starting at ``first``: it ends at an evaluation, a checkpoint or the end."""
        last = min(first + per_call - 1, config.steps, -(-first // config.eval_every) * config.eval_every)
        if config.checkpoint_every:
            last = min(last, -(-first // config.checkpoint_every) * config.checkpoint_every)
        return last

    def distribute(rows):
        if replicas == 1:
            return tf.convert_to_tensor(rows)
        shards = np.array_split(rows, replicas)
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.convert_to_tensor(shards[ctx.replica_id_in_sync_group])
        )

    history = History()
    best = Checkpointer(flow)
    state = {"bad_evals": 0, "running": 0.0, "count": 0, "elapsed": 0.0, "finished": False}
    manager = None
    _, _, workers = worker_task(strategy)
    chief = is_chief(strategy)
    if checkpoint_dir is not None:
        state_var = tf.Variable("", dtype=tf.string, trainable=False, name="train_state")
        ckpt = tf.train.Checkpoint(flow=flow, optimizer=optimizer, best=best.module, state=state_var)
        keep = max(config.keep_checkpoints, 1)
        if chief:
            manager = tf.train.CheckpointManager(ckpt, str(checkpoint_dir), max_to_keep=keep)
            latest = manager.latest_checkpoint
        else:
            # another worker of a multi-worker run: it resumes from the chief's checkpoint when it can see it (a
            # shared file system), and writes its own to a temporary directory deleted after each save
            manager = _WorkerCheckpoints(ckpt, keep)
            latest = tf.train.latest_checkpoint(str(checkpoint_dir))
        if workers > 1:
            _check_same_resume_step(strategy, latest)
        if latest:
            ckpt.restore(latest).assert_existing_objects_matched()
            saved = json.loads(state_var.numpy().decode())
            state.update(saved["state"])
            history = History(**saved["history"])
            best.saved = saved["best_saved"]
            history.resumed_from = saved["step"]
            history.checkpoint = latest if chief else ""
            log(f"resumed from {latest} at step {saved['step']}/{config.steps}")

    def write_checkpoint(step):
        if manager is None:
            return
        if not _all_finite(flow.variables):
            raise FloatingPointError(
                f"the weights are not finite at step {step}; {_last_good(manager, history)}; try a lower learning_rate"
            )
        state["elapsed"] = elapsed()
        payload = {"step": step, "state": state, "best_saved": best.saved,
                   "history": {k: v for k, v in history.__dict__.items()}}
        state_var.assign(json.dumps(payload))
        history.checkpoint = manager.save(checkpoint_number=step)

    start = time.perf_counter()
    base_elapsed = state["elapsed"]

    def elapsed():
        return base_elapsed + time.perf_counter() - start

    step = history.resumed_from
    last_log, last_step = elapsed(), step
    finished = state["finished"]
    while not finished and step < config.steps:
        first, last = step + 1, call_end(step + 1)
        for step, loss in enumerate(run_steps(first, last), start=first):
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"training loss is {loss} at step {step}; {_last_good(manager, history)}; try a lower "
                    "learning_rate"
                )
            state["running"] += loss
            state["count"] += 1
        evaluated = step % config.eval_every == 0 or step == config.steps
        if evaluated:
            val_loss = -float(np.mean(mean_log_prob(flow, val, config.eval_batch_size, transform, config.seed + 1)))
            now = elapsed()
            history.step.append(step)
            history.train_loss.append(state["running"] / state["count"])
            history.val_loss.append(val_loss)
            history.seconds.append(now)
            state["running"], state["count"] = 0.0, 0
            if math.isfinite(val_loss) and val_loss < history.best_val_loss:
                history.best_val_loss, history.best_step = val_loss, step
                best.save()
                state["bad_evals"] = 0
            else:
                state["bad_evals"] += 1
            rate = (step - last_step) / max(now - last_log, 1e-9)
            last_log, last_step = now, step
            eta = (config.steps - step) / max(rate, 1e-9)
            log(
                f"step {step}/{config.steps}  train_nll {history.train_loss[-1]:.4f}  val_nll {val_loss:.4f} nats  "
                f"{rate:.1f} steps/s  eta {eta:.0f}s"
            )
            if on_eval is not None:
                on_eval(step, history.train_loss[-1], val_loss)
            if config.patience and state["bad_evals"] >= config.patience:
                history.stopped_early = True
                finished = state["finished"] = True
                log(f"early stop at step {step}: no validation improvement in {config.patience} evaluations")
        due = evaluated if config.checkpoint_every == 0 else step % config.checkpoint_every == 0
        if finished or step == config.steps:
            state["finished"] = True
            write_checkpoint(step)
            break
        if due:
            write_checkpoint(step)
    history.steps_done = step
    history.train_seconds = elapsed()
    best.restore()
    return history


class _WorkerCheckpoints:
    """A non-chief worker's stand-in for the CheckpointManager under ``MultiWorkerMirroredStrategy``: every worker
    must call ``save`` (it may run collective ops), but only the chief keeps what it writes; the others write to a
    fresh temporary directory and delete it at once (the pattern of the TensorFlow multi-worker guide)."""

    def __init__(self, ckpt, keep):
        self.ckpt, self.keep = ckpt, keep
        self.latest_checkpoint = None
        self.directory = "(a non-chief worker's temporary directory)"

    def save(self, checkpoint_number):
        import shutil
        import tempfile

        tmp = tempfile.mkdtemp(prefix="flows-worker-ckpt-")
        try:
            tf.train.CheckpointManager(self.ckpt, tmp, max_to_keep=self.keep).save(checkpoint_number=checkpoint_number)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return ""


def _check_same_resume_step(strategy, latest):
    """Every worker must resume from the same step, or the collectives would pair different steps (or hang): the
    sum and the sum of squares of the workers' steps are all-reduced (on every worker, so all take the same
    decision); the steps are all equal exactly when n * sum(s^2) == sum(s)^2 (exact in float64 for any step count)."""
    step = float(_checkpoint_step(latest))
    n = strategy.num_replicas_in_sync
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant([step, step * step], tf.float64)
    )
    total, squares = strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None).numpy().tolist()
    if n * squares != total * total:
        raise RuntimeError(
            f"the workers would resume from different steps (this one: {step:.0f}, mean {total / n:.1f}): every "
            "worker must see the chief's checkpoint directory (a shared file system), or delete it to start afresh"
        )


def _checkpoint_step(path) -> int:
    if not path:
        return 0
    tail = str(path).rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _last_good(manager, history) -> str:
    if manager is None:
        return (f"no checkpoint is written without a checkpoint_dir; the best weights so far are those of step "
                f"{history.best_step} (validation loss {history.best_val_loss:.4f} nats)")
    if manager.latest_checkpoint is None:
        return f"no checkpoint was written yet in {manager.directory}"
    return (f"the last good checkpoint is {manager.latest_checkpoint} (kept; best validation loss "
            f"{history.best_val_loss:.4f} nats at step {history.best_step})")
