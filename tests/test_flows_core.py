"""Family checks of the core flows (Real NVP, MAF, IAF, NSF, MADE) and the shared layers.

The generic numerical checks of every registered flow (log-det against autodiff, round trip, sampling, dtypes,
density on a grid, ...) are in test_battery_flows.py; this file keeps what is specific to these families.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TFP 0.25 must see Keras 2: importing tf_keras before this is set breaks TFP's import (flows sets it too)
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import flows  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from flows.base import NotInvertibleError  # noqa: E402
from flows.nn import BatchNorm, Permutation, Reverse  # noqa: E402
from flows.training import set_seed  # noqa: E402

SMALL = {"num_layers": 2, "hidden_units": [16, 16]}
CASES = {
    "realnvp": ("realnvp", SMALL),
    "realnvp_bn": ("realnvp", {**SMALL, "batch_norm": True}),
    "maf": ("maf", SMALL),
    "maf_bn": ("maf", {**SMALL, "batch_norm": True}),
    "iaf": ("iaf", SMALL),
    "nsf_coupling": ("nsf", {**SMALL, "form": "coupling"}),
    "nsf_autoregressive": ("nsf", {**SMALL, "form": "autoregressive"}),
    "made": ("made", {"hidden_units": [16, 16]}),
}


def perturb(flow, scale, seed):
    """Move every trainable variable off its initial value (couplings start as the identity).

    Masked MADE weights are perturbed too (no constraint is applied): the networks must mask at call time.
    """
    rng = np.random.default_rng(seed)
    for v in flow.trainable_variables:
        v.assign_add(scale * rng.standard_normal(v.shape).astype(v.dtype.as_numpy_dtype))
    return flow


def make(case, d, dtype="float64", scale=0.3, seed=0, data_scale=2.0):
    name, hp = CASES[case]
    set_seed(seed)  # Keras' unseeded initialisers draw from Python's random: seed it too, so every test repeats
    flow = flows.build_flow(name, [d], dtype, **hp)
    rng = np.random.default_rng(seed + 100)
    flow.initialize(tf.constant(rng.normal(0.5, data_scale, (64, d)), flow.dtype))  # batch-norm running statistics
    return perturb(flow, scale, seed)


def jacobian(fn, x):
    """``(y, log_det, dy/dx)`` for a map applied row by row; one reverse pass per output feature."""
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y, ldj = fn(x)
        outputs = [y[:, i] for i in range(y.shape[-1])]
    rows = [tape.gradient(out, x) for out in outputs]  # rows are independent, so d/dx of sum = per-row gradient
    return y, ldj, np.stack([r.numpy() for r in rows], axis=1)


def log_abs_det(jac):
    return np.linalg.slogdet(jac)[1]


# ---------------------------------------------------------------- batch norm
def test_batch_norm_eval_uses_only_running_statistics():
    flow = make("maf_bn", 3, scale=0.1)
    bns = [layer for layer in flow.layers if isinstance(layer, BatchNorm)]
    assert bns
    before = [(b.running_mean.numpy().copy(), b.running_var.numpy().copy()) for b in bns]
    x = np.random.default_rng(0).normal(3.0, 5.0, (50, 3))
    batch_lp = flow.log_prob(x).numpy()
    for b, (m, v) in zip(bns, before):
        np.testing.assert_array_equal(b.running_mean.numpy(), m)
        np.testing.assert_array_equal(b.running_var.numpy(), v)
    alone = np.array([flow.log_prob(x[i:i + 1]).numpy()[0] for i in range(3)])
    np.testing.assert_allclose(alone, batch_lp[:3], atol=1e-10)
    # training mode normalises with the batch and moves the running statistics
    train_lp = flow.log_prob(x, training=True).numpy()
    assert not np.allclose(train_lp, batch_lp)
    assert not np.allclose(bns[0].running_mean.numpy(), before[0][0])


def test_batch_norm_layer_math():
    bn = BatchNorm(2, momentum=0.5, dtype="float64")
    bn.log_gamma.assign([0.3, -0.2])
    bn.beta.assign([1.0, -1.0])
    x = tf.constant(np.random.default_rng(1).normal([2.0, -3.0], [0.5, 4.0], (400, 2)))
    z, ldj = bn.inverse(x, training=True)
    np.testing.assert_allclose(tf.reduce_mean(z, 0).numpy(), [1.0, -1.0], atol=1e-10)
    np.testing.assert_allclose(tf.math.reduce_std(z, 0).numpy(), np.exp([0.3, -0.2]), rtol=1e-4)
    mean, var = np.mean(x.numpy(), 0), np.var(x.numpy(), 0)
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.5 * mean, rtol=1e-10)
    np.testing.assert_allclose(bn.running_var.numpy(), 0.5 + 0.5 * var, rtol=1e-10)
    np.testing.assert_allclose(ldj.numpy()[0], 0.1 - 0.5 * np.log(var + 1e-5).sum(), rtol=1e-8)
    z_eval, ldj_eval = bn.inverse(x[:5], training=False)
    x_back, fldj = bn.forward(z_eval)
    np.testing.assert_allclose(x_back.numpy(), x[:5].numpy(), atol=1e-10)
    np.testing.assert_allclose(fldj.numpy(), -ldj_eval.numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm(2, momentum=1.5)


def test_permutations():
    x = tf.constant(np.arange(10.0).reshape(2, 5))
    p = Permutation(5, order=[2, 0, 4, 1, 3], dtype="float64")
    z, ldj = p.inverse(x)
    np.testing.assert_array_equal(z.numpy()[0], [2, 0, 4, 1, 3])
    np.testing.assert_array_equal(p.forward(z)[0].numpy(), x.numpy())
    np.testing.assert_array_equal(ldj.numpy(), [0.0, 0.0])
    np.testing.assert_array_equal(Reverse(5, dtype="float64").inverse(x)[0].numpy()[0], [4, 3, 2, 1, 0])
    with pytest.raises(ValueError, match="not a permutation"):
        Permutation(3, order=[0, 0, 1])


# ---------------------------------------------------------------- autoregressive structure
def test_made_masks_hold_for_any_weights():
    """Even with every masked weight set non-zero (no optimizer constraint), z_i depends on x_<=i only."""
    flow = flows.build_flow("maf", [4], "float64", num_layers=1, hidden_units=[16])
    for v in flow.trainable_variables:
        v.assign(tf.ones_like(v) * 0.1 + tf.cast(tf.random.stateless_normal(v.shape, [1, 2]), v.dtype))
    x = tf.constant(np.random.default_rng(0).normal(size=(8, 4)))
    z, ldj, jac = jacobian(flow.inverse, x)
    assert np.abs(np.triu(jac, k=1)).max() == 0.0
    np.testing.assert_allclose(ldj.numpy(), log_abs_det(jac), atol=1e-9)


@pytest.mark.parametrize("case", ["maf", "made", "nsf_autoregressive"])
def test_gradient_after_an_earlier_call_on_the_same_tensor(case):
    """TFP's bijector cache must not hand back an earlier (untaped) result: the Jacobian would be empty."""
    flow = make(case, 3, scale=0.1)
    x = tf.constant(np.random.default_rng(4).normal(size=(4, 3)))
    _, ldj = flow.inverse(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        z, _ = flow.inverse(x)
    jac = tape.batch_jacobian(z, x)
    np.testing.assert_allclose(log_abs_det(jac.numpy()), ldj.numpy(), atol=1e-6)


def test_maf_stays_autoregressive_after_adam_steps():
    flow = flows.build_flow("maf", [4], "float64", num_layers=1, hidden_units=[16])
    opt = keras.optimizers.Adam(0.05)
    x = tf.constant(np.random.default_rng(0).normal(size=(32, 4)))
    for _ in range(3):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(flow.log_prob(x))
        opt.apply_gradients(zip(tape.gradient(loss, flow.trainable_variables), flow.trainable_variables))
    with tf.GradientTape() as tape:
        tape.watch(x)
        z, _ = flow.inverse(x)
    jac = tape.batch_jacobian(z, x).numpy()
    assert np.abs(np.triu(jac, k=1)).max() == 0.0  # z_i depends on x_<=i only
    assert np.abs(np.tril(jac, k=-1)).max() > 1e-4


@pytest.mark.parametrize("name", ["maf", "iaf"])
def test_autoregressive_init_options(name):
    """init="identity": every layer starts as the identity (the untrained flow is N(0, I)); init="fan_in" (the
    default): every MADE layer, the output one included, uniform in +-1/sqrt(fan_in); anything else is refused."""
    x = tf.constant(np.random.default_rng(3).normal(size=(16, 3)))
    set_seed(0)
    ident = flows.build_flow(name, [3], "float64", num_layers=2, hidden_units=[8], init="identity")
    np.testing.assert_allclose(ident.log_prob(x).numpy(), ident.base_log_prob(x).numpy(), atol=1e-12)
    fan_in = flows.build_flow(name, [3], "float64", num_layers=2, hidden_units=[8])
    assert np.abs(fan_in.log_prob(x).numpy() - fan_in.base_log_prob(x).numpy()).max() > 1e-3
    dense = [d for layer in fan_in.layers if hasattr(layer, "made")
             for d in layer.made._network.layers if isinstance(d, keras.layers.Dense)]
    assert len(dense) == 4
    for d in dense:
        bound = 1 / np.sqrt(d.kernel.shape[0])
        for v in (d.kernel.numpy(), d.bias.numpy()):
            assert np.abs(v).max() <= bound and np.abs(v).max() > 0.3 * bound
    assert flows.FLOWS[name].defaults["init"] == "fan_in"
    bad = rf"flows.{name}.init = 'xavier' is invalid: accepted: fan_in, identity"
    with pytest.raises(flows.OptionsError, match=bad):
        flows.build_flow(name, [3], init="xavier")


def test_iaf_density_is_slow_direction_but_exact():
    flow = make("iaf", 3, scale=0.2)
    z = tf.constant(np.random.default_rng(2).normal(size=(5, 3)))
    x, fldj = flow.forward(z)
    lp = flow.log_prob(x.numpy()).numpy()
    np.testing.assert_allclose(lp, flow.base_log_prob(z).numpy() - fldj.numpy(), atol=1e-8)


# ---------------------------------------------------------------- NSF
@pytest.mark.parametrize("form", ["coupling", "autoregressive"])
def test_nsf_finite_far_outside_tail_bound(form):
    flow = make("nsf_" + form, 3, scale=0.3)
    x = tf.constant([[1e4, -1e4, 5.0], [-4.0, 3.5, 1e4], [0.1, -2.9, 3.0 + 1e-9]], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(x)
        lp = flow.log_prob(x)
    grads = tape.gradient(lp, [x] + list(flow.trainable_variables))
    assert np.all(np.isfinite(lp.numpy()))
    assert all(g is not None and np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in grads)
    xs, ldj = flow.forward(tf.constant([[1e4, -1e4, 7.0]], tf.float64))
    assert np.all(np.isfinite(xs.numpy())) and np.all(np.isfinite(ldj.numpy()))


def test_rqs_matches_tfp_spline_and_inverts():
    import tensorflow_probability as tfp

    from flows.spline import rqs, spline_knots

    k, bound = 5, 2.0
    rng = np.random.default_rng(0)
    params = tf.constant(rng.normal(size=(400, 3, 3 * k - 1)))
    x = tf.constant(np.concatenate([rng.normal(0.0, 2.0, (397, 3)), [[2.0, -2.0, 0.0], [1e4, -1e4, 1.99999],
                                                                      [-2.00001, 0.5, 2.00001]]]))
    widths, heights, derivs = spline_knots(params, k, bound)
    np.testing.assert_allclose(tf.reduce_sum(widths, -1).numpy(), 2 * bound, rtol=1e-12)
    reference = tfp.bijectors.RationalQuadraticSpline(widths, heights, derivs[..., 1:-1], range_min=-bound)
    y, ldj = rqs(x, params, k, bound)
    np.testing.assert_allclose(y.numpy(), reference.forward(x).numpy(), atol=1e-10)
    np.testing.assert_allclose(ldj.numpy(), reference.forward_log_det_jacobian(x, event_ndims=0).numpy(), atol=1e-9)
    x_back, ildj = rqs(tf.constant(y.numpy()), params, k, bound, inverse=True)
    np.testing.assert_allclose(x_back.numpy(), x.numpy(), atol=1e-9)
    np.testing.assert_allclose(ildj.numpy(), -ldj.numpy(), atol=1e-9)
    outside = np.abs(x.numpy()) > bound
    np.testing.assert_array_equal(y.numpy()[outside], x.numpy()[outside])  # identity tails
    assert np.abs(y.numpy() - x.numpy()).max() > 0.1


def test_nsf_rejects_unknown_form_and_bad_values():
    with pytest.raises(ValueError, match="coupling, autoregressive"):
        flows.build_flow("nsf", [2], form="residual")
    with pytest.raises(ValueError, match="tail_bound"):
        flows.build_flow("nsf", [2], tail_bound=-1.0)
    with pytest.raises(ValueError, match="hidden_units"):
        flows.build_flow("maf", [2], hidden_units=[0])


# ---------------------------------------------------------------- MADE MoG
def test_made_mog_normalises_and_samples_match_density():
    from flows.training import set_seed

    set_seed(0)  # the initial weights come from TF's global generator: fixed here, whatever ran before
    flow = flows.build_flow("made", [2], "float64", num_components=3, hidden_units=[16, 16])
    perturb(flow, 0.3, seed=5)
    g = np.linspace(-10.0, 10.0, 401)
    xx, yy = np.meshgrid(g, g)
    pts = np.stack([xx.ravel(), yy.ravel()], axis=1)
    lp = flow.log_prob(pts).numpy()
    p = np.exp(lp) * (g[1] - g[0]) ** 2
    assert abs(p.sum() - 1.0) < 0.01, p.sum()
    neg_entropy = float((p * lp).sum())
    s = flow.sample(4000, seed=7)
    assert s.shape == (4000, 2) and s.dtype == tf.float64
    lp_s = flow.log_prob(s).numpy()
    mean_lp, se = float(lp_s.mean()), float(lp_s.std(ddof=1) / np.sqrt(len(lp_s)))
    # E_p[log p] from the samples vs. the grid's sum p log p: equal up to Monte Carlo noise (5 se) and the grid's error
    assert abs(mean_lp - neg_entropy) < 5 * se + 0.01, (mean_lp, neg_entropy, se)
    # the first feature's marginal is a 1-D mixture: its sample mean matches the grid mean
    grid_mean = float((p.reshape(xx.shape).sum(0) * g).sum())
    assert abs(float(tf.reduce_mean(s[:, 0])) - grid_mean) < 0.1


def test_made_mog_is_not_a_bijection():
    flow = flows.build_flow("made", [3], num_components=2, hidden_units=[8])
    assert flow.can_sample
    for call in (lambda: flow.inverse(np.zeros((1, 3), np.float32)), lambda: flow.forward(np.zeros((1, 3), np.float32)),
                 lambda: flow.inverse_trajectory(np.zeros((1, 3), np.float32))):
        with pytest.raises(NotInvertibleError, match="not a bijection"):
            call()


# ---------------------------------------------------------------- registry
def test_registry_names_and_defaults():
    assert flows.FLOWS["realnvp"].defaults == {
        "vector": {"num_layers": 4, "hidden_units": [64, 64], "batch_norm": False},
        "image": {"num_layers": 4, "num_scales": 2, "num_filters": 32, "num_res_blocks": 2}}
    assert flows.FLOWS["realnvp"].kinds == ("vector", "image")
    for name in ("maf", "iaf", "nsf", "made"):
        assert flows.FLOWS[name].kinds == ("vector",) and flows.FLOWS[name].can_sample

