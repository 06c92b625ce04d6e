"""The shared building blocks of flows.nn: activation lookup, MLP / MADE (residual blocks, dropout), Invert."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

import flows  # noqa: E402
from flows import nn  # noqa: E402
from flows.base import NotInvertibleError  # noqa: E402
from flows.planar import PlanarLayer  # noqa: E402

F64 = tf.float64


def _randomise(module, seed=0, scale=0.5):
    """Every variable random and non-zero (masked kernel entries included), so only the masks can hide an input."""
    rng = np.random.default_rng(seed)
    for v in module.trainable_variables:
        v.assign(rng.normal(0.0, scale, size=v.shape).astype(v.dtype.as_numpy_dtype))


def _x(n=6, d=5, seed=1):
    return tf.constant(np.random.default_rng(seed).normal(size=(n, d)), F64)


# ------------------------------------------------------------------------------------------ activations
def test_activation_lookup_is_keras_bitwise_and_refuses_unknown_names():
    x = tf.constant(np.linspace(-6.0, 6.0, 101), tf.float32)
    for name in nn.ACTIVATIONS:
        np.testing.assert_array_equal(nn.activation(name)(x).numpy(), keras.activations.get(name)(x).numpy())
    with pytest.raises(ValueError, match=r"activation 'mish' is not supported; accepted: elu, gelu, relu"):
        nn.activation("mish")
    with pytest.raises(ValueError, match="not supported"):
        nn.MLP(2, 2, [4], F64, activation="leaky")


def _flows_with_activation():
    for name, spec in sorted(flows.FLOWS.items()):
        for kind in spec.kinds:
            if "activation" in spec.options(kind):
                yield name, kind


@pytest.mark.parametrize("name,kind", list(_flows_with_activation()))
@pytest.mark.parametrize("act", sorted(nn.ACTIVATIONS))
def test_every_flow_accepts_every_activation(name, kind, act):
    options = flows.FLOWS[name].options(kind)
    hp = {"activation": act}
    if "hidden_units" in options:
        hp["hidden_units"] = [8]
    if "num_layers" in options:
        hp["num_layers"] = 1
    shape = [3] if kind == "vector" else [4, 4, 1]
    flow = flows.build_flow(name, shape, "float64", **hp)
    x = tf.constant(np.random.default_rng(0).normal(size=[4] + shape), F64)
    flow.initialize(x)
    lp = flow.log_prob(x).numpy()
    assert lp.shape == (4,) and np.all(np.isfinite(lp)), (name, act, lp)


# ------------------------------------------------------------------------------------------ MADE masks
MADE_CASES = [
    dict(backend="keras", hidden_degrees="equal"),
    dict(backend="numpy", hidden_degrees="cyclic"),
    dict(backend="keras", hidden_degrees="equal", residual_blocks=2),
    dict(backend="numpy", hidden_degrees="cyclic", residual_blocks=2, dropout=0.3),
    dict(backend="keras", hidden_degrees="cyclic", dropout=0.5, init="fan_in"),
    dict(backend="numpy", hidden_degrees="equal", residual_blocks=1, dropout=0.5, input_order="right-to-left"),
]


@pytest.mark.parametrize("case", MADE_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_made_output_i_depends_only_on_earlier_inputs(case):
    """Autodiff Jacobian of every output on every input, all weights random: d out_i / d x_j = 0 unless j < i."""
    d, params = 5, 3
    units = [16, 16] if not case.get("residual_blocks") else [16]
    net = nn.MaskedMLP(d, params, units, F64, activation="tanh", **case)  # tanh: no dead unit hides a path
    _randomise(net, seed=2)
    x = _x(d=d)
    for training in (False, True):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = net(x, training=training)
            flat = tf.reshape(out, [6, d * params])  # on the tape: a reshape outside it would give a zero Jacobian
        assert out.shape == (6, d, params)
        jac = tape.batch_jacobian(flat, x).numpy().reshape(6, d, params, d)
        order = np.arange(d) if case.get("input_order") != "right-to-left" else np.arange(d)[::-1]
        rank = np.argsort(order)  # position of each feature in the autoregressive order
        for i in range(d):
            for j in range(d):
                block = np.abs(jac[:, i, :, j])
                if rank[j] >= rank[i]:
                    assert block.max() == 0.0, (case, training, i, j)
                elif not training or not case.get("dropout"):
                    assert block.max() > 0.0, (case, i, j)  # and it is connected to every earlier input


def test_made_masks_equal_tfps_for_the_equal_degrees():
    from tensorflow_probability.python.bijectors.masked_autoregressive import _make_dense_autoregressive_masks

    for d, params, units in [(2, 2, [8]), (5, 3, [16, 16]), (7, 23, [4, 64, 3]), (3, 2, [64, 64])]:
        ours = nn.made_masks(d, params, units, "equal")
        tfps = _make_dense_autoregressive_masks(params=params, event_size=d, hidden_units=units)
        assert len(ours) == len(tfps)
        for a, b in zip(ours, tfps):
            np.testing.assert_array_equal(a, b)


def test_keras_made_kernels_start_masked_and_stay_masked_under_the_constraint():
    net = nn.MaskedMLP(4, 2, [8, 8], F64, zero_last=False)
    dense = net._network.layers
    for layer, mask in zip(dense, net.masks):
        assert np.all(layer.kernel.numpy()[mask.numpy() == 0] == 0.0)
        layer.kernel.assign(tf.ones_like(layer.kernel))
        np.testing.assert_array_equal(layer.kernel.constraint(layer.kernel).numpy(), mask.numpy())


# ------------------------------------------------------------------------------------------ residual + dropout
@pytest.mark.parametrize("backend", nn.BACKENDS)
def test_mlp_residual_blocks_and_dropout(backend):
    net = nn.MLP(3, 7, [16, 16], F64, residual_blocks=2, dropout=0.5, zero_last=False, backend=backend, seed=3)
    # stem, 2 blocks of 2 layers, output: 6 kernels and 6 biases
    shapes = sorted(tuple(v.shape) for v in net.trainable_variables)
    assert shapes == sorted([(3, 16), (16,)] + [(16, 16), (16,)] * 4 + [(16, 7), (7,)])
    x = _x(n=32, d=3)
    y0, y1 = net(x).numpy(), net(x, training=False).numpy()
    assert y0.shape == (32, 7)
    np.testing.assert_array_equal(y0, y1)  # no dropout outside training
    a, b = net(x, training=True).numpy(), net(x, training=True).numpy()
    assert a.shape == (32, 7) and np.abs(a - b).max() > 0  # dropout draws a new mask each call
    assert nn.MLP(3, 7, [16], F64, residual_blocks=1, backend=backend)(x).numpy().max() == 0.0  # zero_last
    with pytest.raises(ValueError, match="not all equal"):
        nn.MLP(3, 7, [16, 8], F64, residual_blocks=1, backend=backend)
    with pytest.raises(ValueError, match="dropout"):
        nn.MLP(3, 7, [16], F64, dropout=1.0, backend=backend)


@pytest.mark.parametrize("backend", nn.BACKENDS)
def test_dropout_inside_noise_seed_is_a_function_of_the_seed(backend):
    net = nn.MLP(3, 7, [16, 16], F64, residual_blocks=1, dropout=0.5, zero_last=False, backend=backend, seed=3)
    x = _x(n=32, d=3)

    @tf.function
    def step(seed):
        with nn.noise_seed(seed):
            return net(x, training=True)

    s1, s2 = tf.constant([7, 1], tf.int64), tf.constant([7, 2], tf.int64)
    a, again, other = step(s1).numpy(), step(s1).numpy(), step(s2).numpy()
    np.testing.assert_array_equal(a, again)  # the same step's seed: the same masks, call after call
    assert np.abs(a - other).max() > 0  # the next step: new masks
    with nn.noise_seed(s1):
        eager = net(x, training=True).numpy()
    # traced or eager: the same masks (a graph may round the products differently)
    np.testing.assert_allclose(eager, a, rtol=1e-12, atol=1e-14)
    plain = net(x, training=False).numpy()
    assert np.abs(a - plain).max() > 0  # the masks did drop units
    # each dropout site its own stream: the stem's and the block's masks differ
    with nn.noise_seed(s1):
        seeds = [nn._next_noise_seed().numpy() for _ in range(2)]
    assert not np.array_equal(seeds[0], seeds[1]) and nn._next_noise_seed() is None  # and none outside


def test_residual_blocks_start_near_the_identity_and_made_shapes():
    """The last layer of each block starts uniform in +-1e-3, so a block starts as (nearly) the skip connection."""
    x = _x(n=8, d=4)
    for backend in nn.BACKENDS:
        deep = nn.MaskedMLP(4, 3, [32], F64, residual_blocks=3, zero_last=False, backend=backend, seed=5)
        assert deep(x).shape == (8, 4, 3) and deep(x, training=True).shape == (8, 4, 3)
        assert len(deep.trainable_variables) == 2 * (1 + 2 * 3 + 1)
        (w0, b0), (w1, b1) = [deep._kernels_and_biases()[i] for i in (0, -1)]
        skip_only = tf.matmul(tf.matmul(x, w0 * deep.masks[0]) + b0, w1 * deep.masks[-1]) + b1
        gap = np.abs(deep(x).numpy().reshape(8, 12) - skip_only.numpy()).max()
        assert 0 < gap < 0.05, (backend, gap)
    net = nn.ConvNet(2, 6, 8, 2, F64, seed=1)
    assert net(tf.zeros([3, 4, 4, 2], F64)).shape == (3, 4, 4, 6)


def test_dropout_reaches_an_autoregressive_layers_made_in_training_only():
    from flows.autoregressive import AffineBijectorFn, MaskedAutoregressive

    made = nn.MaskedMLP(3, 2, [16], F64, dropout=0.5, zero_last=False)
    layer = MaskedAutoregressive(made, AffineBijectorFn(made))
    x = _x(n=8, d=3)
    np.testing.assert_array_equal(layer.inverse(x)[1].numpy(), layer.inverse(x)[1].numpy())
    assert np.abs(layer.inverse(x, training=True)[1].numpy() - layer.inverse(x)[1].numpy()).max() > 0


# ------------------------------------------------------------------------------------------ Invert
def test_invert_swaps_directions_and_round_trips():
    layer = nn.AffineCoupling(4, 1, lambda a, b: nn.MLP(a, b, [8], F64, backend="numpy", seed=0), F64, scale="tanh")
    _randomise(layer, seed=4)
    inv = nn.Invert(layer)
    x = _x(n=5, d=4)
    z, ldj = inv.inverse(x)
    z_ref, ldj_ref = layer.forward(x)
    np.testing.assert_array_equal(z.numpy(), z_ref.numpy())
    np.testing.assert_array_equal(ldj.numpy(), ldj_ref.numpy())
    x_back, fldj = inv.forward(z)
    np.testing.assert_allclose(x_back.numpy(), x.numpy(), atol=1e-12)
    np.testing.assert_allclose(fldj.numpy(), -ldj.numpy(), atol=1e-12)
    twice = nn.Invert(inv)
    np.testing.assert_array_equal(twice.inverse(x)[0].numpy(), layer.inverse(x)[0].numpy())
    flow = flows.Flow([inv, nn.Reverse(4, F64)], (4,), F64)
    np.testing.assert_allclose(flow.forward(flow.inverse(x)[0])[0].numpy(), x.numpy(), atol=1e-12)
    assert [v.ref() for v in inv.trainable_variables] == [v.ref() for v in layer.trainable_variables]


def test_invert_of_a_density_only_layer_samples_but_has_no_density():
    planar = PlanarLayer(2, F64)
    inv = nn.Invert(planar)
    assert inv.can_sample and not planar.can_sample
    z = _x(n=3, d=2)
    np.testing.assert_array_equal(inv.forward(z)[0].numpy(), planar.apply(z)[0].numpy())
    with pytest.raises(NotInvertibleError, match=r"Invert\(PlanarLayer\) has no data -> noise map"):
        inv.inverse(z)


# ------------------------------------------------------------------------------ XLA-friendly building blocks
def _op_types(fn, *args):
    return {op.type for op in tf.function(fn).get_concrete_function(*args).graph.get_operations()}


def _has_barrier(fn, *args):  # an xla_barrier product traced anywhere in fn's graph (its gradient functions too)
    graph = tf.function(fn).get_concrete_function(*args).graph
    names = [op.name for op in graph.get_operations()]
    for f in graph._functions.values():
        names += [n.name for n in f.definition.node_def]
    return any("xla_barrier" in n for n in names)


@pytest.mark.parametrize("layer", ["permutation", "reverse"])
def test_permutation_layers_are_gathers_bitwise_and_differentiate_without_a_scatter(layer):
    d = 7
    perm = nn.Permutation(d, seed=3) if layer == "permutation" else nn.Reverse(d)
    order = np.random.default_rng(3).permutation(d) if layer == "permutation" else np.arange(d)[::-1]
    x = tf.constant(np.random.default_rng(0).normal(size=(5, d)), tf.float32)
    w = tf.constant(np.random.default_rng(1).normal(size=(5, d)), tf.float32)

    def grads(x, via_layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = perm.inverse(x)[0] if via_layer else tf.gather(x, order, axis=-1)
            loss = tf.reduce_sum(tf.sin(y) * w)
        return y, tape.gradient(loss, x)

    for compile_ in (lambda f: f, tf.function, lambda f: tf.function(f, jit_compile=True)):
        (y, g), (y0, g0) = compile_(lambda x: grads(x, True))(x), compile_(lambda x: grads(x, False))(x)
        np.testing.assert_array_equal(y.numpy(), y0.numpy())
        np.testing.assert_array_equal(g.numpy(), g0.numpy())
    np.testing.assert_array_equal(perm.forward(perm.inverse(x)[0])[0].numpy(), x.numpy())
    # TensorFlow's gradient of a gather is a scatter-add, which XLA's CPU backend runs element by element
    ops = _op_types(lambda x: grads(x, True), x)
    assert not ops & {"UnsortedSegmentSum", "TensorScatterAdd", "ScatterNd"}, ops
    assert "UnsortedSegmentSum" in _op_types(lambda x: grads(x, False), x)  # the check above can see one


def test_permute_along_an_inner_axis_and_its_gradient():
    order = np.array([2, 0, 3, 1])
    x = tf.constant(np.random.default_rng(0).normal(size=(3, 4, 2)), F64)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = nn.permute(x, order, np.argsort(order), axis=1)
        loss = tf.reduce_sum(y ** 3)
    np.testing.assert_array_equal(y.numpy(), x.numpy()[:, order])
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), 3 * x.numpy() ** 2)


@pytest.mark.parametrize("mask", [[True, False, True, False, True, False], [False, True, True, False, False, True],
                                  [True, True, False, True, False, False, False]])
def test_mask_split_takes_kept_and_free_features_apart_and_back(mask):
    mask = np.asarray(mask)
    split = nn.MaskSplit(mask)
    x = tf.constant(np.random.default_rng(0).normal(size=(4, mask.size)), F64)
    kept, free = split.split(x)
    np.testing.assert_array_equal(kept.numpy(), x.numpy()[:, mask])
    np.testing.assert_array_equal(free.numpy(), x.numpy()[:, ~mask])
    np.testing.assert_array_equal(split.join(kept, free).numpy(), x.numpy())


@pytest.mark.parametrize("backend", ["keras", "numpy"])
def test_mlp_output_columns_are_the_full_outputs_columns_and_train_only_those(backend):
    net = nn.MLP(5, 9, [8, 8], F64, zero_last=False, backend=backend)
    _randomise(net)
    x = _x(d=5)
    columns = np.array([7, 0, 4, 5])
    with tf.GradientTape(persistent=True) as tape:
        full = net(x)
        part = net(x, columns=columns)
        loss_full = tf.reduce_sum(tf.gather(full, columns, axis=-1) ** 2)
        loss_part = tf.reduce_sum(part ** 2)
    np.testing.assert_allclose(part.numpy(), full.numpy()[:, columns], rtol=1e-12, atol=1e-12)
    g_full = tape.gradient(loss_full, net.trainable_variables)
    g_part = tape.gradient(loss_part, net.trainable_variables)
    for a, b in zip(g_full, g_part):
        np.testing.assert_allclose(tf.convert_to_tensor(b).numpy(), tf.convert_to_tensor(a).numpy(), rtol=1e-10,
                                   atol=1e-12)
    (out_kernel,) = [tf.convert_to_tensor(g).numpy() for g, v in zip(g_part, net.trainable_variables)
                     if v.shape == (8, 9)]
    unused = np.setdiff1d(np.arange(9), columns)
    assert np.all(out_kernel[:, unused] == 0) and np.all(np.any(out_kernel[:, columns] != 0, axis=0))


@pytest.mark.parametrize("mask", [[True, True, False, True, False, False], [False, True, False, False, True]])
@pytest.mark.parametrize("kind", ["affine", "spline"])
def test_couplings_with_irregular_masks_keep_the_kept_features_and_invert(kind, mask):
    from flows.spline import SplineCoupling

    mask = np.asarray(mask)
    d = mask.size
    layer = (nn.MaskedAffineCoupling(mask, [16], F64) if kind == "affine"
             else SplineCoupling(mask, 4, 3.0, [16], F64))
    x = tf.constant(np.random.default_rng(2).normal(size=(6, d)), F64)
    layer.inverse(x)
    _randomise(layer, scale=0.3)
    z, ldj = layer.inverse(x)
    np.testing.assert_array_equal(z.numpy()[:, mask], x.numpy()[:, mask])
    assert np.all(np.abs(z.numpy()[:, ~mask] - x.numpy()[:, ~mask]) > 1e-6)
    back, fldj = layer.forward(z)
    np.testing.assert_allclose(back.numpy(), x.numpy(), atol=1e-9)
    np.testing.assert_allclose(fldj.numpy(), -ldj.numpy(), atol=1e-9)
    with tf.GradientTape() as tape:
        tape.watch(x)
        z = layer.inverse(x)[0]
    jac = tape.batch_jacobian(z, x).numpy()
    np.testing.assert_allclose(ldj.numpy(), np.linalg.slogdet(jac)[1], atol=1e-9)


def test_xla_barrier_is_exact_and_the_xla_training_spline_gradient_is_unchanged():
    from flows.spline import rqs

    x = tf.constant(np.random.default_rng(0).normal(size=(64, 3)) * 2, tf.float32)
    params = tf.constant(np.random.default_rng(1).normal(size=(64, 3, 23)), tf.float32)
    np.testing.assert_array_equal(tf.function(nn.xla_barrier, jit_compile=True)(x).numpy(), x.numpy())
    np.testing.assert_array_equal(nn.xla_barrier(params).numpy(), params.numpy())

    def grads(x, params):
        with tf.GradientTape() as tape:
            tape.watch([x, params])
            y, ldj = rqs(x, params, 8, 3.0)
            loss = tf.reduce_sum(y ** 2) + tf.reduce_sum(ldj)
        return tape.gradient(loss, [x, params])

    plain = tf.function(grads, jit_compile=True)
    shaped = tf.function(grads, jit_compile=True)
    reference = plain(x, params)
    assert not nn.in_xla_training()
    with nn.xla_training():
        assert nn.in_xla_training()
        got = shaped(x, params)
    assert not nn.in_xla_training()
    assert not _has_barrier(grads, x, params)  # outside the context: no barrier (x @ I) is traced
    with nn.xla_training():
        assert _has_barrier(grads, x, params)
    for a, b in zip(reference, got):  # float32: the two paths round the knots differently (cumsum / product)
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=2e-5, atol=2e-5)
    # float64: both paths (inside an XLA training call: slices and cumulative sums; elsewhere: a split and a
    # triangular product), forward and inverse, values and gradients agree to rounding
    x64, p64 = tf.cast(x, tf.float64), tf.cast(params, tf.float64)
    for inverse in (False, True):
        def both(x, params, inverse=inverse):
            with tf.GradientTape() as tape:
                tape.watch([x, params])
                y, ldj = rqs(x, params, 8, 3.0, inverse=inverse)
                loss = tf.reduce_sum(y ** 2) + tf.reduce_sum(ldj)
            return [y, ldj] + tape.gradient(loss, [x, params])

        graph = tf.function(both)(x64, p64)
        with nn.xla_training():
            xla = tf.function(both, jit_compile=True)(x64, p64)
        for a, b in zip(graph, xla):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("inverse", [False, True])
def test_xla_training_spline_agrees_at_knots_bounds_and_far_outside(inverse):
    """The XLA training form of the spline (bins as rows, a written gradient) against the plain graph form, float64:
    inputs exactly on the knots (where the bin changes), on and just inside +-B, far outside, and a batch of 1."""
    from flows.spline import rqs, spline_knots

    k, bound = 8, 3.0
    params = tf.constant(np.random.default_rng(2).normal(size=(5, 4, 3 * k - 1)) * 1.5, tf.float64)
    widths, heights, _ = spline_knots(params, k, bound)
    knots = np.cumsum((heights if inverse else widths).numpy(), axis=-1) - bound  # right edges of bins 0..K-1
    pick = np.random.default_rng(3).integers(0, k - 1, size=(5, 4))
    x = np.take_along_axis(knots, pick[..., None], axis=-1)[..., 0]  # interior knots: each a bin's left edge
    x[0] = [bound, -bound, bound - 1e-12, -bound + 1e-12]
    x[1] = [1e4, -1e4, 0.0, knots[1, 3, 5]]
    x = tf.constant(x, tf.float64)
    # log|dy/dx| is continuous at a knot but its slope jumps there, and the two forms may round a knot to either
    # side of an input placed on it: the knot inputs' log-determinants enter the loss as values only
    on_knot = np.ones((5, 4))
    on_knot[2:] = on_knot[1, 3] = 0.0

    def both(x, params):
        with tf.GradientTape() as tape:
            tape.watch([x, params])
            y, ldj = rqs(x, params, k, bound, inverse=inverse)
            loss = (tf.reduce_sum(tf.sin(y) * tf.range(1.0, 5.0, dtype=tf.float64))
                    + tf.reduce_sum(ldj ** 2 * tf.constant(on_knot)[:tf.shape(x)[0]]))
        return [y, ldj] + tape.gradient(loss, [x, params])

    graph = tf.function(both)(x, params)
    with nn.xla_training():
        xla = tf.function(both, jit_compile=True)(x, params)
        one = tf.function(both, jit_compile=True)(x[:1], params[:1])
    for a, b, c in zip(graph, xla, one):  # values, log-determinants, and both gradients
        assert np.all(np.isfinite(b.numpy()))
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(c.numpy(), a.numpy()[:1], rtol=1e-11, atol=1e-11)
    np.testing.assert_array_equal(xla[0].numpy()[1, :2], [1e4, -1e4])  # the identity outside [-B, B]
    np.testing.assert_array_equal(xla[2].numpy()[1, :2], np.cos([1e4, -1e4]) * [1.0, 2.0])


def test_wgrad_chunks_rule():
    """Kernel gradients in row blocks only where measured faster: fan_in >= 16, fan_out <= 64, rows / 128 blocks."""
    assert nn.wgrad_chunks(512, 64, 64) == 4 and nn.wgrad_chunks(512, 64, 6) == 4 and nn.wgrad_chunks(256, 64, 12) == 2
    assert nn.wgrad_chunks(2048, 64, 64) == 8 and nn.wgrad_chunks(390, 64, 64) == 3  # at most 8; blocks divide the rows
    for rows, fan_in, fan_out in [(512, 6, 64), (512, 256, 256), (128, 64, 64), (None, 64, 64), (385, 64, 64)]:
        assert nn.wgrad_chunks(rows, fan_in, fan_out) == 1, (rows, fan_in, fan_out)


@pytest.mark.parametrize("net", ["mlp_keras", "mlp_numpy", "made"])
def test_xla_training_chunked_kernel_gradients_equal_the_plain_ones(net):
    """Under xla_training the conditioners' kernel gradients are sums over row blocks (a batched matmul in the
    graph); in float64 they equal the plain gradients to rounding, and outside xla_training no block sum is built."""
    tf.random.set_seed(3)
    if net == "made":
        model = nn.MaskedMLP(6, 2, [64, 64], "float64", zero_last=False)
    else:
        model = nn.MLP(6, 12, [64, 64], "float64", zero_last=False, backend=net.split("_")[1], seed=1)
    x = tf.random.normal([512, 6], dtype=tf.float64)

    def grads():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.sin(model(x)))
        return tape.gradient(loss, model.trainable_variables)

    def traced(xla):
        fn = tf.function(grads)
        with nn.xla_training(xla):
            concrete = fn.get_concrete_function()
            values = concrete()
        kinds = {op.type for op in concrete.graph.get_operations()}
        return values, any(k.startswith("BatchMatMul") for k in kinds)

    plain, plain_blocks = traced(False)
    chunked, chunked_blocks = traced(True)
    assert not plain_blocks and chunked_blocks
    assert len(plain) == len(chunked) == 6
    for a, b in zip(plain, chunked):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=1e-11)
