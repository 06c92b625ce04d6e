"""The numerical battery over every registered flow: a flow enters it by being registered in ``flows.FLOWS``.

Cases are (flow, kind, options) for each kind in ``flows.FLOWS[name].kinds`` (vector flows at dimension
VECTOR_DIM, 2 for the density-on-a-grid check; image flows at IMAGE_SHAPE), plus the VARIANTS below (options
that change a flow's structure).  Every flow is built small (SMALL shrinks the options it has; the rest keep
their registered defaults) and its weights are moved off their (often identity) initialisation before a
numerical check, so that no check passes trivially.  Family files (test_flows_core.py, test_flows_advanced.py,
test_planar_radial.py) keep only what is specific to a family.

Checks: log-det against the autodiff Jacobian (float64), inverse round trip, sampling (shape, dtype, finite,
seeded) or NotInvertibleError, out-of-domain inputs (NaN, Inf, huge values, wrong dtype, wrong shape), the 2-D
density integrates to one on a grid (and samples follow it), eager/graph/XLA agreement, evaluation independent
of the batch, float32/float64, checkpoint and ``flows.save``/``flows.load`` round trips, option errors.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # TFP 0.25 needs Keras 2 (tf_keras)

import re  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import flows  # noqa: E402
from flows import NotInvertibleError, OptionsError  # noqa: E402
from flows.training import set_seed  # noqa: E402

VECTOR_DIM = 3
IMAGE_SHAPE = (4, 4, 2)

#: small values for the options a flow has (by option name); every other option keeps its registered default
SMALL = {"num_layers": 2, "hidden_units": [8, 8], "num_filters": 8, "num_res_blocks": 1, "num_steps": 4,
         "num_bins": 4, "num_sigmoids": 4}
#: per-flow options on top of SMALL
OVERRIDES = {"planar": {"num_layers": 4}, "radial": {"num_layers": 4}}
#: extra vector cases: options that change a flow's structure
VARIANTS = {
    "maf": [{"batch_norm": True}],
    "realnvp": [{"batch_norm": True}],
    "nsf": [{"form": "autoregressive"}],
    "ffjord": [{"num_blocks": 2}],
}
#: extra vector cases that also enter every check of the plain cases (sampling, out-of-domain inputs, graph/XLA,
#: dtypes, persistence): options that change more than the layers' structure (another base density, dropout)
FULL_VARIANTS = {
    "maf": [{"mog_components": 3}],  # MAF MoG: a MADE MoG base density, its own sampling
    "nsf": [{"residual_blocks": 1, "dropout": 0.1},  # the NSF paper's conditioners, both forms
            {"form": "autoregressive", "residual_blocks": 1, "dropout": 0.1}],
}
#: flows whose log_prob does not compile with XLA (tf.function(jit_compile=True)) on CPU, with the reason;
#: the XLA check asserts that these really fail and that every other flow compiles and agrees
XLA_UNSUPPORTED: dict = {}
#: round-trip tolerance (float64); FFJORD's RK4 maps are inverse to each other up to the solver's error only
ROUND_TRIP_ATOL = {"default": 1e-8, "ffjord": 1e-4}


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    hparams: dict = field(default_factory=dict, hash=False, compare=False)
    variant: str = ""
    full: bool = False  # a variant of FULL_VARIANTS

    @property
    def id(self) -> str:
        return f"{self.name}-{self.kind}" + (f"-{self.variant}" if self.variant else "")

    @property
    def can_sample(self) -> bool:
        return flows.FLOWS[self.name].can_sample

    def shape(self, dim=VECTOR_DIM):
        return (dim,) if self.kind == "vector" else IMAGE_SHAPE


def _small(name, kind, extra=None):
    options = flows.FLOWS[name].options(kind)
    hp = {k: v for k, v in SMALL.items() if k in options}
    hp.update(OVERRIDES.get(name, {}))
    hp.update(extra or {})
    return hp


def _cases():
    out = []
    for name, spec in flows.FLOWS.items():
        for kind in spec.kinds:
            out.append(Case(name, kind, _small(name, kind)))
            if kind == "vector":
                for full, variants in ((False, VARIANTS), (True, FULL_VARIANTS)):
                    for extra in variants.get(name, []):
                        label = ",".join(f"{k}={v}" for k, v in extra.items())
                        out.append(Case(name, kind, _small(name, kind, extra), label, full))
    return out


#: every case (the VARIANTS included) for the numerical checks; the plain cases (one per flow and kind) and the
#: FULL_VARIANTS for the checks that the other variants' options cannot change (graph/XLA, dtypes, persistence,
#: out-of-domain inputs)
CASES = _cases()
PLAIN = [c for c in CASES if not c.variant or c.full]
SAMPLERS = [c for c in CASES if c.can_sample]
VECTOR = [c for c in CASES if c.kind == "vector"]
KINDS = [(name, kind) for name, spec in flows.FLOWS.items() for kind in spec.kinds]


def cases(selection):
    return pytest.mark.parametrize("case", selection, ids=[c.id for c in selection])


# ---------------------------------------------------------------------------------------------- helpers
def _data(shape, n, dtype="float32", seed=0, scale=1.0, shift=0.0):
    x = np.random.default_rng(seed).normal(size=(n,) + tuple(shape)) * scale + shift
    return tf.constant(x, dtype)


def _perturb(flow, scale, seed=0):
    """Add noise to every trainable variable: zero-initialised (identity) layers are then not the identity.

    Masked weights are perturbed too (no constraint is applied): the networks must mask at call time.
    """
    rng = np.random.default_rng(seed)
    for v in flow.trainable_variables:
        v.assign_add(rng.normal(0.0, scale, size=v.shape).astype(v.dtype.as_numpy_dtype))


def build(case, dtype="float32", dim=VECTOR_DIM, seed=0, perturb=0.1):
    """The case's flow, initialised on a batch (ActNorm, batch norm) and perturbed by ``perturb``."""
    set_seed(seed)  # Keras' unseeded initialisers draw their seeds from Python's random: seed it, not only TF's
    flow = flows.build_flow(case.name, case.shape(dim), dtype=dtype, **case.hparams)
    flow.initialize(_data(case.shape(dim), 64, dtype, seed=100 + seed, scale=1.5, shift=0.2))
    if perturb:
        _perturb(flow, perturb, seed)
    return flow


def _autodiff_log_det(fn, x):
    """log|det d fn(x) / dx| per example by autodiff, images flattened to vectors."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    jac = tape.batch_jacobian(y, x).numpy()
    size = int(np.prod(x.shape[1:]))
    return np.linalg.slogdet(jac.reshape(x.shape[0], size, size))[1]


# ---------------------------------------------------------------------------------------------- log-det, round trip
@cases(CASES)
def test_log_det_matches_autodiff_jacobian(case):
    flow = build(case, "float64")
    x = _data(case.shape(), 4, "float64", seed=2, scale=2.0)  # |x| > 3 for some entries: NSF's identity tails
    z, ldj = flow.inverse(x)
    assert z.shape == x.shape and ldj.shape == (4,)
    np.testing.assert_allclose(ldj.numpy(), _autodiff_log_det(lambda t: flow.inverse(t)[0], x),
                               rtol=1e-6, atol=1e-6, err_msg=f"{case.id} inverse")
    assert np.abs(ldj.numpy()).max() > 1e-3, "the perturbed flow must not be volume preserving"
    traj = flow.inverse_trajectory(x)  # per-layer access ends where inverse ends
    assert len(traj) == len(flow.layers) + 1
    np.testing.assert_allclose(traj[-1].numpy(), z.numpy(), atol=1e-10)
    if case.can_sample:
        z0 = _data(case.shape(), 4, "float64", seed=3)
        _, fldj = flow.forward(z0)
        np.testing.assert_allclose(fldj.numpy(), _autodiff_log_det(lambda t: flow.forward(t)[0], z0),
                                   rtol=1e-6, atol=1e-6, err_msg=f"{case.id} forward")


@cases(SAMPLERS)
def test_inverse_round_trip(case):
    flow = build(case, "float64")
    atol = ROUND_TRIP_ATOL.get(case.name, ROUND_TRIP_ATOL["default"])
    x = _data(case.shape(), 6, "float64", seed=4, scale=2.0)
    z, ildj = flow.inverse(x)
    assert np.abs(z.numpy() - x.numpy()).max() > 1e-2, "the perturbed flow must not be the identity"
    # fresh tensors (numpy copies) so that no bijector cache can answer the inverse
    x2, fldj = flow.forward(z.numpy())
    np.testing.assert_allclose(x2.numpy(), x.numpy(), atol=atol, rtol=atol)
    np.testing.assert_allclose((ildj + fldj).numpy(), 0.0, atol=10 * atol)
    z0 = _data(case.shape(), 6, "float64", seed=5)
    np.testing.assert_allclose(flow.inverse(flow.forward(z0)[0].numpy())[0].numpy(), z0.numpy(), atol=atol, rtol=atol)


# ---------------------------------------------------------------------------------------------- sampling
@cases(PLAIN)
def test_sampling_or_not_invertible(case):
    flow = build(case)
    if not case.can_sample:
        assert not flow.can_sample
        z = tf.zeros((4,) + case.shape())
        for call in (lambda: flow.sample(4), lambda: flow.sample_and_log_prob(4), lambda: flow.forward(z),
                     lambda: flow.forward_trajectory(z), lambda: flow.layers[0].forward(z)):
            with pytest.raises(NotInvertibleError, match="no algebraic inverse"):
                call()
        assert len(flow.inverse_trajectory(z)) == len(flow.layers) + 1  # data -> noise works
        return
    s = flow.sample(7, seed=1)
    assert s.shape == (7,) + case.shape() and s.dtype == tf.float32
    assert np.all(np.isfinite(s.numpy()))
    np.testing.assert_array_equal(s.numpy(), flow.sample(7, seed=1).numpy())  # a seed fixes the samples
    assert not np.array_equal(s.numpy(), flow.sample(7, seed=2).numpy())
    x, lq = flow.sample_and_log_prob(64, seed=12)
    np.testing.assert_allclose(flow.log_prob(x).numpy(), lq.numpy(), atol=2e-3, rtol=1e-4)
    np.testing.assert_allclose(flow.sample(64, seed=12).numpy(), x.numpy(), atol=1e-6)  # the same base noise


# ---------------------------------------------------------------------------------------------- out of domain
@cases(PLAIN)
def test_out_of_domain_inputs(case):
    """NaN or Inf in a row give a non-finite log_prob for that row only (never a finite number, never +inf);
    huge finite inputs give finite values and gradients; a wrong dtype or shape is a one-line error."""
    flow = build(case)
    shape = case.shape()
    x = _data(shape, 4, seed=6).numpy()
    clean = flow.log_prob(x).numpy()
    assert clean.shape == (4,) and np.all(np.isfinite(clean))
    for value in (np.nan, np.inf, -np.inf):
        bad = x.copy()
        bad[1].flat[0] = value
        lp = flow.log_prob(bad).numpy()
        assert not np.isfinite(lp[1]) and lp[1] != np.inf, (value, lp)
        np.testing.assert_allclose(lp[[0, 2, 3]], clean[[0, 2, 3]], rtol=1e-5, atol=1e-5, err_msg=str(value))

    huge = tf.constant(1e4 * np.sign(_data(shape, 4, seed=7).numpy()), tf.float32)
    with tf.GradientTape() as tape:
        lp = flow.log_prob(huge)
        loss = -tf.reduce_mean(lp)
    assert np.all(np.isfinite(lp.numpy())), lp.numpy()
    grads = tape.gradient(loss, flow.trainable_variables)
    assert any(g is not None for g in grads)
    bad = [v.name for v, g in zip(flow.trainable_variables, grads)
           if g is not None and not np.all(np.isfinite(tf.convert_to_tensor(g).numpy()))]
    assert not bad, f"non-finite gradients for {bad}"

    with pytest.raises(TypeError, match="float64.*float32") as info:
        flow.log_prob(x.astype(np.float64))
    assert "\n" not in str(info.value)
    # integer arrays and Python lists are converted (only a float of another precision is refused)
    np.testing.assert_allclose(flow.log_prob(np.round(x).astype(np.int32)).numpy(),
                               flow.log_prob(np.round(x)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(flow.log_prob(x.tolist()).numpy(), clean, rtol=1e-6)
    wrong = [np.zeros((4,) + shape[:-1] + (shape[-1] + 1,), np.float32),  # one feature / channel too many
             np.zeros(shape, np.float32)]  # no batch dimension
    for arr in wrong:
        with pytest.raises(ValueError, match=re.escape(str(list(shape))[1:-1])) as info:
            flow.log_prob(arr)
        assert "\n" not in str(info.value) and "shape" in str(info.value)


# ---------------------------------------------------------------------------------------------- 2-D density
def _grid(points=481, half_width=24.0):
    g = np.linspace(-half_width, half_width, points)
    xx, yy = np.meshgrid(g, g)
    return np.stack([xx.ravel(), yy.ravel()], -1), (g[1] - g[0]) ** 2


@cases(VECTOR)
def test_2d_density_integrates_to_one_and_samples_follow_it(case):
    """The density on a grid over [-24, 24]^2 (cells 0.1 wide) holds all the mass but what lies outside it;
    samples follow it.

    A perturbed flow (planar, or a MoG base) can put a quarter of its mass beyond +-8, hence the wide grid.  A
    sampling flow can still put some beyond it, so the checks compare like with like: the grid's mass plus the
    fraction of samples outside the grid's box is 1, and the samples inside the box have the grid's mean and
    covariance (moments of the density truncated to the box).  Comparing the full sample covariance with the
    truncated one fails by chance for heavy-tailed draws.
    """
    flow = build(case, "float64", dim=2, seed=3)
    grid, cell = _grid()
    half_width = grid.max()
    p = np.exp(flow.log_prob(grid).numpy())
    mass = p.sum() * cell
    base = np.exp(-0.5 * np.sum(grid**2, -1)) / (2 * np.pi)
    assert np.abs(p - base).max() > 2e-3, "the perturbed density must differ from the base normal"
    if not case.can_sample:
        assert abs(mass - 1.0) < 0.01, f"{case.id}: mass {mass:.4f}"
        return
    n = 4000
    x = flow.sample(n, seed=11).numpy()
    inside = np.all(np.abs(x) <= half_width + np.sqrt(cell) / 2, axis=1)  # the grid's cells cover the box
    outside = 1.0 - inside.mean()
    assert outside < 0.05, f"{case.id}: {outside:.1%} of the samples lie beyond the grid: the check would say little"
    se_out = np.sqrt(max(outside, 1.0 / n) * (1.0 - outside) / n)
    assert abs(mass + outside - 1.0) < 0.01 + 5 * se_out, f"{case.id}: mass {mass:.4f} + outside {outside:.4f}"
    w = p * cell / mass  # the density truncated to the box
    mean = w @ grid
    cov = (grid - mean).T @ ((grid - mean) * w[:, None])
    xin = x[inside]
    se = np.sqrt(np.diag(cov) / len(xin))
    assert np.all(np.abs(xin.mean(0) - mean) < 5 * se + 0.02), (xin.mean(0), mean)
    np.testing.assert_allclose(np.cov(xin.T), cov, atol=0.1 + 0.1 * np.abs(cov).max())


# ---------------------------------------------------------------------------------------------- graph / XLA
@cases(PLAIN)
def test_eager_graph_and_xla_agree(case):
    flow = build(case)
    x = _data(case.shape(), 16, seed=7)
    eager = flow.log_prob(x).numpy()
    np.testing.assert_allclose(tf.function(flow.log_prob)(x).numpy(), eager, rtol=1e-5, atol=1e-5)
    try:
        xla = tf.function(flow.log_prob, jit_compile=True)(x).numpy()
    except Exception as exc:  # noqa: BLE001 -- any XLA failure is recorded, not hidden
        if case.name in XLA_UNSUPPORTED:
            return
        raise AssertionError(f"{case.id} does not compile with XLA; add it to XLA_UNSUPPORTED with the reason: "
                             f"{exc!r:.500}")
    assert case.name not in XLA_UNSUPPORTED, f"{case.name} compiles with XLA now; remove it from XLA_UNSUPPORTED"
    np.testing.assert_allclose(xla, eager, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- evaluation
@cases(CASES)
def test_evaluation_does_not_depend_on_the_batch(case):
    """Batch norm and ActNorm use running / initialised statistics in evaluation, never the batch at hand."""
    flow = build(case)
    for s in range(2):  # training-mode calls move batch norm's running statistics (others ignore them)
        flow.log_prob(_data(case.shape(), 64, seed=20 + s, scale=2.0), training=True)
    a = _data(case.shape(), 4, seed=9)
    b = _data(case.shape(), 12, seed=10, scale=5.0, shift=3.0)
    alone = flow.log_prob(a).numpy()
    np.testing.assert_allclose(flow.log_prob(tf.concat([a, b], 0)).numpy()[:4], alone, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(flow.log_prob(a[:1]).numpy(), alone[:1], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- dtypes
@cases(PLAIN)
def test_float32_and_float64(case):
    f32 = build(case, perturb=0)
    assert f32.dtype == tf.float32
    assert {v.dtype for v in f32.variables if v.dtype.is_floating} == {tf.float32}
    assert f32.log_prob(_data(case.shape(), 3)).dtype == tf.float32
    f64 = build(case, "float64", perturb=0)
    assert {v.dtype for v in f64.variables if v.dtype.is_floating} == {tf.float64}
    assert f64.log_prob(_data(case.shape(), 3, "float64")).dtype == tf.float64
    with pytest.raises(TypeError, match="float32"):
        f64.log_prob(_data(case.shape(), 3, "float32"))
    if case.can_sample:
        assert f64.sample(2, seed=0).dtype == tf.float64


# ---------------------------------------------------------------------------------------------- persistence
@cases(PLAIN)
def test_checkpoint_restores_identical_log_prob(case, tmp_path):
    flow = build(case, seed=0)
    x = _data(case.shape(), 8, seed=8)
    before = flow.log_prob(x).numpy()
    path = tf.train.Checkpoint(flow=flow).write(str(tmp_path / "ckpt"))
    fresh = build(case, seed=1)  # other random init, other ActNorm batch, other perturbation
    assert not np.allclose(fresh.log_prob(x).numpy(), before), "the fresh flow must differ before restoring"
    tf.train.Checkpoint(flow=fresh).read(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(fresh.log_prob(x).numpy(), before)


@cases(PLAIN)
def test_save_and_load_round_trip(case, tmp_path):
    """``flows.save(flow, path)`` then ``flows.load(path)``: the same config, log_prob and (seeded) samples."""
    flow = build(case, seed=0)
    x = _data(case.shape(), 8, seed=8)
    flows.save(flow, tmp_path / "model", metadata={"note": "battery"})
    loaded = flows.load(tmp_path / "model")
    assert loaded.config == flow.config
    np.testing.assert_array_equal(loaded.log_prob(x).numpy(), flow.log_prob(x).numpy())
    if case.can_sample:
        np.testing.assert_array_equal(loaded.sample(5, seed=3).numpy(), flow.sample(5, seed=3).numpy())
    else:
        with pytest.raises(NotInvertibleError):
            loaded.sample(1)


# ---------------------------------------------------------------------------------------------- options
def _wrong_type(default):
    if isinstance(default, bool):
        return 1
    if isinstance(default, (int, float)):
        return "three"
    if isinstance(default, (list, tuple)):
        return 3
    return 3.5


def test_unknown_flow_name_lists_accepted():
    with pytest.raises(OptionsError) as info:
        flows.build_flow("no_such_flow", [2])
    assert "\n" not in str(info.value) and all(name in str(info.value) for name in flows.FLOWS)


@pytest.mark.parametrize("name,kind", KINDS, ids=[f"{n}-{k}" for n, k in KINDS])
def test_bad_options_are_one_line_errors_naming_the_key(name, kind):
    spec = flows.FLOWS[name]
    shape = Case(name, kind).shape()
    options = spec.options(kind)
    with pytest.raises(OptionsError) as info:
        flows.build_flow(name, shape, no_such_knob=1)
    listed = ", ".join(sorted(options)) or "none"  # the gaussian has no options
    assert str(info.value) == f"flows.{name} has no setting 'no_such_knob'; accepted: {listed}"
    for key, opt in options.items():
        with pytest.raises(OptionsError) as info:
            flows.build_flow(name, shape, **{key: _wrong_type(opt.default)})
        msg = str(info.value)
        assert msg.startswith(f"flows.{name}.{key} = ") and " is invalid: " in msg and "\n" not in msg, msg
    for other in spec.kinds:  # an option of the other form only is refused here: it would have no effect
        for key in set(spec.options(other)) - set(options):
            with pytest.raises(OptionsError, match=f"has no setting '{key}'"):
                flows.build_flow(name, shape, **{key: spec.options(other)[key].default})


@pytest.mark.parametrize("name", list(flows.FLOWS))
def test_registry_entry_is_documented_and_plain(name):
    """Each flow names its paper with an arXiv id, documents its builder, and has only plain options."""
    spec = flows.FLOWS[name]
    assert re.search(r"\d{4}\.\d{4,5}", spec.paper), f"{name}: paper {spec.paper!r} has no arXiv id"
    assert spec.doc.strip(), f"{name}: builder has no docstring"
    assert spec.kinds and set(spec.kinds) <= {"vector", "image"}
    for kind in spec.kinds:
        for key, opt in spec.options(kind).items():
            assert isinstance(opt.default, (bool, int, float, str, list)), f"{name}.{kind}: {key} = {opt.default!r}"
