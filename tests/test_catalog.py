"""One suite for every registered flow: a flow enters it by being registered in ``flows.FLOWS``.

Cases are (flow name, event kind) for each kind in the flow's ``spec.kinds``: vector flows at dimension 3
(2 for the density-on-a-grid checks), image flows at shape IMAGE_SHAPE.  Every flow is built with its
registered defaults, updated with OVERRIDES (only where needed for speed), and its parameters are moved away
from their (often identity) initialisation before a numerical check, so that no check passes trivially.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # TFP 0.25 needs Keras 2 (tf_keras)

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import flows  # noqa: E402
from flows.base import NotInvertibleError  # noqa: E402

VECTOR_DIM = 3
IMAGE_SHAPE = (4, 4, 2)

#: Small hyper-parameter overrides, only where needed for speed: keys are a flow name (both kinds) or
#: "name:image" (image case only).  Everything else uses the registered defaults.
#: Today every flow runs at its defaults within the time budget (whole file ~90-160 s on 2 shared cores).
OVERRIDES: dict = {}

#: Per-flow settings for the 2-D density-on-a-grid check: points per axis and training steps.  FFJORD solves
#: an ODE per point, so it gets the coarsest grid.
GRID_POINTS = {"default": 201, "ffjord": 121}
TRAIN_STEPS = {"default": 200}

#: Flows whose log_prob does not compile with XLA (tf.function(jit_compile=True)) on CPU, with the reason.
#: The XLA test asserts that these really fail and that every other flow compiles and agrees.
XLA_UNSUPPORTED = {}

CASES = [(name, kind) for name, spec in flows.FLOWS.items() for kind in spec.kinds]
IDS = [f"{name}-{kind}" for name, kind in CASES]
VECTOR_NAMES = [name for name, spec in flows.FLOWS.items() if "vector" in spec.kinds]


# ---------------------------------------------------------------------------------------------- helpers
def _shape(kind, dim=VECTOR_DIM):
    return (dim,) if kind == "vector" else IMAGE_SHAPE


def _hparams(name, kind, **extra):
    out = dict(OVERRIDES.get(name, {}))
    if kind == "image":
        out.update(OVERRIDES.get(f"{name}:image", {}))
    out.update(extra)
    return out


def _data(kind, n, dtype="float32", seed=0, dim=VECTOR_DIM, scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n,) + _shape(kind, dim)) * scale
    return tf.constant(x, dtype)


def _perturb(flow, seed=0, scale=0.05):
    """Add small noise to every trainable variable, so zero-initialised (identity) layers are not the identity."""
    rng = np.random.default_rng(seed)
    for v in flow.trainable_variables:
        v.assign_add(rng.normal(0.0, scale, size=v.shape).astype(v.dtype.as_numpy_dtype))


def _build(name, kind, dtype="float32", dim=VECTOR_DIM, seed=0, perturb=True, **extra):
    tf.random.set_seed(seed)
    flow = flows.build_flow(name, _shape(kind, dim), dtype=dtype, **_hparams(name, kind, **extra))
    flow.initialize(_data(kind, 64, dtype, seed=100 + seed, dim=dim))
    if perturb:
        _perturb(flow, seed)
    return flow


def _flat_log_det_of_jacobian(fn, x):
    """log|det d fn(x) / dx| per example by autodiff, images flattened to vectors."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    jac = tape.batch_jacobian(y, x).numpy()
    n = x.shape[0]
    size = int(np.prod(x.shape[1:]))
    return np.linalg.slogdet(jac.reshape(n, size, size))[1]


def _two_moons(n, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.0, math.pi, size=n)
    upper = rng.uniform(size=n) < 0.5
    x = np.where(upper, np.cos(t), 1.0 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    pts = np.stack([x, y], -1) + rng.normal(scale=0.1, size=(n, 2))
    return ((pts - pts.mean(0)) / pts.std(0)).astype(np.float32)


def _grid(points, half_width):
    g = np.linspace(-half_width, half_width, points)
    xx, yy = np.meshgrid(g, g)
    return np.stack([xx.ravel(), yy.ravel()], -1), (g[1] - g[0]) ** 2


def _grid_density(flow, points, half_width=6.0, chunk=20000):
    grid, cell = _grid(points, half_width)
    dt = flow.dtype.as_numpy_dtype
    lp = np.concatenate([flow.log_prob(tf.constant(grid[i:i + chunk], dt)).numpy() for i in range(0, len(grid), chunk)])
    return grid, np.exp(lp.astype(np.float64)), cell


# ---------------------------------------------------------------------------------------------- (a) shapes
@pytest.mark.parametrize("name,kind", CASES, ids=IDS)
def test_log_prob_shape_and_finite(name, kind):
    flow = _build(name, kind)
    x = _data(kind, 7, seed=1)
    lp = flow.log_prob(x)
    assert lp.shape == (7,)
    assert np.all(np.isfinite(lp.numpy()))
    z, ldj = flow.inverse(x)
    assert z.shape == x.shape and ldj.shape == (7,)
    traj = flow.inverse_trajectory(x)
    assert len(traj) == len(flow.layers) + 1
    assert all(t.shape[0] == 7 for t in traj)


# ---------------------------------------------------------------------------------------------- (b) log-det
@pytest.mark.parametrize("name,kind", CASES, ids=IDS)
def test_log_det_matches_autodiff_jacobian(name, kind):
    flow = _build(name, kind, dtype="float64")
    x = _data(kind, 4, "float64", seed=2)
    _, ldj = flow.inverse(x)
    expected = _flat_log_det_of_jacobian(lambda t: flow.inverse(t)[0], x)
    np.testing.assert_allclose(ldj.numpy(), expected, rtol=1e-6, atol=1e-6, err_msg=f"{name} inverse")
    if flows.FLOWS[name].can_sample:
        z = _data(kind, 4, "float64", seed=3)
        _, fldj = flow.forward(z)
        expected = _flat_log_det_of_jacobian(lambda t: flow.forward(t)[0], z)
        np.testing.assert_allclose(fldj.numpy(), expected, rtol=1e-6, atol=1e-6, err_msg=f"{name} forward")


# ---------------------------------------------------------------------------------------------- (c) round trip
@pytest.mark.parametrize("name,kind", CASES, ids=IDS)
def test_round_trip(name, kind):
    flow = _build(name, kind)
    if not flows.FLOWS[name].can_sample:
        assert not flow.can_sample
        with pytest.raises(NotInvertibleError, match="no algebraic inverse"):
            flow.sample(2)
        return
    z = _data(kind, 16, seed=4)
    x, fldj = flow.forward(z)
    z2, ildj = flow.inverse(x)
    np.testing.assert_allclose(z2.numpy(), z.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose((fldj + ildj).numpy(), 0.0, atol=1e-4)
    x0 = _data(kind, 16, seed=5)
    x1, _ = flow.forward(flow.inverse(x0)[0])
    np.testing.assert_allclose(x1.numpy(), x0.numpy(), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- (d) extremes
@pytest.mark.parametrize("name,kind", CASES, ids=IDS)
def test_extreme_inputs_give_finite_values_and_gradients(name, kind):
    flow = _build(name, kind)
    signs = np.sign(_data(kind, 8, seed=6).numpy())
    x = tf.constant(1e4 * signs, tf.float32)
    with tf.GradientTape() as tape:
        lp = flow.log_prob(x)
        loss = -tf.reduce_mean(lp)
    assert np.all(np.isfinite(lp.numpy())), lp.numpy()
    grads = tape.gradient(loss, flow.trainable_variables)
    bad = [v.name for v, g in zip(flow.trainable_variables, grads) if g is not None and not np.all(np.isfinite(tf.convert_to_tensor(g).numpy()))]
    assert not bad, f"non-finite gradients for {bad}"
    assert any(g is not None for g in grads)


# ---------------------------------------------------------------------------------------------- (e, f) 2-D density
def _train(flow, data, steps, lr=3e-3, batch=128, seed=0):
    """``steps`` Adam updates of the negative log-likelihood; returns the losses (nats).

    Adam is written out here because tracing the Keras optimizer's update costs seconds per flow.
    """
    variables = flow.trainable_variables
    slots = [(tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v))) for v in variables]
    t = tf.Variable(0.0, dtype=flow.dtype)
    b1, b2, eps = 0.9, 0.999, 1e-8

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(flow.log_prob(x, training=True))
        grads = tape.gradient(loss, variables)
        t.assign_add(1.0)
        scale = lr * tf.sqrt(1.0 - b2**t) / (1.0 - b1**t)
        for v, g, (m, s) in zip(variables, grads, slots):
            if g is None:
                continue
            g = tf.convert_to_tensor(g)
            m.assign(b1 * m + (1.0 - b1) * g)
            s.assign(b2 * s + (1.0 - b2) * tf.square(g))
            v.assign_sub(scale * m / (tf.sqrt(s) + eps))
        return loss

    rng = np.random.default_rng(seed)
    losses = [float(step(tf.constant(data[rng.integers(0, len(data), batch)]))) for _ in range(steps)]
    return np.array(losses)


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_2d_density_integrates_to_one_untrained_and_trained(name):
    points = GRID_POINTS.get(name, GRID_POINTS["default"])
    steps = TRAIN_STEPS.get(name, TRAIN_STEPS["default"])
    data = _two_moons(4096)
    flow = _build(name, "vector", dim=2, perturb=False)
    flow.initialize(tf.constant(data[:512]))
    _, p, cell = _grid_density(flow, points)
    mass = p.sum() * cell
    assert abs(mass - 1.0) < 0.01, f"{name} untrained: mass {mass:.4f}"

    losses = _train(flow, data, steps)
    assert np.all(np.isfinite(losses))
    # the loss of the untrained flow (before any update) against the last 50 steps: mini-batch noise at lr 3e-3
    # makes a first-20 vs last-20 comparison flaky when the first few steps already do most of the work
    assert losses[-50:].mean() < losses[0], f"{name}: training did not lower the NLL {losses[[0, -1]]}"
    grid, p, cell = _grid_density(flow, points)
    mass = p.sum() * cell
    assert abs(mass - 1.0) < 0.01, f"{name} after {steps} steps: mass {mass:.4f}"

    # (f) samples follow the density: sample mean and covariance match the grid's, within Monte-Carlo error
    if flows.FLOWS[name].can_sample:
        n = 4000
        x = flow.sample(n, seed=11).numpy().astype(np.float64)
        w = p * cell / mass
        mean = w @ grid
        cov = (grid - mean).T @ ((grid - mean) * w[:, None])
        se = np.sqrt(np.diag(cov) / n)
        assert np.all(np.abs(x.mean(0) - mean) < 5 * se + 0.02), (name, x.mean(0), mean)
        np.testing.assert_allclose(np.cov(x.T), cov, atol=0.1 + 0.1 * np.abs(cov).max(), err_msg=name)


# ---------------------------------------------------------------------------------------------- (f) sample vs log_prob
@pytest.mark.parametrize("name,kind", CASES, ids=IDS)
def test_samples_and_log_prob_agree(name, kind):
    flow = _build(name, kind)
    if not flow.can_sample:
        with pytest.raises(NotInvertibleError):
            flow.sample_and_log_prob(4)
        return
    x, lq = flow.sample_and_log_prob(64, seed=12)
    lp = flow.log_prob(x)
    np.testing.assert_allclose(lp.numpy(), lq.numpy(), atol=2e-3, rtol=1e-4)
    # the same base noise through flow.sample gives the same points
    np.testing.assert_allclose(flow.sample(64, seed=12).numpy(), x.numpy(), atol=1e-6)


# ---------------------------------------------------------------------------------------------- (g) graph / XLA
@pytest.mark.parametrize("name,kind", CASES, ids=IDS)
def test_eager_graph_and_xla_agree(name, kind):
    flow = _build(name, kind)
    x = _data(kind, 16, seed=7)
    eager = flow.log_prob(x).numpy()
    graph = tf.function(flow.log_prob)(x).numpy()
    np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-5)
    try:
        xla = tf.function(flow.log_prob, jit_compile=True)(x).numpy()
    except Exception as exc:  # noqa: BLE001 -- any XLA failure is recorded, not hidden
        if name in XLA_UNSUPPORTED:
            return
        raise AssertionError(f"{name} does not compile with XLA; add it to XLA_UNSUPPORTED with the reason: {exc!r:.500}")
    assert name not in XLA_UNSUPPORTED, f"{name} compiles with XLA now; remove it from XLA_UNSUPPORTED"
    np.testing.assert_allclose(xla, eager, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- (h) checkpoint
@pytest.mark.parametrize("name,kind", CASES, ids=IDS)
def test_checkpoint_restores_identical_log_prob(name, kind, tmp_path):
    flow = _build(name, kind, seed=0)
    x = _data(kind, 8, seed=8)
    before = flow.log_prob(x).numpy()
    path = tf.train.Checkpoint(flow=flow).write(str(tmp_path / "ckpt"))
    fresh = _build(name, kind, seed=1)  # other random init, other ActNorm batch, other perturbation
    assert not np.allclose(fresh.log_prob(x).numpy(), before), "the fresh flow must differ before restoring"
    tf.train.Checkpoint(flow=fresh).read(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(fresh.log_prob(x).numpy(), before)


# ---------------------------------------------------------------------------------------------- evaluation stats
@pytest.mark.parametrize("name,kind", CASES, ids=IDS)
def test_evaluation_does_not_depend_on_the_batch(name, kind):
    """Batch norm and ActNorm use running / initialised statistics in evaluation, never the batch at hand."""
    extra = {"batch_norm": True} if "batch_norm" in flows.FLOWS[name].defaults else {}
    flow = _build(name, kind, **extra)
    if extra:  # give the running statistics something to remember
        for s in range(3):
            flow.log_prob(_data(kind, 64, seed=20 + s, scale=2.0), training=True)
    a = _data(kind, 4, seed=9)
    b = _data(kind, 12, seed=10, scale=5.0) + 3.0
    alone = flow.log_prob(a).numpy()
    mixed = flow.log_prob(tf.concat([a, b], 0)).numpy()[:4]
    np.testing.assert_allclose(mixed, alone, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- (i) dtypes
@pytest.mark.parametrize("name,kind", CASES, ids=IDS)
def test_dtypes(name, kind):
    f32 = _build(name, kind, perturb=False)
    assert f32.dtype == tf.float32
    assert {v.dtype for v in f32.variables} <= {tf.float32, tf.int32, tf.int64, tf.bool}
    assert f32.log_prob(_data(kind, 3)).dtype == tf.float32
    with pytest.raises(TypeError):
        f32.log_prob(_data(kind, 3, "float64"))
    f64 = _build(name, kind, dtype="float64", perturb=False)
    float_vars = {v.dtype for v in f64.variables if v.dtype.is_floating}
    assert float_vars == {tf.float64}, float_vars
    assert f64.log_prob(_data(kind, 3, "float64")).dtype == tf.float64


# ---------------------------------------------------------------------------------------------- (j) errors
def _wrong_type(default):
    if isinstance(default, bool):
        return 1
    if isinstance(default, (int, float)):
        return "three"
    if isinstance(default, (list, tuple)):
        return 3
    return 3.5


def test_unknown_flow_name_lists_accepted():
    with pytest.raises(ValueError) as info:
        flows.build_flow("no_such_flow", [2])
    assert all(name in str(info.value) for name in flows.FLOWS)


@pytest.mark.parametrize("name", list(flows.FLOWS))
def test_bad_hyper_parameters_raise(name):
    spec = flows.FLOWS[name]
    shape = _shape(spec.kinds[0])
    with pytest.raises(ValueError) as info:
        flows.build_flow(name, shape, no_such_knob=1)
    assert all(key in str(info.value) for key in spec.defaults), str(info.value)
    for key, default in spec.defaults.items():
        with pytest.raises(ValueError, match=key):
            flows.build_flow(name, shape, **{key: _wrong_type(default)})


# ---------------------------------------------------------------------------------------------- registry entry
@pytest.mark.parametrize("name", list(flows.FLOWS))
def test_registry_entry_is_documented_and_plain(name):
    """Each flow names its paper with an arXiv id, documents its builder, and has only plain hyper-parameters."""
    import re

    spec = flows.FLOWS[name]
    assert re.search(r"\d{4}\.\d{4,5}", spec.paper), f"{name}: paper {spec.paper!r} has no arXiv id"
    assert spec.doc.strip(), f"{name}: builder has no docstring"
    assert set(spec.kinds) <= {"vector", "image"} and spec.kinds
    for key, value in spec.defaults.items():
        assert isinstance(value, (bool, int, float, str, list)), f"{name}: {key} = {value!r} is not int/float/bool/str/list"
