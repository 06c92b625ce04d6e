"""Building blocks shared by every flow family: one activation lookup, the conditioner networks (:class:`MLP`,
:class:`MaskedMLP` = MADE, :class:`ConvNet`), and the generic flow layers (:class:`Permutation`, :class:`Reverse`,
:class:`BatchNorm`, :class:`AffineCoupling`, :class:`MaskedAffineCoupling`, :class:`Invert`).

``ACTIVATIONS`` names the hidden activations every network accepts (the ``activation`` option of each flow).

Weights come in two conventions, chosen per family (each keeps the numerics it was measured with):

* ``backend="keras"``: ``tf_keras`` ``Dense`` layers kept in a ``keras.Sequential`` (``net._network``), which
  holds the variables (names ``dense_N/kernel``, output layer first in ``trainable_variables``).  Kernels
  are Keras' Glorot-uniform, seeded through Python's ``random`` (``tf_keras.utils.set_random_seed``).  An
  :class:`MLP` honours a global mixed-precision policy: with ``mixed_float16`` (or ``mixed_bfloat16``) and
  dtype float32 its hidden layers compute in half precision with float32 variables, and the output layer in
  float32, so everything downstream (scales, spline parameters, log-determinants) stays float32.
  Real NVP (vectors), NSF, MAF, IAF and MADE use it.
* ``backend="numpy"``: plain ``tf.Variable`` lists ``weights`` / ``biases`` in one dtype, Glorot-uniform
  drawn by ``numpy.random.default_rng(seed)``.  Glow (vectors), FFJORD and NAF use it.

Residual blocks and dropout (both off by default) follow nflows' ``ResidualNet`` and residual MADE (Durkan et
al., Neural Spline Flows, 2019, https://arxiv.org/abs/1906.04032, whose conditioners are "2 residual blocks of
256 units"): a linear stem to width ``H``, then ``residual_blocks`` blocks
``h <- h + L2(dropout(act(L1(act(h)))))`` (``L2`` starts uniform in +-1e-3, so each block starts near the
identity), then the output layer on ``h``.  Without residual blocks, dropout follows each hidden activation.
Dropout is active only when the network is called with ``training=True``.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from .base import FlowLayer, NotInvertibleError, as_dtype

__all__ = [
    "ACTIVATIONS", "activation", "soft_clamp", "check_hidden_units", "check_positive_int", "alternating_mask",
    "glorot_variable", "made_masks", "matmul_precision", "MLP", "MaskedMLP", "ConvNet", "bounded_log_scale", "permute",
    "MaskSplit", "xla_training", "in_xla_training", "xla_barrier", "Permutation", "Reverse", "BatchNorm",
    "AffineCoupling", "MaskedAffineCoupling", "Invert", "wgrad_chunks",
]

#: hidden activations accepted wherever a flow has an ``activation`` option, by name (each is bitwise the
#: function Keras' ``keras.activations.get(name)`` returns)
ACTIVATIONS = {
    "elu": tf.nn.elu,
    "gelu": tf.nn.gelu,
    "relu": tf.nn.relu,
    "sigmoid": tf.nn.sigmoid,
    "softplus": tf.nn.softplus,
    "swish": tf.nn.silu,
    "tanh": tf.nn.tanh,
}

BACKENDS = ("keras", "numpy")
#: hidden-degree schemes of :func:`made_masks`
HIDDEN_DEGREES = ("equal", "cyclic")
#: log-scales of :func:`bounded_log_scale`
SCALES = ("sigmoid", "tanh")
#: bound of the initial weights of the last layer of each residual block (nflows' ``zero_initialization``)
BLOCK_INIT = 1e-3


def activation(name: str):
    """The activation function called ``name`` (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported; accepted: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


_activation = activation  # for the networks below, whose ``activation`` argument is a name


# ---------------------------------------------------------------------------------------------------- helpers
def soft_clamp(x, bound: float):
    """Smoothly bound ``x`` to (-bound, bound): ``bound * tanh(x / bound)`` (identity near 0)."""
    bound = tf.constant(bound, x.dtype)
    return bound * tf.tanh(x / bound)


def check_hidden_units(hidden_units, where: str) -> list[int]:
    """Validate a list of positive layer widths; the error names ``where`` and the bad value."""
    units = list(hidden_units)
    if not units or any(isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in units):
        raise ValueError(f"{where}: hidden_units = {hidden_units!r} must be a non-empty list of positive integers")
    return units


def check_positive_int(value, key: str, where: str) -> int:
    """``value`` as an int >= 1, or a ValueError naming the flow, the key and the value."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: {key} = {value!r} must be a positive integer")
    return int(value)


def alternating_mask(event_size: int, parity: int) -> np.ndarray:
    """Boolean mask over ``d`` features, True (kept, conditioning) where ``i % 2 == parity``."""
    return (np.arange(int(event_size)) % 2) == (int(parity) % 2)


def glorot_variable(shape, fan_in: int, fan_out: int, rng: np.random.Generator, dtype) -> tf.Variable:
    """A variable drawn by ``rng`` uniform in +-sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010), in ``dtype``."""
    lim = np.sqrt(6.0 / (fan_in + fan_out))
    return tf.Variable(rng.uniform(-lim, lim, size=shape), dtype=dtype)


def _layer_shapes(in_features: int, hidden_units: Sequence[int], out_features: int, residual_blocks: int):
    """(fan_in, fan_out, role) of each linear layer in call order; role: hidden, block_out or output."""
    if not residual_blocks:
        sizes = [in_features] + list(hidden_units) + [out_features]
        return [(a, b, "output" if i == len(sizes) - 2 else "hidden")
                for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
    width = hidden_units[0]
    shapes = [(in_features, width, "hidden")]
    for _ in range(residual_blocks):
        shapes += [(width, width, "hidden"), (width, width, "block_out")]
    return shapes + [(width, out_features, "output")]


def _check_structure(hidden_units, residual_blocks, dropout, backend, where):
    units = check_hidden_units([int(u) for u in hidden_units], where)
    if isinstance(residual_blocks, bool) or not isinstance(residual_blocks, int) or residual_blocks < 0:
        raise ValueError(f"{where}: residual_blocks = {residual_blocks!r} must be an integer >= 0")
    if residual_blocks and len(set(units)) != 1:
        raise ValueError(f"{where}: with residual blocks every hidden width is that of the residual stream; "
                         f"hidden_units = {list(hidden_units)} are not all equal")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"{where}: dropout = {dropout!r} must be in [0, 1)")
    if backend not in BACKENDS:
        raise ValueError(f"{where}: backend = {backend!r} is not supported; accepted: {', '.join(BACKENDS)}")
    return units


def _feedforward(x, linears, act, residual_blocks: int, dropout: float, training: bool,
                 act_before_output: bool = False):
    """The forward pass of every network here, over ``linears`` (callables, in :func:`_layer_shapes` order)."""
    def drop(h):
        if not (training and dropout > 0):
            return h
        seed = _next_noise_seed()
        if seed is None:  # outside a training call (noise_seed): TensorFlow's stateful generator
            return tf.nn.dropout(h, rate=dropout)
        return tf.nn.experimental.stateless_dropout(h, rate=dropout, seed=seed)

    if not residual_blocks:
        h = x
        last = len(linears) - 1
        for i, linear in enumerate(linears):
            h = linear(h)
            if i < last:
                h = drop(act(h))
        return h
    h = linears[0](x)
    for j in range(residual_blocks):
        first, second = linears[1 + 2 * j], linears[2 + 2 * j]
        h = h + second(drop(act(first(act(h)))))
    return linears[-1](act(h) if act_before_output else h)


#: the dtype of the conditioners' hidden matrix products while tracing under :func:`matmul_precision` (None: the
#: network's own dtype)
_MATMUL_DTYPE: list = [None]


@contextlib.contextmanager
def matmul_precision(dtype):
    """Within this context, :class:`MLP` and :class:`MaskedMLP` networks built in float32 compute the matrix
    products of their stem and hidden layers in ``dtype`` (``"bfloat16"``; ``None`` or ``"float32"``: no change).

    Each such product is ``cast(matmul(cast(h, dtype), cast(W, dtype)), float32) + b``: variables, biases,
    activations, residual sums, the output layer (so every spline parameter, scale and shift) and everything
    downstream (log-determinants, densities, the loss) stay float32; only the products' inputs are rounded (and
    their gradients computed in ``dtype`` with float32 accumulation).  The choice is read when a function is
    traced, so trace (and call) a ``tf.function`` inside the context: :func:`flows.training.fit` does so for its
    training call only (``TrainConfig.matmul_dtype``); evaluation, sampling and the saved flow are float32.
    """
    low = None if dtype is None else tf.as_dtype(dtype)
    previous, _MATMUL_DTYPE[0] = _MATMUL_DTYPE[0], None if low in (None, tf.float32) else low
    try:
        yield
    finally:
        _MATMUL_DTYPE[0] = previous


def _low_precision(h) -> tf.DType | None:
    low = _MATMUL_DTYPE[0]
    return low if low is not None and h.dtype == tf.float32 else None


#: whether a training call that XLA compiles is being traced (:func:`xla_training`)
_XLA_TRAINING: list = [False]


@contextlib.contextmanager
def xla_training(enabled: bool = True):
    """Marks the tracing of a training call that XLA compiles (:class:`flows.training.TrainCall` with
    ``jit_compile``), so that layers may shape their gradients for XLA's CPU fusion (:func:`xla_barrier`)."""
    previous, _XLA_TRAINING[0] = _XLA_TRAINING[0], bool(enabled)
    try:
        yield
    finally:
        _XLA_TRAINING[0] = previous


def in_xla_training() -> bool:
    """True while a training call that XLA compiles is being traced (:func:`xla_training`)."""
    return _XLA_TRAINING[0]


_NOISE = threading.local()  # per thread: MirroredStrategy traces each replica's step in its own thread


@contextlib.contextmanager
def noise_seed(seed):
    """Dropout traced inside draws its masks from stateless seeds derived from ``seed`` (an integer ``[2]``
    tensor; :class:`flows.training.TrainCall` passes each step's ``[config.seed, step]``), so a step's noise is a
    pure function of (seed, step): a resumed run repeats the uninterrupted one, under XLA too.  The k-th dropout
    traced uses ``stateless_fold_in(seed, k)``, k = 1, 2, ...; outside this context dropout uses TensorFlow's
    stateful generator."""
    previous = getattr(_NOISE, "state", None)
    _NOISE.state = [seed, 0]
    try:
        yield
    finally:
        _NOISE.state = previous


def _next_noise_seed():
    state = getattr(_NOISE, "state", None)
    if state is None:
        return None
    state[1] += 1
    return tf.random.experimental.stateless_fold_in(state[0], state[1])


def xla_barrier(x):
    """``x`` materialised: its consumers read it instead of fusing (and so recomputing) the ops that made it.

    XLA's CPU backend fuses elementwise producers into every consumer, even into a broadcast that reads each
    value ``K`` times, and it drops optimisation barriers before fusing, so the barrier is a product with the
    identity (``x @ I``), which XLA never fuses into a loop.  Exact for finite values (a non-finite value spreads to
    its row).  For ``[..., n]`` tensors; meant for training calls that XLA compiles (:func:`xla_training`)."""
    eye = tf.eye(int(x.shape[-1]), dtype=x.dtype)
    if x.shape.rank == 2:
        return tf.matmul(x, eye, name="xla_barrier")
    return tf.reshape(tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), eye, name="xla_barrier"), tf.shape(x))


def _matmul(h, kernel, low):
    """``h @ kernel`` in ``h``'s dtype, computed in ``low`` (None: directly; under :func:`xla_training` with the
    kernel's gradient from :func:`_chunked_kernel_grad` where :func:`wgrad_chunks` says so)."""
    if low is None:
        chunks = wgrad_chunks(h.shape[0], kernel.shape[0], kernel.shape[1]) if in_xla_training() else 1
        if chunks > 1:
            return _chunked_kernel_grad(h, tf.convert_to_tensor(kernel), chunks)
        return tf.matmul(h, kernel)
    return tf.cast(tf.matmul(tf.cast(h, low), tf.cast(kernel, low)), h.dtype)


def wgrad_chunks(rows, fan_in, fan_out) -> int:
    """Row blocks of the kernel gradient ``h^T g`` of a ``[rows, fan_in] @ [fan_in, fan_out]`` product under XLA.

    XLA's CPU dot for ``h^T g`` (a long contraction over the batch into a small matrix) runs at about half the
    rate of oneDNN's; as a sum of ``c`` batched products over ``rows / c`` rows each it is 15-40% faster for the
    small conditioners' shapes (``benchmarks/results/nsf_speed.md``, "kernel gradients under XLA"): ``c = rows /
    128`` (at most 8) where ``fan_in >= 16`` and ``fan_out <= 64``, else 1 (no gain, or a loss, measured)."""
    if rows is None or fan_in is None or fan_out is None or fan_in < 16 or fan_out > 64:
        return 1
    chunks = min(8, int(rows) // 128)
    return chunks if chunks > 1 and int(rows) % chunks == 0 else 1


def _chunked_kernel_grad(h, kernel, chunks: int):
    """``h @ kernel``, whose kernel gradient is ``sum_c h_c^T g_c`` over ``chunks`` row blocks (exact up to the
    order of the sum); the input gradient is ``g @ kernel^T`` as usual."""
    @tf.custom_gradient
    def product(h, kernel):
        def grad(g):
            rows = int(h.shape[0])
            blocks = tf.matmul(tf.reshape(h, [chunks, rows // chunks, -1]), tf.reshape(g, [chunks, rows // chunks, -1]),
                               transpose_a=True)
            return tf.matmul(g, kernel, transpose_b=True), tf.reduce_sum(blocks, axis=0)
        return tf.matmul(h, kernel), grad
    return product(h, kernel)


def _small_uniform():
    """Keras' uniform initializer in +-BLOCK_INIT; a new instance per use (a reused one repeats its draws)."""
    return keras.initializers.RandomUniform(-BLOCK_INIT, BLOCK_INIT)


def _hidden_policy(dtype: tf.DType):
    """The dtype (policy) of hidden Keras layers: the global mixed policy for float32 flows, else ``dtype``."""
    policy = keras.mixed_precision.global_policy()
    return policy if dtype == tf.float32 and policy.name.startswith("mixed_") else dtype.name


# ---------------------------------------------------------------------------------------------------- MLP
class MLP(tf.Module):
    """A fully connected network ``in_features -> hidden_units... -> out_features`` built in ``dtype``.

    With ``zero_last`` the output layer starts at zero, so a coupling layer starts as the identity.

    Arguments:
        in_features, out_features: input and output widths.
        hidden_units: hidden widths (all equal, the stream's width, with residual blocks).
        dtype: the flow's dtype.
        activation: a name of :data:`ACTIVATIONS`.
        zero_last: start the output layer (kernel and bias) at zero; else Glorot-uniform kernel, zero bias.
        residual_blocks, dropout: see the module docstring (0 and 0.0: a plain MLP).
        backend: ``"keras"`` or ``"numpy"`` (see the module docstring); ``seed`` seeds the numpy draws.
    """

    def __init__(self, in_features: int, out_features: int, hidden_units: Sequence[int], dtype, *,
                 activation: str = "relu", zero_last: bool = True, residual_blocks: int = 0, dropout: float = 0.0,
                 backend: str = "keras", seed: int = 0, name: str | None = None):
        super().__init__(name=name)
        units = _check_structure(hidden_units, residual_blocks, dropout, backend, "MLP")
        self.dtype = as_dtype(dtype)
        self.act = _activation(activation)
        self.residual_blocks, self.dropout, self.backend = int(residual_blocks), float(dropout), backend
        shapes = _layer_shapes(int(in_features), units, int(out_features), self.residual_blocks)
        if backend == "keras":
            hidden_dtype = _hidden_policy(self.dtype)
            net = keras.Sequential()
            net.add(keras.Input(shape=(int(in_features),), dtype=self.dtype.name))
            for _, b, role in shapes:
                if role == "output":
                    net.add(keras.layers.Dense(b, kernel_initializer="zeros" if zero_last else "glorot_uniform",
                                               bias_initializer="zeros", dtype=self.dtype.name))
                elif role == "block_out":
                    net.add(keras.layers.Dense(b, kernel_initializer=_small_uniform(),
                                               bias_initializer=_small_uniform(), dtype=hidden_dtype))
                else:
                    net.add(keras.layers.Dense(b, dtype=hidden_dtype))
            self._network = net
        else:
            rng = np.random.default_rng(seed)
            self.weights, self.biases = [], []
            for a, b, role in shapes:
                if role == "output" and zero_last:
                    self.weights.append(tf.Variable(tf.zeros([a, b], self.dtype)))
                    self.biases.append(tf.Variable(tf.zeros([b], self.dtype)))
                elif role == "block_out":
                    self.weights.append(tf.Variable(rng.uniform(-BLOCK_INIT, BLOCK_INIT, (a, b)), dtype=self.dtype))
                    self.biases.append(tf.Variable(rng.uniform(-BLOCK_INIT, BLOCK_INIT, (b,)), dtype=self.dtype))
                else:
                    self.weights.append(glorot_variable([a, b], a, b, rng, self.dtype))
                    self.biases.append(tf.Variable(tf.zeros([b], self.dtype)))

    def _linears(self, low=None):
        if self.backend == "keras":
            layers = list(self._network.layers)  # Dense layers: matmul, bias_add, autocast under a mixed policy
            if low is None and not (in_xla_training() and all(layer.dtype == layer.compute_dtype for layer in layers)):
                return layers
            pairs = [(layer.kernel, layer.bias) for layer in layers]
        else:
            pairs = list(zip(self.weights, self.biases))
        last = len(pairs) - 1
        return [lambda h, w=w, b=b, low=(low if i < last else None): _matmul(h, w, low) + b
                for i, (w, b) in enumerate(pairs)]

    def __call__(self, x, training: bool = False, columns=None):
        """The network's output; with ``columns`` (a fixed sequence of output indices) only those outputs, in that
        order, and only their share of the output layer's product is computed."""
        low = _low_precision(tf.convert_to_tensor(x)) if self.dtype == tf.float32 else None
        linears = self._linears(low)
        if columns is not None:
            linears[-1] = self._output_columns(np.asarray(columns, np.int64))
        return _feedforward(x, linears, self.act, self.residual_blocks, self.dropout, training)

    def _output_columns(self, columns):
        if self.backend == "keras":
            kernel, bias = self._network.layers[-1].kernel, self._network.layers[-1].bias
        else:
            kernel, bias = self.weights[-1], self.biases[-1]
        n = int(kernel.shape[-1])
        order = np.concatenate([columns, np.setdiff1d(np.arange(n), columns)])
        inverse, k = np.argsort(order), len(columns)

        def linear(h):
            w = permute(tf.convert_to_tensor(kernel), order, inverse)[:, :k]
            b = permute(tf.convert_to_tensor(bias), order, inverse)[:k]
            return _matmul(tf.cast(h, w.dtype), w, None) + b

        return linear


# ---------------------------------------------------------------------------------------------------- MADE
def _input_degrees(event_size: int, input_order) -> np.ndarray:
    if isinstance(input_order, str):
        if input_order == "left-to-right":
            return np.arange(1, event_size + 1)
        if input_order == "right-to-left":
            return np.arange(event_size, 0, -1)
        raise ValueError(f"input_order {input_order!r} is not supported; accepted: left-to-right, right-to-left, "
                         "or a permutation of 1..d")
    order = np.asarray(input_order)
    if sorted(order.tolist()) != list(range(1, event_size + 1)):
        raise ValueError(f"input_order {order.tolist()} is not a permutation of 1..{event_size}")
    return order


def _hidden_degrees(event_size: int, units: int, previous: np.ndarray, scheme: str) -> np.ndarray:
    if scheme == "equal":  # TFP's AutoregressiveNetwork: [1, d-1] split evenly into units + 1 segments
        low = min(np.min(previous), event_size - 1)
        return np.maximum(low, np.ceil(np.arange(1, units + 1) * (event_size - 1) / float(units + 1)).astype(np.int32))
    if scheme == "cyclic":  # degrees 1..d-1, cycled
        return np.arange(int(units)) % max(1, event_size - 1) + 1
    raise ValueError(f"hidden_degrees {scheme!r} is not supported; accepted: {', '.join(HIDDEN_DEGREES)}")


def made_masks(event_size: int, params: int, hidden_units: Sequence[int], hidden_degrees: str = "equal",
               input_order="left-to-right", residual_blocks: int = 0) -> list[np.ndarray]:
    """MADE's connectivity masks (Germain et al. 2015, https://arxiv.org/abs/1502.03509), boolean ``[in, out]``.

    One per linear layer of a :class:`MaskedMLP` in call order.  Inputs have degrees ``input_order`` (1..d);
    hidden unit ``k`` has a degree in 1..d-1 (``hidden_degrees``: ``"equal"``, TFP's even split, or
    ``"cyclic"``); a hidden connection exists from degree m to degree m' iff m' >= m, and output ``(i, p)``
    (column ``i * params + p``) sees hidden degree m iff m < degree(input i).  So output i depends only on
    the inputs of smaller degree: with ``left-to-right``, on ``x_<i``.  With residual blocks every hidden
    layer has the stream's degrees (computed once), so the skip connections keep the property.
    """
    d = int(event_size)
    inputs = _input_degrees(d, input_order)
    degrees = [inputs]
    widths = [int(u) for u in hidden_units]
    if residual_blocks:
        stream = _hidden_degrees(d, widths[0], inputs, hidden_degrees)
        degrees += [stream] * (1 + 2 * int(residual_blocks))
    else:
        for units in widths:
            degrees.append(_hidden_degrees(d, units, degrees[-1], hidden_degrees))
    masks = [prev[:, None] <= cur[None, :] for prev, cur in zip(degrees[:-1], degrees[1:])]
    masks.append(degrees[-1][:, None] < np.repeat(inputs, int(params))[None, :])
    return masks


def _masked_initializer(mask: np.ndarray, initializer):
    initializer = keras.initializers.get(initializer)

    def init(shape, dtype=None):
        value = initializer(shape, dtype)
        return tf.cast(mask, value.dtype) * value

    return init


def _masked_constraint(mask: np.ndarray):
    def constraint(x):
        x = tf.convert_to_tensor(x, dtype_hint=tf.float32)
        return tf.cast(mask, x.dtype) * x

    return constraint


class MaskedMLP(tf.Module):
    """MADE: a masked MLP ``[batch, d] -> [batch, d, params]`` whose output row ``i`` depends only on the inputs
    before ``i`` in ``input_order`` (Germain et al. 2015, https://arxiv.org/abs/1502.03509; masks from
    :func:`made_masks`).

    The masks multiply the weights inside ``__call__`` (``h = act(h (M * W) + b)``), so the autoregressive
    property holds whatever values the variables take (an optimiser step, a perturbation, a hand-edited
    checkpoint), and masked weights get zero gradient.  With ``backend="keras"`` the kernels also start masked
    and carry a masking constraint, as in TFP's ``AutoregressiveNetwork`` (whose variables, names and
    initial values they reproduce).

    Arguments:
        event_size: d; params: outputs per feature.
        hidden_units: hidden widths (all equal, the stream's width, with residual blocks).
        dtype: the flow's dtype.
        activation: a name of :data:`ACTIVATIONS`.
        hidden_degrees, input_order: see :func:`made_masks`.
        init: ``"glorot"`` (Glorot-uniform kernels, zero biases) or ``"fan_in"`` (kernels and biases uniform in
            +-1/sqrt(fan_in), fan_in the layer's full input width: PyTorch's ``nn.Linear`` default, which zuko's
            MAF uses).  With ``zero_last`` the output layer then starts at zero, so a spline layer starts as the
            identity (the MADE MoG needs ``False``: identical components never separate).
        output_bias: ``"zeros"`` or ``"normal"`` (standard-normal output biases, as the MAF code's MoG MADE draws
            them: the first feature's outputs see no input, so with zero biases its mixture components start,
            and stay, identical).  Ignored with ``zero_last``.
        residual_blocks, dropout: see the module docstring (0 and 0.0: a plain MADE).
        backend: ``"keras"`` or ``"numpy"`` (see the module docstring); ``seed`` seeds the numpy draws.
    """

    def __init__(self, event_size: int, params: int, hidden_units: Sequence[int], dtype, *,
                 activation: str = "relu", hidden_degrees: str = "equal", input_order="left-to-right",
                 init: str = "glorot", zero_last: bool = True, residual_blocks: int = 0, dropout: float = 0.0,
                 backend: str = "keras", seed: int = 0, output_bias: str = "zeros", name: str | None = None):
        super().__init__(name=name)
        units = _check_structure(hidden_units, residual_blocks, dropout, backend, "MaskedMLP")
        if init not in ("glorot", "fan_in"):
            raise ValueError(f"MaskedMLP: init = {init!r} is not accepted; accepted: glorot, fan_in")
        if output_bias not in ("zeros", "normal"):
            raise ValueError(f"MaskedMLP: output_bias = {output_bias!r} is not accepted; accepted: zeros, normal")
        normal_bias = output_bias == "normal" and not zero_last
        self.dtype = as_dtype(dtype)
        self.event_size, self.params = int(event_size), int(params)
        self.act = _activation(activation)
        self.residual_blocks, self.dropout, self.backend = int(residual_blocks), float(dropout), backend
        masks = made_masks(self.event_size, self.params, units, hidden_degrees, input_order, self.residual_blocks)
        roles = [role for _, _, role in _layer_shapes(self.event_size, units, self.event_size * self.params,
                                                      self.residual_blocks)]
        self.masks = [tf.constant(m.astype(np.float64), self.dtype) for m in masks]
        if backend == "keras":
            net = keras.Sequential()
            net.add(keras.Input(shape=(self.event_size,), dtype=self.dtype.name))
            for mask, role in zip(masks, roles):
                small = role == "block_out"
                kernel_init = _masked_initializer(mask, _small_uniform() if small else "glorot_uniform")
                net.add(keras.layers.Dense(mask.shape[1], kernel_initializer=kernel_init,
                                           bias_initializer=_small_uniform() if small else "zeros",
                                           kernel_constraint=_masked_constraint(mask), dtype=self.dtype.name))
            self._network = net
            dense = list(net.layers)
            if init == "fan_in":
                for layer, role in zip(dense, roles):
                    if role == "block_out":
                        continue
                    bound = 1.0 / math.sqrt(int(layer.kernel.shape[0]))
                    for v in (layer.kernel, layer.bias):
                        v.assign(tf.random.uniform(v.shape, -bound, bound, dtype=v.dtype))
            if zero_last:
                for v in dense[-1].trainable_variables:
                    v.assign(tf.zeros_like(v))
            elif normal_bias:
                bias = dense[-1].bias
                bias.assign(keras.initializers.RandomNormal(0.0, 1.0)(bias.shape, bias.dtype))
        else:
            rng = np.random.default_rng(seed)
            self.weights, self.biases = [], []
            for i, (mask, role) in enumerate(zip(masks, roles)):
                a, b = mask.shape
                if role == "output" and zero_last:
                    w, bias = np.zeros((a, b)), np.zeros(b)
                elif role == "output" and normal_bias:
                    fan = 1.0 / math.sqrt(a) if init == "fan_in" else math.sqrt(6.0 / (a + b))
                    w, bias = rng.uniform(-fan, fan, (a, b)), rng.normal(size=b)
                elif role == "block_out":
                    w, bias = rng.uniform(-BLOCK_INIT, BLOCK_INIT, (a, b)), rng.uniform(-BLOCK_INIT, BLOCK_INIT, (b,))
                elif init == "fan_in":
                    bound = 1.0 / math.sqrt(a)
                    w, bias = rng.uniform(-bound, bound, size=(a, b)), rng.uniform(-bound, bound, size=b)
                else:
                    self.weights.append(glorot_variable((a, b), a, b, rng, self.dtype))
                    self.biases.append(tf.Variable(tf.zeros([b], self.dtype)))
                    continue
                self.weights.append(tf.Variable(w, dtype=self.dtype))
                self.biases.append(tf.Variable(bias, dtype=self.dtype))

    def _kernels_and_biases(self):
        if self.backend == "keras":
            return [(layer.kernel, layer.bias) for layer in self._network.layers]
        return list(zip(self.weights, self.biases))

    def __call__(self, x, training: bool = False):
        x = tf.convert_to_tensor(x, dtype=self.dtype)
        low, pairs = _low_precision(x), self._kernels_and_biases()
        last = len(pairs) - 1  # the output layer stays in the network's dtype
        linears = [lambda h, w=w, m=m, b=b, low=(low if i < last else None): _matmul(h, w * m, low) + b
                   for i, ((w, b), m) in enumerate(zip(pairs, self.masks))]
        h = _feedforward(x, linears, self.act, self.residual_blocks, self.dropout, training)
        return tf.reshape(h, tf.concat([tf.shape(x), [self.params]], axis=0))


# ---------------------------------------------------------------------------------------------------- ConvNet
class ConvNet(tf.Module):
    """Small residual CNN for a coupling's (log-scale, shift): 3x3 conv in, residual blocks, zero-init 3x3 conv out.

    ``h = conv_in(x)``, then ``num_res_blocks`` blocks ``h <- h + conv(act(conv(act(h))))``, then
    ``conv_out(act(h))`` (0 blocks: a plain 2-conv CNN); numpy-seeded Glorot-uniform weights, zero biases.

    Args:
        in_channels, out_channels: channels of the input and output.
        num_filters: width of the hidden convolutions.
        num_res_blocks: residual blocks.
        dtype: float32 or float64.
        seed: seed of the initial weights.
        activation: a name of :data:`ACTIVATIONS`.
    """

    def __init__(self, in_channels, out_channels, num_filters, num_res_blocks, dtype, seed=0, activation="relu",
                 name=None):
        super().__init__(name=name)
        rng = np.random.default_rng(seed)
        self.act = _activation(activation)

        def conv(cin, cout, zero=False):
            if zero:
                return tf.Variable(tf.zeros([3, 3, cin, cout], dtype))
            return glorot_variable((3, 3, cin, cout), 9 * cin, 9 * cout, rng, dtype)

        f = int(num_filters)
        self.w_in, self.b_in = conv(in_channels, f), tf.Variable(tf.zeros([f], dtype))
        self.blocks = [
            (conv(f, f), tf.Variable(tf.zeros([f], dtype)), conv(f, f), tf.Variable(tf.zeros([f], dtype)))
            for _ in range(int(num_res_blocks))
        ]
        self.w_out, self.b_out = conv(f, out_channels, zero=True), tf.Variable(tf.zeros([out_channels], dtype))

    def __call__(self, x):
        pairs = [(self.w_in, self.b_in)]
        for w1, b1, w2, b2 in self.blocks:
            pairs += [(w1, b1), (w2, b2)]
        pairs.append((self.w_out, self.b_out))
        convs = [lambda h, w=w, b=b: tf.nn.conv2d(h, w, strides=1, padding="SAME") + b for w, b in pairs]
        return _feedforward(x, convs, self.act, len(self.blocks), 0.0, False, act_before_output=True)


# ---------------------------------------------------------------------------------------------------- layers
def permute(x, order, inverse_order, axis: int = -1):
    """``tf.gather(x, order, axis=axis)`` for a fixed permutation ``order`` (``inverse_order`` its argsort),
    differentiated as the inverse permutation.  TensorFlow's own gradient of a gather is a scatter-add
    (``UnsortedSegmentSum``), which XLA's CPU backend runs element by element; a permutation's is a gather.  Both
    are exact: values and gradients are bitwise those of ``tf.gather``."""
    order, inverse_order = np.asarray(order, np.int32), np.asarray(inverse_order, np.int32)  # graph constants

    @tf.custom_gradient
    def gather(x):
        return tf.gather(x, order, axis=axis), lambda dy: tf.gather(dy, inverse_order, axis=axis)

    return gather(x)


class MaskSplit:
    """The kept (mask True) and free features of the last axis, apart and back together, by fixed permutations
    (:func:`permute`): a coupling computes its transform on the free features only."""

    def __init__(self, mask):
        mask = np.asarray(mask, dtype=bool)
        self.kept, self.free = np.flatnonzero(mask), np.flatnonzero(~mask)
        self.order = np.concatenate([self.kept, self.free])
        self.inverse_order = np.argsort(self.order)

    def split(self, x):
        """``(x[..., kept], x[..., free])``."""
        x = permute(x, self.order, self.inverse_order)
        return x[..., : len(self.kept)], x[..., len(self.kept):]

    def join(self, kept, free):
        """The inverse of :meth:`split`."""
        return permute(tf.concat([kept, free], axis=-1), self.inverse_order, self.order)


class Permutation(FlowLayer):
    """A fixed permutation of the last axis (log-det 0), from an explicit ``order`` or a random ``seed``.

    Arguments:
        event_size: number of features ``d``.
        order: a permutation of ``range(d)``; ``inverse`` returns ``x[..., order]``.
        seed: if ``order`` is None, a random permutation drawn with ``numpy.random.default_rng(seed)``.
        dtype: the flow's dtype (for the zero log-det).
    """

    def __init__(self, event_size: int, order=None, seed: int | None = 0, dtype="float32", name=None):
        super().__init__(name=name)
        d = int(event_size)
        if order is None:
            order = np.random.default_rng(seed).permutation(d)
        order = np.asarray(order, dtype=np.int64)
        if sorted(order.tolist()) != list(range(d)):
            raise ValueError(f"order {order.tolist()} is not a permutation of range({d})")
        self.dtype = as_dtype(dtype)
        # NumPy, so that a traced call embeds them as constants (XLA sees a fixed gather, not a loop input)
        self.order = order.astype(np.int32)
        self.inverse_order = np.argsort(order).astype(np.int32)

    def _zero(self, x):
        return tf.zeros(tf.shape(x)[:1], self.dtype)

    def inverse(self, x, training: bool = False):
        return permute(x, self.order, self.inverse_order), self._zero(x)

    def forward(self, z):
        return permute(z, self.inverse_order, self.order), self._zero(z)


class Reverse(Permutation):
    """Reverse the order of the features (between autoregressive layers: MAF, NAF); log-det 0.  ``tf.reverse``,
    whose gradient is a reverse too (see :func:`permute`)."""

    def __init__(self, event_size: int, dtype="float32", name=None):
        super().__init__(event_size, order=np.arange(int(event_size))[::-1], dtype=dtype, name=name)

    def inverse(self, x, training: bool = False):
        return tf.reverse(x, [-1]), self._zero(x)

    def forward(self, z):
        return tf.reverse(z, [-1]), self._zero(z)


class BatchNorm(FlowLayer):
    """Batch normalisation as a bijection, for density estimation (MAF, Papamakarios et al. 2017).

    "Masked Autoregressive Flow for Density Estimation", G. Papamakarios, T. Pavlakou, I. Murray, 2017,
    https://arxiv.org/abs/1705.07057 (appendix B); after Real NVP (Dinh et al. 2016, arXiv:1605.08803).

    Data -> noise, per feature (last axis):

        z = exp(log_gamma) * (x - m) / sqrt(v + eps) + beta,
        log|det dz/dx| = n_pos * sum(log_gamma - 0.5 log(v + eps)),

    where ``n_pos`` is the number of positions per example (1 for vectors, h*w for images).
    With ``training=True`` (m, v) are the batch moments, and the running moments are updated:
    ``running = momentum * running + (1 - momentum) * batch``.  With ``training=False`` (evaluation)
    (m, v) are the running moments and nothing is updated, so the density of a point never depends on
    the rest of the batch.  ``forward`` (sampling) always uses the running moments.
    ``initialize(x)`` sets the running moments to those of ``x``.

    Arguments:
        num_features: size of the last axis.
        momentum: decay of the running moments.
        eps: added to the variance.
        dtype: the flow's dtype.
    """

    def __init__(self, num_features: int, momentum: float = 0.9, eps: float = 1e-5, dtype="float32", name=None):
        super().__init__(name=name)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"BatchNorm momentum = {momentum!r} must be in [0, 1)")
        self.dtype = as_dtype(dtype)
        c = int(num_features)
        self.momentum = tf.constant(momentum, self.dtype)
        self.eps = tf.constant(eps, self.dtype)
        self.log_gamma = tf.Variable(tf.zeros([c], self.dtype), name="log_gamma")
        self.beta = tf.Variable(tf.zeros([c], self.dtype), name="beta")
        self.running_mean = tf.Variable(tf.zeros([c], self.dtype), trainable=False, name="running_mean")
        self.running_var = tf.Variable(tf.ones([c], self.dtype), trainable=False, name="running_var")

    def _positions(self, x):
        shape = tf.shape(x)
        return tf.cast(tf.reduce_prod(shape[1:-1]), self.dtype)

    def _moments(self, x):
        axes = list(range(len(x.shape) - 1))
        return tf.nn.moments(x, axes=axes)

    def inverse(self, x, training: bool = False):
        if training:
            mean, var = self._moments(x)
            self.running_mean.assign(self.momentum * self.running_mean + (1 - self.momentum) * tf.stop_gradient(mean))
            self.running_var.assign(self.momentum * self.running_var + (1 - self.momentum) * tf.stop_gradient(var))
        else:
            mean, var = tf.identity(self.running_mean), tf.identity(self.running_var)
        inv_std = tf.math.rsqrt(var + self.eps)
        z = tf.exp(self.log_gamma) * (x - mean) * inv_std + self.beta
        ldj = self._positions(x) * tf.reduce_sum(self.log_gamma + tf.math.log(inv_std))
        return z, tf.fill(tf.shape(x)[:1], ldj)

    def forward(self, z):
        std = tf.sqrt(self.running_var + self.eps)
        x = (z - self.beta) * tf.exp(-self.log_gamma) * std + self.running_mean
        ldj = self._positions(z) * tf.reduce_sum(-self.log_gamma + tf.math.log(std))
        return x, tf.fill(tf.shape(z)[:1], ldj)

    def initialize(self, x):
        mean, var = self._moments(x)
        self.running_mean.assign(mean)
        self.running_var.assign(var)
        return self.inverse(x, training=False)[0]


def bounded_log_scale(raw, scale: str, log_gain=None):
    """A coupling's bounded log-scale: Real NVP's ``exp(g) * tanh(raw)`` (``scale="tanh"``, ``g = log_gain``,
    learned per feature) or Glow's ``log sigmoid(raw + 2)`` (``"sigmoid"``)."""
    if scale == "tanh":
        return tf.exp(log_gain) * tf.tanh(raw)
    return tf.math.log_sigmoid(raw + tf.constant(2.0, raw.dtype))


class AffineCoupling(FlowLayer):
    """Affine coupling splitting the last axis in halves: Glow's coupling (Kingma & Dhariwal 2018, sec. 3.3,
    https://arxiv.org/abs/1807.03039) and Real NVP's channel coupling (Dinh et al. 2017, arXiv:1605.08803).

    Data -> noise: ``z_a = x_a``, ``z_b = x_b * exp(s) + t`` with ``(raw, t) = net(x_a)`` and
    ``s = bounded_log_scale(raw, scale)``; ``log|det dz/dx| = sum(s)`` over every non-batch axis.  The split
    point is ``k = d // 2`` (``x_a = x[..., :k]``); ``parity`` 1 swaps the roles of the halves.  Works on
    vectors ``[b, d]`` and images ``[b, h, w, d]`` alike.

    Args:
        num_features: d >= 2 (features or channels).
        parity: 0 or 1.
        conditioner: ``conditioner(in_features, out_features)`` builds the network (an :class:`MLP` for
            vectors, a :class:`ConvNet` for images), whose last layer should start at zero so the coupling
            starts as (near) the identity.
        dtype: the flow's dtype.
        scale: ``"sigmoid"`` (Glow) or ``"tanh"`` (Real NVP, with a learned per-feature gain ``log_gain``).
    """

    def __init__(self, num_features: int, parity: int, conditioner: Callable[[int, int], Callable], dtype,
                 scale: str = "sigmoid", name=None):
        super().__init__(name=name)
        d = int(num_features)
        if d < 2:
            raise ValueError(f"an affine coupling needs d >= 2 features (or channels); got d = {d}")
        if scale not in SCALES:
            raise ValueError(f"coupling scale {scale!r} is not supported; accepted: {', '.join(SCALES)}")
        self.dtype, self.d, self.parity, self.scale = as_dtype(dtype), d, int(parity) % 2, scale
        self.k = d // 2
        n_cond = self.k if self.parity == 0 else d - self.k
        if scale == "tanh":
            self.log_gain = tf.Variable(tf.zeros([d - n_cond], self.dtype), name="log_gain")
        self.net = conditioner(n_cond, 2 * (d - n_cond))

    def _split(self, x):
        a, b = x[..., : self.k], x[..., self.k:]
        return (a, b) if self.parity == 0 else (b, a)

    def _join(self, cond, trans):
        return tf.concat([cond, trans] if self.parity == 0 else [trans, cond], axis=-1)

    def _params(self, cond):
        raw, shift = tf.split(self.net(cond), 2, axis=-1)
        return bounded_log_scale(raw, self.scale, getattr(self, "log_gain", None)), shift

    @staticmethod
    def _sum(s):
        return tf.reduce_sum(s, axis=list(range(1, s.shape.rank)))

    def inverse(self, x, training: bool = False):
        cond, trans = self._split(x)
        s, t = self._params(cond)
        return self._join(cond, trans * tf.exp(s) + t), self._sum(s)

    def forward(self, z):
        cond, trans = self._split(z)
        s, t = self._params(cond)
        return self._join(cond, (trans - t) * tf.exp(-s)), -self._sum(s)


class MaskedAffineCoupling(FlowLayer):
    """Affine coupling layer of Real NVP on vectors: half the features, chosen by a mask, condition an affine map
    of the rest.

    "Density estimation using Real NVP", L. Dinh, J. Sohl-Dickstein, S. Bengio, 2016,
    https://arxiv.org/abs/1605.08803

    Data -> noise, with ``b`` the binary mask (1 = kept) and ``(s, t) = NN(b * x)``:

        z = b * x + (1 - b) * (x * exp(s) + t),      log|det dz/dx| = sum((1 - b) * s),
        x = b * z + (1 - b) * (z - t) * exp(-s)      (noise -> data, same s, t since b * z = b * x).

    ``s`` is soft-clamped to (-3, 3) by ``3 tanh(raw / 3)`` so that no step can blow up.  The network (an
    :class:`MLP`) starts with a zero last layer, so the layer starts as the identity; it has an output for every
    feature's ``s`` and ``t`` (checkpoints keep their shapes), of which only the free features' are computed.

    Arguments:
        mask: boolean array of length ``d``, True for the conditioning (unchanged) features.
        hidden_units: widths of the conditioner MLP.
        dtype: the flow's dtype.
        activation: hidden activation of the MLP.
    """

    #: bound of the log-scale: s = 3 tanh(raw / 3), so one coupling scales a feature by at most e^3
    LOG_SCALE_BOUND = 3.0

    def __init__(self, mask, hidden_units, dtype="float32", activation: str = "relu", name=None):
        super().__init__(name=name)
        self.dtype = as_dtype(dtype)
        mask = np.asarray(mask, dtype=bool)
        d = mask.shape[0]
        self.mask = tf.constant(mask, self.dtype)
        self.net = MLP(d, 2 * d, hidden_units, self.dtype, activation=activation)
        # the network's outputs are (s, t) for every feature; only the free features' are computed and used
        self.split = MaskSplit(mask)
        self.columns = np.concatenate([self.split.free, d + self.split.free])

    def _scale_shift(self, x, training=False):
        """(s, t) of the free features, from the kept ones (``b * x``)."""
        s, t = tf.split(self.net(x * self.mask, training=training, columns=self.columns), 2, axis=-1)
        return soft_clamp(s, self.LOG_SCALE_BOUND), t

    def inverse(self, x, training: bool = False):
        s, t = self._scale_shift(x, training)
        kept, free = self.split.split(x)
        return self.split.join(kept, free * tf.exp(s) + t), tf.reduce_sum(s, axis=-1)

    def forward(self, z):
        s, t = self._scale_shift(z)
        kept, free = self.split.split(z)
        return self.split.join(kept, (free - t) * tf.exp(-s)), -tf.reduce_sum(s, axis=-1)


class Invert(FlowLayer):
    """The inverse of a flow layer, as ``tfp.bijectors.Invert`` or zuko's ``.inv``: ``Invert(layer).inverse`` is
    ``layer.forward`` and ``Invert(layer).forward`` is ``layer.inverse`` (log-determinants follow).

    It runs a layer the other way round, e.g. a planar or radial map from noise to data for variational
    inference (:class:`flows.energies.VariationalFlow`): such an inverted layer samples, with the exact
    log-density of its samples, but has no data -> noise map (:class:`~flows.base.NotInvertibleError`).
    """

    def __init__(self, layer: FlowLayer, name=None):
        super().__init__(name=name or f"invert_{layer.name}")
        self.layer = layer  # can_sample stays True: the forward is the layer's inverse, always defined

    def inverse(self, x, training: bool = False):
        if not self.layer.can_sample:
            raise NotInvertibleError(
                f"Invert({type(self.layer).__name__}) has no data -> noise map: {type(self.layer).__name__} has no "
                "algebraic inverse, so the inverted layer samples (with exact log-densities of its samples) but "
                "cannot evaluate the density of an arbitrary point"
            )
        return self.layer.forward(x)

    def forward(self, z):
        return self.layer.inverse(z, training=False)
