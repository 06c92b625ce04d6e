"""One training loop and one evaluator for every flow: maximum likelihood with Adam, cosine annealing and
gradient-norm clipping (the NSF recipe), validation at an interval, early stopping, best weights restored.

Everything here works on NumPy arrays (or memory maps) and a :class:`flows.Flow`; nothing needs DVC or MLflow.
All likelihoods are in nats per example unless a name says ``bits_per_dim``.
"""

from __future__ import annotations

import dataclasses
import functools
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
import tf_keras as keras  # Keras 2, the one TFP 0.25 is built on (flows.nn imports it too)

from .base import Flow
from .errors import NonFiniteError, OptionsError
from .nn import BatchNorm, in_xla_training, matmul_precision, noise_seed, xla_training
from .options import Option, check_options, schema_of

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
    "RunState",
    "TrainCall",
    "TrainCheckpoint",
    "BatchSource",
    "default_optimizer",
    "fused_adam",
    "pick_jit",
    "auto_candidates",
    "choose_candidate",
]

#: maps a raw batch to (model-space batch, log|det d model / d raw| per example) -- e.g. dequantise + logit
Transform = Callable[[tf.Tensor, tf.Tensor], tuple]


def set_seed(seed: int):
    """Seed Python, NumPy and TensorFlow (weight initialisation); call it before building a flow."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)


#: accepted values of TrainConfig.matmul_dtype
MATMUL_DTYPES = ("float32", "bfloat16", "auto")
#: accepted values of TrainConfig.jit_compile
JIT_CHOICES = (False, True, "auto")
#: "auto" (jit_compile, matmul_dtype or batch_shards) moves to XLA, to bfloat16 products or to a sharded batch only
#: when its median call time is below this fraction of the setting it would replace (near ties keep the plain
#: float32, unsharded graph)
JIT_AUTO_MARGIN = 0.9
#: batch_shards "auto" times 1 and the number of cores this process may run on, at most this many (each shard is a
#: copy of the flow's graph in the training call: compilation time and graph size grow with it)
MAX_AUTO_SHARDS = 8


def _opt(**kw):
    return {"option": Option(None, **kw)}


@dataclass
class TrainConfig:
    """Optimisation settings: the schema of a ``datasets.<name>.train`` section of params.yaml (and its overrides).

    Checked by :meth:`from_options`; every field's constraints are declared here, once.
    """

    steps: int = field(default=1000, metadata=_opt(low=1))
    batch_size: int = field(default=256, metadata=_opt(low=1))
    learning_rate: float = field(default=1e-3, metadata=_opt(low=0.0, positive=True))
    eval_every: int = field(default=100, metadata=_opt(low=1))
    eval_batch_size: int = field(default=4096, metadata=_opt(low=1))
    clip_norm: float = field(default=5.0, metadata=_opt(low=0.0, doc="0: no clipping"))
    #: evaluations without validation improvement before stopping; 0 = never stop early
    patience: int = field(default=0, metadata=_opt(low=0, doc="0: never stop early"))
    #: validation rows used at each interval (the first ones), to bound its cost
    max_val: int = field(default=20000, metadata=_opt(low=1))
    #: steps between checkpoints when fit has a checkpoint_dir; 0 = at each evaluation
    checkpoint_every: int = field(default=0, metadata=_opt(low=0, doc="0: at each evaluation"))
    #: checkpoints kept on disk (tf.train.CheckpointManager's max_to_keep)
    keep_checkpoints: int = field(default=2, metadata=_opt(low=1))
    #: XLA-compile the training call (see fit), tf.function(jit_compile=True); "auto": measured on this machine at
    #: the start of fit (both ways, a few calls each; XLA only when clearly faster), see :func:`pick_jit`
    jit_compile: bool | str = field(default=False, metadata=_opt(choices=JIT_CHOICES,
                                                                  doc="auto: the faster, measured at the start"))
    #: training steps run by one compiled call (a loop in the graph); 0 = automatic
    steps_per_call: int = field(default=0, metadata=_opt(low=0, doc="0: automatic"))
    #: dynamic loss scaling for float16 compute; see fit's docstring
    mixed_precision: bool = False
    #: the conditioners' hidden matrix products in the training call (flows.nn.matmul_precision); bfloat16 pays
    #: only without XLA, on CPUs with AVX512_BF16 or AMX (benchmarks/results/nsf_speed.md); "auto": measured at the
    #: start of fit together with jit_compile (bfloat16 only when clearly faster), see :func:`pick_jit`
    matmul_dtype: str = field(default="float32", metadata=_opt(
        choices=MATMUL_DTYPES, doc="bfloat16: conditioners' products, training only; auto: measured"))
    #: the training call computes the log-densities of each batch as this many independent row shards (same loss,
    #: summed in another order), which TensorFlow runs on different cores at once: pays on several cores when one
    #: step's ops are too small to keep them busy (see :class:`TrainCall`); "auto": 1 and the number of usable
    #: cores, measured at the start of fit (see :func:`pick_jit`).  Not with batch normalisation (its statistics
    #: are the batch's).
    batch_shards: int | str = field(default=1, metadata=_opt(low=1, also=("auto",),
                                                             doc="auto: 1 or the core count, measured"))
    #: the caller enables tf.config.experimental.enable_op_determinism() (process-wide) before training
    deterministic: bool = False
    #: images only: the dequantised pixels x in [0, 1] are modelled as logit(alpha + (1 - 2 alpha) x)
    logit_alpha: float = field(default=1e-6, metadata=_opt(low=0.0, below=0.5))
    seed: int = field(default=0, metadata=_opt(low=0))

    def __post_init__(self):  # a config is valid once built, however it was built
        values = check_options(schema_of(type(self)), dataclasses.asdict(self), "train")
        for key, value in values.items():
            object.__setattr__(self, key, value)

    @classmethod
    def schema(cls) -> dict:
        """The options of a params.yaml train section (every field but ``seed``, which is params.yaml's top level)."""
        return schema_of(cls, exclude=("seed",))

    @classmethod
    def from_options(cls, values: dict | None, where: str = "train", seed: int = 0) -> "TrainConfig":
        """Validate a train section (one line naming the key on error) and build the config."""
        return cls(seed=seed, **check_options(cls.schema(), values, where))


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
    jit_compile: bool | None = None  # XLA or not, as run (config.jit_compile "auto" resolved by pick_jit)
    jit_timing: dict = field(default_factory=dict)  # pick_jit's measurement: median seconds per step each way
    matmul_dtype: str | None = None  # the conditioners' products as run (config.matmul_dtype "auto" resolved)
    batch_shards: int | None = None  # the batch's shards as run (config.batch_shards "auto" resolved)

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
        # one graph call per copy instead of one eager assign per variable (1.65 -> 0.25 ms for a 5-layer MAF's
        # 30 variables: it runs at every improving validation)
        self._save = tf.function(functools.partial(_copy_values, self.module.values, self.variables), autograph=False)
        self._restore = tf.function(functools.partial(_copy_values, self.variables, self.module.values),
                                    autograph=False)
        with tf.init_scope():  # traced now, not at the first save (which falls inside the timed part of a run)
            self._save.get_concrete_function()
            self._restore.get_concrete_function()

    def save(self):
        self._save()
        self.saved = True

    def restore(self):
        if self.saved:
            self._restore()


def _copy_values(destinations, sources):
    """dst := src for each pair (the two lists never share a variable: the flow's and the best copies)."""
    values = [tf.convert_to_tensor(src) for src in sources]
    for dst, value in zip(destinations, values):
        dst.assign(value)


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


_BATCH_STATISTICS = ("train.batch_shards = {} is invalid for a flow with batch normalisation (its statistics are "
                     "the whole batch's): accepted 1, or auto (which keeps 1 for such a flow)")


def has_batch_statistics(flow: Flow) -> bool:
    """Whether ``flow`` normalises by batch statistics in training (:class:`flows.nn.BatchNorm`), so that its
    training batch cannot be split into shards (``TrainConfig.batch_shards``)."""
    return any(isinstance(m, BatchNorm) for m in (flow, *flow.submodules))


def usable_cores() -> int:
    """The number of cores this process may run on (its CPU affinity: ``taskset`` and cgroup cpusets count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return os.cpu_count() or 1


def _all_finite(variables) -> bool:
    return all(bool(tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(v)))) for v in variables
               if v.dtype.is_floating)


@dataclass
class RunState:
    """Everything a resumed run needs besides the variables: the step reached, the running train loss of the
    current interval, the early-stopping counter, the wall time so far and the history.  Saved inside each
    checkpoint (one string variable, so it is written and restored atomically with the weights)."""

    step: int = 0
    running: float = 0.0  # sum of the training losses since the last evaluation
    count: int = 0  # and their number
    bad_evals: int = 0  # evaluations since the last validation improvement
    elapsed: float = 0.0  # seconds of training before this process (resumed runs)
    finished: bool = False
    best_saved: bool = False  # whether best weights were recorded (Checkpointer.saved)
    history: History = field(default_factory=History)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "RunState":
        data = json.loads(text)
        return cls(**{**data, "history": History(**data["history"])})


def default_optimizer(config: TrainConfig, schedule=None):
    """Adam with ``schedule`` (default: cosine annealing from ``config.learning_rate`` to 0 over ``config.steps``)
    and global-norm gradient clipping at ``config.clip_norm`` (0: none): the NSF paper's recipe.  Keras 2's Adam,
    with each dense update as one fused kernel outside XLA (:func:`fused_adam`)."""
    if schedule is None:
        schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=config.steps)
    return fused_adam(learning_rate=schedule, global_clipnorm=config.clip_norm or None)


class FusedAdam(keras.optimizers.Adam):
    """Keras 2's Adam whose dense updates, outside a training call that XLA compiles, run as TensorFlow's fused
    ``ResourceApplyAdam`` kernel: the same formula as Keras' (``m += (g - m)(1 - b1)``, ``v += (g^2 - v)(1 - b2)``,
    ``w -= m lr sqrt(1 - b2^t) / (1 - b1^t) / (sqrt(v) + eps)``) in one op per variable instead of about fifteen,
    which is most of the optimizer's cost in a graph of small variables.  Under XLA (which fuses Keras' ops itself),
    with several replicas, AMSGrad, adaptive epsilon, sparse gradients or hyper-parameters given as tensors: Keras'
    own update.  Its variables are Keras Adam's, so checkpoints of either restore into the other."""

    def update_step(self, gradient, variable):
        if (in_xla_training() or self.amsgrad or self.adaptive_epsilon
                or isinstance(gradient, tf.IndexedSlices)
                or not all(isinstance(x, (int, float)) for x in (self.beta_1, self.beta_2, self.epsilon))
                or tf.distribute.get_strategy().num_replicas_in_sync > 1):
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        index = self._index_dict[self._var_key(variable)]
        return tf.raw_ops.ResourceApplyAdam(  # the powers as Keras rounds them (via float32), the rest exact
            var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
            beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step),
            beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
            lr=tf.cast(self.learning_rate, dtype), beta1=tf.constant(self.beta_1, dtype),
            beta2=tf.constant(self.beta_2, dtype), epsilon=tf.constant(self.epsilon, dtype), grad=gradient)


def fused_adam(**kwargs) -> FusedAdam:
    """``FusedAdam(**kwargs)``: Keras 2's Adam with fused dense updates outside XLA (see :class:`FusedAdam`)."""
    return FusedAdam(**kwargs)


class BatchSource:
    """The training batches of consecutive steps, gathered in place into one reused buffer of ``per_call``
    batches (:func:`batch_indices`: a pure function of (seed, step))."""

    def __init__(self, train, batch_size: int, seed: int, per_call: int):
        self.train, self.batch_size, self.seed = train, batch_size, seed
        row_shape = tuple(train.shape[1:])
        self.buffer = np.zeros((per_call, batch_size) + row_shape, np.dtype(train.dtype))

    def fill(self, first: int, count: int) -> np.ndarray:
        """Batches of steps first..first+count-1 in rows 0..count-1 (later rows are stale and never read)."""
        for j in range(count):
            rows = batch_indices(len(self.train), self.batch_size, self.seed, first + j)
            if isinstance(self.train, np.ndarray):  # straight into the buffer: half the time of `buffer[j] = train[rows]`
                np.take(self.train, rows, axis=0, out=self.buffer[j])
            else:
                self.buffer[j] = self.train[rows]
        return self.buffer


class TrainCall:
    """The compiled training call: up to ``per_call`` optimizer steps in a ``tf.while_loop`` inside one graph, the
    same code for one replica and for several (each step is ``strategy.run`` of the replica step; gradients are
    summed over replicas by the optimizer).  With one replica and ``jit``, XLA compiles the whole call (loss,
    gradients, clipping, the Adam update, the loop); with several, the loss-and-gradient function.

    ``shards`` > 1 splits each (replica's) batch into that many consecutive row blocks, as equal as they can be,
    whose log-densities are computed by separate copies of the flow's ops in the same graph: no op joins them
    before the loss, so TensorFlow's executor (or XLA's) runs them on different cores at once, and their
    gradients meet only where each variable's are summed.  The loss is the same, ``-sum(log p) / global_batch``,
    summed in another order (so not bitwise the unsharded one); dropout draws distinct masks for every shard.
    Refused for a flow with batch normalisation, whose batch statistics the shards would change."""

    def __init__(self, flow: Flow, optimizer, transform: Transform, strategy, global_batch: int, per_call: int,
                 jit: bool = False, mixed_precision: bool = False, matmul_dtype: str = "float32", shards: int = 1):
        if shards > 1 and has_batch_statistics(flow):
            raise OptionsError(_BATCH_STATISTICS.format(shards))
        self.flow, self.optimizer, self.transform, self.strategy = flow, optimizer, transform, strategy
        self.matmul_dtype, self.jit, self.shards = matmul_dtype, bool(jit), int(shards)
        self.per_call, self.mixed = per_call, mixed_precision
        self.replicas = strategy.num_replicas_in_sync
        self.global_batch = global_batch
        self.variables = flow.trainable_variables
        one = self.replicas == 1
        self.grad_fn = self.loss_and_grads if one else tf.function(
            self.loss_and_grads, jit_compile=jit or None, reduce_retracing=True)
        self.call = tf.function(self._call, jit_compile=(jit and one) or None)

    def loss_and_grads(self, batch, seed):
        """This replica's share of the mean negative log-likelihood (nats) of the global batch, and its gradients."""
        flow, opt = self.flow, self.optimizer
        with tf.GradientTape() as tape, noise_seed(seed):  # dropout's masks: stateless, from the step's seed
            y, ldj = self.transform(batch, seed)
            ldj = tf.cast(ldj, flow.dtype)  # in the flow's dtype, no downcast
            rows = y.shape[0]
            if self.shards == 1 or rows is None or rows < 2:
                total = tf.reduce_sum(flow.log_prob(y, training=True) + ldj)
            else:  # independent row blocks: one copy of the flow's ops each (see the class docstring)
                sizes = [len(part) for part in np.array_split(np.arange(rows), min(self.shards, rows))]
                ldj = tf.broadcast_to(ldj, [rows])
                total = tf.add_n([tf.reduce_sum(flow.log_prob(part, training=True) + part_ldj)
                                  for part, part_ldj in zip(tf.split(y, sizes), tf.split(ldj, sizes))])
            loss = -total / tf.cast(self.global_batch, flow.dtype)
            scaled = opt.get_scaled_loss(loss) if self.mixed else loss
        grads = tape.gradient(scaled, self.variables)
        if self.mixed:
            grads = opt.get_unscaled_gradients(grads)
        return loss, grads

    def _replica_step(self, batches, i, seed):
        if self.replicas > 1:  # each replica its own noise; the seed is unchanged with one replica
            rid = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int64)
            seed = tf.stack([seed[0], seed[1] * self.replicas + rid])
        loss, grads = self.grad_fn(batches[i], seed)
        self.optimizer.apply_gradients(zip(grads, self.variables))
        return loss

    def _call(self, batches, count, seed, first_step):
        # `count` (<= per_call) steps on batches[0..count-1]; the batches tensor always has per_call rows, so the
        # function (and XLA's compilation) sees one shape; returns the per_call losses, zeros after `count`
        strategy = self.strategy

        def body(i, losses):
            step_seed = tf.stack([seed, first_step + tf.cast(i, tf.int64)])
            if self.replicas == 1:  # the default strategy's replica context: strategy.run would only wrap it
                loss = self._replica_step(batches, i, step_seed)
            else:
                loss = strategy.reduce(tf.distribute.ReduceOp.SUM,
                                       strategy.run(self._replica_step, args=(batches, i, step_seed)), axis=None)
            return i + 1, tf.tensor_scatter_nd_update(losses, [[i]], [loss])

        losses = tf.zeros([self.per_call], self.flow.dtype)
        return tf.while_loop(lambda i, _: i < count, body, (tf.constant(0), losses))[1]

    def __call__(self, batches: np.ndarray, count: int, seed: int, first: int) -> list:
        """Run steps first..first+count-1 on ``batches``; their losses as Python floats."""
        if self.replicas > 1:  # each replica gets its share of every batch (axis 1)
            shards = np.array_split(batches, self.replicas, axis=1)
            batches = self.strategy.experimental_distribute_values_from_function(
                lambda ctx: tf.convert_to_tensor(shards[ctx.replica_id_in_sync_group]))
        else:
            batches = tf.convert_to_tensor(batches)
        with matmul_precision(self.matmul_dtype), xla_training(self.jit):  # read when traced (the first time)
            losses = self.call(batches, tf.constant(count, tf.int32), tf.constant(seed, tf.int64),
                               tf.constant(first, tf.int64))
        return [float(v) for v in losses.numpy()[:count]]


class TrainCheckpoint:
    """Checkpoints of a run in ``directory``: the flow, the optimizer (its step counter drives the schedule), the
    best weights and the :class:`RunState`, with ``tf.train.CheckpointManager`` (each checkpoint is complete
    before the index points at it, so a kill at any moment leaves the previous one usable).

    Under ``MultiWorkerMirroredStrategy`` only the chief keeps checkpoints; the other workers save to a temporary
    directory deleted at once (every worker must call save) and resume from ``directory`` when they see it."""

    def __init__(self, directory, flow: Flow, optimizer, best: "Checkpointer", keep: int, strategy):
        self.state_var = tf.Variable("", dtype=tf.string, trainable=False, name="train_state")
        self.ckpt = tf.train.Checkpoint(flow=flow, optimizer=optimizer, best=best.module, state=self.state_var)
        self.flow, self.best = flow, best
        self.chief = is_chief(strategy)
        if self.chief:
            self.manager = tf.train.CheckpointManager(self.ckpt, str(directory), max_to_keep=max(keep, 1))
            latest = self.manager.latest_checkpoint
        else:
            self.manager = _WorkerCheckpoints(self.ckpt, max(keep, 1))
            latest = tf.train.latest_checkpoint(str(directory))
        if worker_task(strategy)[2] > 1:
            _check_same_resume_step(strategy, latest)
        self.latest = latest

    def restore(self) -> RunState | None:
        """The state of the latest checkpoint, with the variables restored; None when there is none."""
        if not self.latest:
            return None
        self.ckpt.restore(self.latest).assert_existing_objects_matched()
        state = RunState.from_json(self.state_var.numpy().decode())
        self.best.saved = state.best_saved
        state.history.resumed_from = state.step
        state.history.checkpoint = self.latest if self.chief else ""
        return state

    def save(self, state: RunState) -> None:
        if not _all_finite(self.flow.variables):
            raise NonFiniteError(f"the weights are not finite at step {state.step}; {self.last_good(state)}; "
                                     "try a lower learning_rate")
        state.best_saved = self.best.saved
        self.state_var.assign(state.to_json())
        state.history.checkpoint = self.manager.save(checkpoint_number=state.step)

    def last_good(self, state: RunState) -> str:
        return _last_good(self.manager, state.history)


def _steps_per_call(config: TrainConfig, batch_size: int, train) -> int:
    row_bytes = np.dtype(train.dtype).itemsize * int(np.prod(train.shape[1:], dtype=np.int64))
    per_call = config.steps_per_call or auto_steps_per_call(batch_size * row_bytes)
    return max(1, min(per_call, config.steps))


def _call_end(first: int, per_call: int, config: TrainConfig) -> int:
    """The last step of the call starting at ``first``: it ends at an evaluation, a checkpoint or the end."""
    last = min(first + per_call - 1, config.steps, -(-first // config.eval_every) * config.eval_every)
    if config.checkpoint_every:
        last = min(last, -(-first // config.checkpoint_every) * config.checkpoint_every)
    return last


def _validate(flow, val, config, transform, state: RunState, best: "Checkpointer", clock) -> tuple:
    """Validation NLL (nats) at ``state.step``, recorded in the history with the time; best weights kept; patience
    counted.  Returns (val_loss, seconds)."""
    val_loss = -float(np.mean(mean_log_prob(flow, val, config.eval_batch_size, transform, config.seed + 1)))
    now = clock()
    h = state.history
    h.step.append(state.step)
    h.train_loss.append(state.running / state.count)
    h.val_loss.append(val_loss)
    h.seconds.append(now)
    state.running, state.count = 0.0, 0
    if math.isfinite(val_loss) and val_loss < h.best_val_loss:
        h.best_val_loss, h.best_step = val_loss, state.step
        best.save()
        state.bad_evals = 0
    else:
        state.bad_evals += 1
    return val_loss, now


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
    optimizer=None,
) -> History:
    """Train ``flow`` by maximum likelihood on ``train`` rows; validate on ``val`` every ``eval_every`` steps.

    Returns the :class:`History`; at the end the flow holds the weights of the best validation step.

    * ``optimizer``: a Keras 2 optimizer (with its own learning-rate schedule); default
      :func:`default_optimizer` (Adam, cosine annealing, global-norm clipping).
    * Seeding: ``fit`` changes no process-wide state.  A flow draws its initial weights when it is built, so call
      :func:`set_seed` before :func:`flows.build_flow` for a run that repeats bitwise, across processes too; the
      batches are a pure function of ``config.seed`` and the step, and so is every step's noise (the transform's
      dequantisation noise, and dropout's masks through :func:`flows.nn.noise_seed`).
    * ``checkpoint_dir``: every ``config.checkpoint_every`` steps (0: at each evaluation) a :class:`TrainCheckpoint`
      is written there; when the directory already holds one, training resumes from it and ends where the
      uninterrupted run would (batches and noise are pure functions of (seed, step), see :func:`batch_indices`).
    * A NaN or Inf loss (or non-finite weights when a checkpoint is due) raises ``FloatingPointError`` naming the
      step and the last good checkpoint, which is kept.
    * ``strategy``: the ``tf.distribute`` strategy the flow's variables were created under (default: the current
      one). Under ``MirroredStrategy`` each batch is split over the replicas and the gradients are summed; the loss
      is ``-sum(log p) / global_batch`` in every case. Under ``MultiWorkerMirroredStrategy`` (:func:`pick_strategy`)
      every worker draws the same global batch and feeds its own replicas' shares, and evaluates the whole
      validation set on its (identical) weights, so every worker takes the same decisions; only the chief
      (:func:`is_chief`) keeps checkpoints.
    * ``config.mixed_precision``: the loss is scaled dynamically (``LossScaleOptimizer``) so float16 gradients do
      not underflow; which ops run in float16 is decided when the flow is built (Keras' global policy).
    * ``config.steps_per_call``: one compiled call runs up to this many steps (:class:`TrainCall`); calls end at
      every evaluation and checkpoint, so results, progress lines and resumes are the same as with 1. 0 picks
      :func:`auto_steps_per_call`. ``config.jit_compile``: XLA (see :class:`TrainCall`); ``"auto"`` measures both
      ways on the run's first steps and keeps the faster (:func:`pick_jit`; ``History.jit_compile`` and
      ``jit_timing`` say what was run and why, and a resumed run keeps its first process's choice).
    * ``config.matmul_dtype``: ``"bfloat16"`` runs the conditioner networks' hidden matrix products of the training
      call in bfloat16 (:func:`flows.nn.matmul_precision`; variables, densities, log-determinants and the loss stay
      float32).  Validation and the returned flow are float32.  ``"auto"`` measures float32 and bfloat16 products
      (with each ``jit_compile`` candidate) on the run's first steps, like ``jit_compile: "auto"``, and keeps
      bfloat16 only when clearly faster (``History.matmul_dtype``; a resumed run keeps its first process's choice).
    * ``config.batch_shards``: each batch's log-densities as that many independent row shards of one graph, which
      run on different cores at once (:class:`TrainCall`); ``"auto"`` measures 1 and :func:`usable_cores` shards
      (at most :data:`MAX_AUTO_SHARDS`; with each ``jit_compile`` and ``matmul_dtype`` candidate) and keeps the
      sharded batch only when clearly faster (``History.batch_shards``; a resumed run keeps its first choice).
      One core, several replicas or batch normalisation: 1, unmeasured.
    """

    strategy = strategy or tf.distribute.get_strategy()
    transform = transform or _identity_transform
    if config.batch_shards != "auto" and config.batch_shards > 1 and has_batch_statistics(flow):
        raise OptionsError(_BATCH_STATISTICS.format(config.batch_shards))  # before anything is written
    n, replicas = len(train), strategy.num_replicas_in_sync
    batch_size = min(config.batch_size, n)
    if batch_size < replicas:
        raise ValueError(f"batch_size {batch_size} is smaller than the number of replicas {replicas}")
    val = val[: config.max_val]
    first = np.asarray(train[np.random.default_rng(config.seed).choice(n, size=min(n, 1024), replace=False)])
    y0, _ = transform(tf.convert_to_tensor(first), tf.constant([config.seed, -1], tf.int64))
    with strategy.scope():
        flow.initialize(y0)
        optimizer = optimizer or default_optimizer(config)
        if config.mixed_precision:
            optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
        optimizer.build(flow.trainable_variables)  # slots exist now, so a checkpoint restores into them at once
    per_call = _steps_per_call(config, batch_size, train)
    batches = BatchSource(train, batch_size, config.seed, per_call)
    best = Checkpointer(flow)
    ckpt = None if checkpoint_dir is None else TrainCheckpoint(checkpoint_dir, flow, optimizer, best,
                                                               config.keep_checkpoints, strategy)
    state = (ckpt and ckpt.restore()) or RunState()
    if state.step:
        log(f"resumed from {ckpt.latest} at step {state.step}/{config.steps}")
    clock, last_log = _Clock(state.elapsed), (state.elapsed, state.step)  # pick_jit's measurement counts too

    def make_call(jit, matmul_dtype, shards=1):
        return TrainCall(flow, optimizer, transform, strategy, batch_size, per_call, jit, config.mixed_precision,
                         matmul_dtype, shards)

    # a setting that is not "auto" is taken as set; an "auto" one as the run's first process measured it (a resumed
    # run keeps that choice; one begun before matmul_dtype or batch_shards had "auto" ran float32 products, unsharded)
    h, resumed = state.history, state.history.jit_compile is not None
    auto = [key for key in AUTO_SETTINGS if getattr(config, key) == "auto"]
    h.jit_compile = h.jit_compile if "jit_compile" in auto else bool(config.jit_compile)
    h.matmul_dtype = ((h.matmul_dtype or ("float32" if resumed else None)) if "matmul_dtype" in auto
                      else config.matmul_dtype)
    h.batch_shards = ((h.batch_shards or (1 if resumed else None)) if "batch_shards" in auto
                      else config.batch_shards)
    shard_choices = shard_candidates(config, flow, strategy)
    if h.batch_shards is None and len(shard_choices) == 1:
        h.batch_shards = 1  # one core, several replicas or batch normalisation: nothing to measure
    if None not in (h.jit_compile, h.matmul_dtype, h.batch_shards):
        step_fn = make_call(h.jit_compile, h.matmul_dtype, h.batch_shards)
    else:
        step_fn, h.jit_timing = pick_jit(make_call, batches, state.step + 1, config, strategy, flow, optimizer)
        h.jit_compile, h.matmul_dtype, h.batch_shards = step_fn.jit, step_fn.matmul_dtype, step_fn.shards
        log(_auto_line(auto, step_fn, h.jit_timing, shard_choices))
    while not state.finished and state.step < config.steps:
        start, last = state.step + 1, _call_end(state.step + 1, per_call, config)
        for step, loss in enumerate(step_fn(batches.fill(start, last - start + 1), last - start + 1, config.seed,
                                            start), start=start):
            if not math.isfinite(loss):
                raise NonFiniteError(f"training loss is {loss} at step {step}; "
                                         f"{_last_good(ckpt and ckpt.manager, state.history)}; try a lower learning_rate")
            state.running, state.count, state.step = state.running + loss, state.count + 1, step
        evaluated = state.step % config.eval_every == 0 or state.step == config.steps
        if evaluated:
            val_loss, now = _validate(flow, val, config, transform, state, best, clock)
            rate = (state.step - last_log[1]) / max(now - last_log[0], 1e-9)
            last_log = (now, state.step)
            log(f"step {state.step}/{config.steps}  train_nll {state.history.train_loss[-1]:.4f}  val_nll "
                f"{val_loss:.4f} nats  {rate:.1f} steps/s  eta {(config.steps - state.step) / max(rate, 1e-9):.0f}s")
            if on_eval is not None:
                on_eval(state.step, state.history.train_loss[-1], val_loss)
            if config.patience and state.bad_evals >= config.patience:
                state.history.stopped_early = state.finished = True
                log(f"early stop at step {state.step}: no validation improvement in {config.patience} evaluations")
        state.finished = state.finished or state.step == config.steps
        due = evaluated if config.checkpoint_every == 0 else state.step % config.checkpoint_every == 0
        if ckpt is not None and (due or state.finished):
            state.elapsed = clock()
            ckpt.save(state)
    state.history.steps_done, state.history.train_seconds = state.step, clock()
    best.restore()
    return state.history


#: the candidates of pick_jit: (timing key, XLA, matmul dtype); a later one (in :func:`auto_candidates`' order)
#: replaces the current choice only when clearly faster (JIT_AUTO_MARGIN).  With batch_shards "auto" or > 1 each
#: is also tried with the batch in shards, its key then ending in "_<k>shards"
AUTO_CANDIDATES = (("graph", False, "float32"), ("xla", True, "float32"), ("graph_bfloat16", False, "bfloat16"),
                   ("xla_bfloat16", True, "bfloat16"))
#: the TrainConfig settings that "auto" resolves by a measurement (pick_jit)
AUTO_SETTINGS = ("jit_compile", "matmul_dtype", "batch_shards")


def shard_candidates(config: TrainConfig, flow: Flow, strategy=None) -> tuple:
    """The ``batch_shards`` values :func:`pick_jit` measures: the setting itself unless it is ``"auto"``; then 1 and
    the number of cores this process may use (:func:`usable_cores`, at most :data:`MAX_AUTO_SHARDS` and the batch
    size), or just 1 on one core, with several replicas (each already has its own device) or with batch
    normalisation (its statistics are the batch's)."""
    if config.batch_shards != "auto":
        return (config.batch_shards,)
    cores = min(usable_cores(), MAX_AUTO_SHARDS, config.batch_size)
    replicas = (strategy or tf.distribute.get_strategy()).num_replicas_in_sync
    return (1,) if cores < 2 or replicas > 1 or has_batch_statistics(flow) else (1, cores)


def _candidate_key(key: str, shards: int) -> str:
    return key if shards == 1 else f"{key}_{shards}shards"


def pick_jit(make_call, batches: BatchSource, first: int, config: TrainConfig, strategy, flow: Flow, optimizer,
             rounds: int = 3):
    """``jit_compile``, ``matmul_dtype`` and/or ``batch_shards`` "auto": the fastest training call on this machine,
    measured, and the measurement.

    The candidates are every combination of XLA (both ways where ``jit_compile`` is ``"auto"``, else as set), of
    the products' dtype (float32 and bfloat16 where ``matmul_dtype`` is ``"auto"``, else as set) and of the batch's
    shards (:func:`shard_candidates`), built by ``make_call(jit, matmul_dtype, shards)``.  Each runs the run's own
    next ``per_call`` steps: one call each to compile, then ``rounds`` timed calls each, alternating so that a
    change in the machine's load hits all.  Taken in the order of :func:`auto_candidates` (float32 products: plain
    graph, XLA, then the same with the batch in shards; then bfloat16 products in the same order), a candidate
    replaces the choice so far only when its median is below :data:`JIT_AUTO_MARGIN` times the choice's, so near
    ties (where the choice could flip from run to run) keep the plainer setting; bfloat16 products are kept only
    when below the margin times the fastest float32 candidate, sharded or not (:func:`choose_candidate`).  Every
    variable of the flow and the optimizer is put back afterwards, so the run then trains exactly as it would have
    with the chosen setting from the start.  With several replicas (where XLA would compile only the
    loss-and-gradient function) nothing is measured: XLA stays off (unless set), products stay float32 (unless set)
    and the batch is not sharded (unless set).

    Returns (the chosen :class:`TrainCall`, {candidate key: s/step, ..., "margin": JIT_AUTO_MARGIN}); the keys are
    those of :data:`AUTO_CANDIDATES` (``"graph"`` and ``"xla"``: float32 products), with ``"_<k>shards"`` appended
    for a batch in k > 1 shards."""
    jits = (False, True) if config.jit_compile == "auto" else (bool(config.jit_compile),)
    dtypes = ("float32", "bfloat16") if config.matmul_dtype == "auto" else (config.matmul_dtype,)
    shards = shard_candidates(config, flow, strategy)
    if strategy.num_replicas_in_sync > 1:
        return make_call(jits[0], dtypes[0], shards[0]), {}
    variables = list(flow.variables) + list(optimizer.variables)
    saved = [v.numpy() for v in variables]
    count = min(batches.buffer.shape[0], config.steps)
    data = batches.fill(first, count)
    candidates = auto_candidates(jits, dtypes, shards)
    calls = {name: make_call(jit, dtype, k) for name, jit, dtype, k in candidates}
    times = {name: [] for name in calls}
    try:
        for name, call in calls.items():  # compile (and a first run)
            call(data, count, config.seed, first)
        for _ in range(rounds):
            for name, call in calls.items():
                start = time.perf_counter()
                call(data, count, config.seed, first)
                times[name].append((time.perf_counter() - start) / count)
    finally:
        for v, value in zip(variables, saved):
            v.assign(value)
    timing = {name: float(np.median(t)) for name, t in times.items()}
    dtypes_of = {name: dtype for name, _, dtype, _ in candidates}
    return calls[choose_candidate(timing, dtypes_of, JIT_AUTO_MARGIN)], {**timing, "margin": JIT_AUTO_MARGIN}


def auto_candidates(jits, dtypes, shards) -> list:
    """:func:`pick_jit`'s candidates in order of preference, as (timing key, XLA, matmul dtype, shards): every
    float32 one before any bfloat16 one; within a dtype the unsharded before the sharded, each in the order of
    :data:`AUTO_CANDIDATES` (plain graph, then XLA).  XLA and shards keep the products float32 (only rounding
    differs), while bfloat16 changes the products themselves (see :func:`choose_candidate`)."""
    return [(_candidate_key(key, k), jit, dtype, k) for d in dtypes for k in shards
            for key, jit, dtype in AUTO_CANDIDATES if dtype == d and jit in jits]


def choose_candidate(timing: dict, dtypes: dict, margin: float) -> str:
    """The key :func:`pick_jit` keeps from ``timing`` ({key: s/step} in :func:`auto_candidates`' order; ``dtypes``:
    {key: its products' dtype}).  Among the candidates of one dtype: the first, replaced by each later one whose
    time is below ``margin`` times the choice so far (near ties keep the plainer setting).  A later dtype's choice
    (bfloat16's) then replaces the earlier one only when its time is below ``margin`` times the fastest of every
    earlier dtype's candidates, chosen or not: bfloat16 products only when clearly faster than any float32 call."""
    chosen, fastest = None, math.inf  # the choice so far; the fastest time of the dtypes before the current one
    for dtype in dict.fromkeys(dtypes[name] for name in timing):
        names = [name for name in timing if dtypes[name] == dtype]
        best = names[0]
        for name in names:
            if timing[name] < margin * timing[best]:
                best = name
        if chosen is None or timing[best] < margin * fastest:
            chosen = best
        fastest = min(fastest, *(timing[name] for name in names))
    return chosen


def _auto_line(auto: list, call: "TrainCall", timing: dict, shard_choices: tuple = (1,)) -> str:
    """The progress line of :func:`pick_jit`'s choice: what was "auto", what it picked, each candidate's ms/step
    (``shard_choices``: the ``batch_shards`` values it measured, :func:`shard_candidates`)."""
    picked = []
    if "jit_compile" in auto:
        picked.append("XLA" if call.jit else "no XLA")
    if "matmul_dtype" in auto:
        picked.append(f"{call.matmul_dtype} products")
    if "batch_shards" in auto:
        picked.append(f"{call.shards} shard{'s' * (call.shards > 1)}")
    names = {}
    for shards in shard_choices:
        for key, jit, dtype in AUTO_CANDIDATES:
            names[_candidate_key(key, shards)] = (
                ("" if dtype == "float32" and "matmul_dtype" not in auto else f"{dtype} ")
                + ("with XLA" if jit else "without XLA") + (f", {shards} shards" if shards > 1 else ""))
    measured = ", ".join(f"{1e3 * v:.2f} ms/step {names[k]}" for k, v in timing.items() if k in names)
    what = " and ".join(auto) if len(auto) < 3 else f"{', '.join(auto[:-1])} and {auto[-1]}"
    return f"{what} auto: {', '.join(picked)} ({measured or 'not measured: several replicas'})"


class _Clock:
    """Seconds of training: those of earlier processes (a resumed run) plus this one's."""

    def __init__(self, before: float = 0.0):
        self.before, self.start = before, time.perf_counter()

    def __call__(self) -> float:
        return self.before + time.perf_counter() - self.start


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
