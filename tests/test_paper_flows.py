"""The MAF-paper and NSF-paper rows: the full-covariance Gaussian baseline, MAF MoG (a MADE MoG base) and NSF's
residual / dropout conditioners.  The generic numerical checks of each (log-det, 2-D mass, sampling, persistence,
dtypes) are the battery's (tests/test_battery_flows.py); these are what is specific to each."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import flows  # noqa: E402
from flows import OptionsError  # noqa: E402
from flows.made import MADE, MADEBaseFlow  # noqa: E402
from flows.training import set_seed  # noqa: E402

F64 = tf.float64
SMALL = {"num_layers": 2, "hidden_units": [8, 8]}


def _correlated(n, d=4, seed=0):
    rng = np.random.default_rng(seed)
    mix = np.triu(rng.normal(size=(d, d))) + 2.0 * np.eye(d)
    return rng.normal(size=(n, d)) @ mix + rng.normal(size=d) * 3.0


def _perturb(flow, scale=0.1, seed=0):
    rng = np.random.default_rng(seed)
    for v in flow.trainable_variables:
        v.assign_add(rng.normal(0.0, scale, size=v.shape).astype(v.dtype.as_numpy_dtype))


def _gaussian_ll(x, mean, cov):
    """Mean log N(x; mean, cov) in nats, numpy."""
    d = x.shape[1]
    diff = x - mean
    maha = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
    return float(np.mean(-0.5 * (d * math.log(2 * math.pi) + np.linalg.slogdet(cov)[1] + maha)))


# ------------------------------------------------------------------------------------------------ Gaussian
def test_gaussian_initialize_is_the_maximum_likelihood_fit():
    x = _correlated(500)
    flow = flows.build_flow("gaussian", [4], "float64").initialize(x)
    mean, cov = x.mean(0), np.cov(x.T, ddof=0)
    layer = flow.layers[0]
    np.testing.assert_allclose(layer.loc.numpy(), mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.covariance().numpy(), cov, rtol=1e-10, atol=1e-10)
    scale = layer.scale_tril().numpy()
    np.testing.assert_array_equal(scale, np.tril(scale))
    assert np.all(np.diag(scale) > 0)
    ll = float(tf.reduce_mean(flow.log_prob(x)))
    assert ll == pytest.approx(_gaussian_ll(x, mean, cov), abs=1e-10)
    # the ML fit is a stationary point of the likelihood of that batch: training starts at the optimum
    with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(flow.log_prob(x))
    grads = tape.gradient(loss, flow.trainable_variables)
    assert max(float(tf.reduce_max(tf.abs(g))) for g in grads) < 1e-8
    # any other Gaussian fits this batch worse
    assert ll > _gaussian_ll(x, mean + 0.05, cov) and ll > _gaussian_ll(x, mean, 1.1 * cov)


def test_gaussian_initialize_is_a_no_op_after_the_first_and_after_a_restore(tmp_path):
    x, other = _correlated(300, seed=1), _correlated(300, seed=2) * 2.0
    flow = flows.build_flow("gaussian", [4], "float64").initialize(x)
    before = [v.numpy().copy() for v in flow.variables]
    flow.initialize(other)
    for a, v in zip(before, flow.variables):
        np.testing.assert_array_equal(a, v.numpy())
    flows.save(flow, tmp_path / "g")
    loaded = flows.load(tmp_path / "g")  # initialises on zeros (a degenerate batch), then restores
    loaded.initialize(other)
    np.testing.assert_array_equal(loaded.log_prob(x).numpy(), flow.log_prob(x).numpy())


def test_gaussian_float32_and_degenerate_batches():
    x = _correlated(400).astype(np.float32)
    flow = flows.build_flow("gaussian", [4]).initialize(x)
    ll = float(tf.reduce_mean(flow.log_prob(x)))
    assert ll == pytest.approx(_gaussian_ll(x.astype(np.float64), x.mean(0), np.cov(x.T, ddof=0)), abs=1e-3)
    for batch in (np.zeros([2, 4], np.float32), np.ones([1, 4], np.float32), x[:2]):  # rank 0, 0 and 1 (< d)
        fresh = flows.build_flow("gaussian", [4]).initialize(batch)
        assert all(np.all(np.isfinite(v.numpy())) for v in fresh.trainable_variables)


def test_gaussian_samples_have_the_fitted_moments():
    x = _correlated(800, seed=3)
    flow = flows.build_flow("gaussian", [4], "float64").initialize(x)
    s = flow.sample(20000, seed=0).numpy()
    cov = np.cov(x.T, ddof=0)
    np.testing.assert_allclose(s.mean(0), x.mean(0), atol=4 * np.sqrt(np.diag(cov).max() / 20000))
    np.testing.assert_allclose(np.cov(s.T), cov, atol=0.05 * np.abs(cov).max())


# ------------------------------------------------------------------------------------------------ MAF MoG
def test_mog_components_option():
    assert flows.FLOWS["maf"].defaults["mog_components"] == 0
    assert "mog_components" not in flows.FLOWS["iaf"].defaults
    assert type(flows.build_flow("maf", [3], **SMALL)) is flows.Flow  # 0: the standard-normal base as before
    for bad in (1, -1, 2.0, True):
        with pytest.raises(OptionsError) as info:
            flows.build_flow("maf", [3], mog_components=bad)
        assert f"flows.maf.mog_components = {bad!r} is invalid: 0 or an integer >= 2" in str(info.value)
    flow = flows.build_flow("maf", [3], mog_components=2, **SMALL)
    assert isinstance(flow, MADEBaseFlow) and flow.num_components == 2


@pytest.mark.parametrize("k", [2, 5])
def test_maf_mog_has_k_component_conditionals_in_the_reversed_order(k):
    d = 3
    flow = flows.build_flow("maf", [d], "float64", mog_components=k, batch_norm=True, **SMALL)
    flow.initialize(tf.constant(_correlated(64, d), F64))
    _perturb(flow)
    base = flow.base
    assert isinstance(base, MADE) and base.num_components == k
    assert [type(l).__name__ for l in flow.layers].count("MaskedAutoregressive") == 2
    # the base's network is as the MAF's MADEs: same hidden widths
    assert [int(w.shape[1]) for w, _ in base.net._kernels_and_biases()][:-1] == SMALL["hidden_units"]
    z = tf.constant(np.random.default_rng(1).normal(size=(6, d)), F64)
    params = base.net(z)
    assert params.shape == (6, d, 3 * k)
    # log p(z) is, per feature, a K-component mixture of Gaussians (numpy)
    p = params.numpy()
    logits, mu, raw = p[..., :k], p[..., k:2 * k], p[..., 2 * k:]
    log_pi = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    log_sigma = 5.0 * np.tanh(raw / 5.0)
    comp = log_pi - 0.5 * ((z.numpy()[..., None] - mu) / np.exp(log_sigma)) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)
    expected = np.log(np.exp(comp).sum(-1)).sum(-1)
    np.testing.assert_allclose(base.log_prob(z).numpy(), expected, rtol=1e-10)
    # the components differ (they start apart: the base's last layer is not zero)
    assert np.ptp(mu, axis=-1).min() > 1e-3
    # feature i of the base depends on z_>i only: the reverse of the last MAF layer's left-to-right order
    with tf.GradientTape() as tape:
        tape.watch(z)
        out = tf.reshape(base.net(z), [6, -1])
    jac = tape.batch_jacobian(out, z).numpy().reshape(6, d, 3 * k, d)
    dep = np.abs(jac).max(axis=(0, 2))  # [output feature, input]
    np.testing.assert_array_equal(dep[np.tril_indices(d)], 0.0)
    assert np.all(dep[np.triu_indices(d, 1)] > 0)
    # the density is the base's at the layers' output, plus their log-det
    x = tf.constant(_correlated(5, d, seed=4), F64)
    zz, ldj = flow.inverse(x)
    np.testing.assert_allclose(flow.log_prob(x).numpy(), (base.log_prob(zz) + ldj).numpy(), rtol=1e-12)


def test_maf_mog_integrates_to_one_in_2d_and_samples_it():
    set_seed(5)  # the initial draws (the base's output biases among them) whatever ran before
    flow = flows.build_flow("maf", [2], "float64", mog_components=3, **SMALL)
    flow.initialize(tf.constant(_correlated(64, 2), F64))
    _perturb(flow, 0.2, seed=5)
    # wide: the base's components start with log-scales drawn around 0 (scales up to ~e^2, widened by the MAF layers)
    g = np.linspace(-60, 60, 1441)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    p = np.exp(flow.log_prob(grid).numpy())
    mass = p.sum() * (g[1] - g[0]) ** 2
    assert abs(mass - 1.0) < 0.01, mass
    # the base alone is a density too (each conditional a normalised mixture)
    pb = np.exp(flow.base.log_prob(grid).numpy())
    assert abs(pb.sum() * (g[1] - g[0]) ** 2 - 1.0) < 0.01
    x = flow.sample(4000, seed=2).numpy()
    w = p / p.sum()
    mean = w @ grid
    se = x.std(0) / math.sqrt(len(x))  # the sample mean's standard error: the draws' tails are wide
    assert np.all(np.abs(x.mean(0) - mean) < 4 * se), (x.mean(0), mean, se)
    xs, lq = flow.sample_and_log_prob(50, seed=3)
    np.testing.assert_allclose(flow.log_prob(xs).numpy(), lq.numpy(), rtol=1e-8, atol=1e-8)


# ------------------------------------------------------------------------------------------------ NSF conditioners
FORMS = ["coupling", "autoregressive"]


def _nsf(form, dropout, residual_blocks=1, seed=0, d=3):
    set_seed(seed)
    flow = flows.build_flow("nsf", [d], "float64", form=form, num_bins=4, residual_blocks=residual_blocks,
                            dropout=dropout, **SMALL)
    _perturb(flow, 0.3, seed)
    return flow


@pytest.mark.parametrize("form", FORMS)
def test_nsf_dropout_acts_in_training_only(form):
    flow, plain = _nsf(form, 0.3), _nsf(form, 0.0, seed=1)
    for a, b in zip(plain.variables, flow.variables):  # the same weights, no dropout
        a.assign(b)
    x = tf.constant(np.random.default_rng(0).normal(size=(16, 3)), F64)
    evaluation = flow.log_prob(x).numpy()
    np.testing.assert_array_equal(flow.log_prob(x).numpy(), evaluation)  # deterministic
    np.testing.assert_array_equal(plain.log_prob(x).numpy(), evaluation)  # dropout off in evaluation
    np.testing.assert_array_equal(plain.log_prob(x, training=True).numpy(), evaluation)
    t1, t2 = flow.log_prob(x, training=True).numpy(), flow.log_prob(x, training=True).numpy()
    assert np.all(np.isfinite(t1)) and not np.allclose(t1, evaluation) and not np.allclose(t1, t2)
    np.testing.assert_array_equal(flow.sample(4, seed=1).numpy(), plain.sample(4, seed=1).numpy())
    with tf.GradientTape() as tape:  # the training loss (log_prob(training=True)) has finite gradients
        loss = -tf.reduce_mean(flow.log_prob(x, training=True))
    grads = tape.gradient(loss, flow.trainable_variables)
    assert all(g is not None and np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in grads)


@pytest.mark.parametrize("form", FORMS)
def test_nsf_residual_conditioners_have_the_residual_structure(form):
    flow = _nsf(form, 0.0, residual_blocks=2)
    layer = flow.layers[0]
    net = layer.net if form == "coupling" else layer.made
    assert net.residual_blocks == 2
    widths = [int(layer.kernel.shape[1]) for layer in net._network.layers]
    assert widths[:-1] == [8] * 5  # stem, 2 blocks of 2 layers, then the output layer
    with pytest.raises(ValueError, match="hidden_units must be all equal"):
        flows.build_flow("nsf", [3], form=form, residual_blocks=1, hidden_units=[8, 4])
    for key, bad in (("residual_blocks", -1), ("dropout", 1.0), ("dropout", -0.1)):
        with pytest.raises(OptionsError, match=f"flows.nsf.{key} = "):
            flows.build_flow("nsf", [3], form=form, **{key: bad})


@pytest.mark.parametrize("training", [False, True])
def test_nsf_residual_made_keeps_the_autoregressive_property(training):
    d = 5
    flow = _nsf("autoregressive", 0.2, residual_blocks=2, d=d)
    layer = flow.layers[0]  # the first spline layer: its MADE reads x left to right
    x = tf.constant(np.random.default_rng(2).uniform(-2.5, 2.5, size=(8, d)), F64)  # inside the spline's range
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        z = layer.inverse(x, training=training)[0]
        params = tf.reshape(layer.made(x, training=training), [8, -1])
    jac = tape.batch_jacobian(z, x).numpy()  # [batch, z_i, x_j]
    for j in range(d):
        assert np.all(np.abs(np.triu(jac[j], 1)) == 0.0), jac[j]  # z_i depends on x_<=i only
    assert np.all(np.abs(np.diagonal(jac, axis1=1, axis2=2)) > 0)
    assert np.abs(np.tril(jac, -1)).max() > 1e-3  # and does depend on x_<i
    pj = tape.batch_jacobian(params, x).numpy().reshape(8, d, -1, d)
    dep = np.abs(pj).max(axis=(0, 2))  # the spline parameters of feature i: x_<i only
    np.testing.assert_array_equal(dep[np.triu_indices(d)], 0.0)
    assert np.all(dep[np.tril_indices(d, -1)] > 0)


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("name,hp", [
    ("gaussian", {}),
    ("maf", {"mog_components": 3, **SMALL}),
    ("nsf", {"form": "autoregressive", "residual_blocks": 1, "dropout": 0.1, **SMALL}),
], ids=["gaussian", "maf-mog", "nsf-residual-dropout"])
def test_short_xla_fit_trains(name, hp):
    """fit (XLA, log_prob(training=True): dropout on) runs; the Gaussian stays at the training set's ML fit."""
    from flows import training as T

    x = _correlated(600, d=3, seed=7).astype(np.float32)
    x = (x - x.mean(0)) / x.std(0)
    x[:, 2] += np.sin(2 * x[:, 0])  # not Gaussian: the flows can gain on the Gaussian fit
    flow = flows.build_flow(name, [3], **hp)
    cfg = T.TrainConfig(steps=30, batch_size=64, eval_every=15, seed=0, jit_compile=True, learning_rate=3e-3)
    hist = T.fit(flow, x[:500], x[500:], cfg, log=lambda s: None)
    assert np.all(np.isfinite(hist.train_loss)) and np.all(np.isfinite(hist.val_loss))
    test_ll = T.evaluate(flow, x[500:])["test_ll"]
    assert np.isfinite(test_ll)
    if name == "gaussian":  # initialised at the ML fit of the 500 training rows, a stationary point
        assert test_ll == pytest.approx(_gaussian_ll(x[500:].astype(np.float64), x[:500].mean(0),
                                                     np.cov(x[:500].T, ddof=0)), abs=0.02)


def _per_feature_log_prob(made, x):
    """log p(x_i | x_<i) per feature ([n, d], nats), from the MADE MoG's mixture parameters."""
    log_pi, mu, log_sigma = made._mixture(x)
    u = (x[..., None] - mu) * tf.exp(-log_sigma)
    log_normal = -0.5 * tf.square(u) - log_sigma - 0.5 * math.log(2 * math.pi)
    return tf.reduce_logsumexp(log_pi + log_normal, axis=-1)


@pytest.mark.parametrize("order", ["left-to-right", "right-to-left"])
def test_made_mog_components_start_apart_for_every_feature_the_first_included(order):
    # the first feature in the order sees no input: only its output biases can tell its components apart
    set_seed(3)  # flows.training.set_seed: Python, NumPy and TensorFlow (tf_keras's own would leak a generator)
    made = MADE(3, 4, [16, 16], dtype="float64", input_order=order)
    log_pi, mu, log_sigma = (t.numpy() for t in made._mixture(tf.zeros([2, 3], F64)))
    first = 0 if order == "left-to-right" else 2
    assert np.ptp(mu[:, first], axis=-1).min() > 0.1
    assert np.ptp(log_sigma[:, first], axis=-1).min() > 0.1
    assert np.ptp(log_pi[:, first], axis=-1).min() > 0.1


def test_made_mog_learns_a_bimodal_first_feature():
    # x_0 is bimodal (modes at +-1 after standardising, sd 0.15): a mixture fits it to about -0.2 nats, the best
    # single Gaussian to -1.42 (what a MADE MoG with identical first-feature components is stuck at)
    set_seed(0)
    rng = np.random.default_rng(0)
    x0 = rng.choice([-1.0, 1.0], 4096) + 0.15 * rng.normal(size=4096)
    x = np.stack([x0, x0 + 0.5 * rng.normal(size=4096)], 1)
    x = tf.constant((x - x.mean(0)) / x.std(0), tf.float32)
    made = MADE(2, 5, [32, 32], dtype="float32")
    opt = tf.keras.optimizers.Adam(1e-2)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(made.log_prob(x))
        opt.apply_gradients(zip(tape.gradient(loss, made.trainable_variables), made.trainable_variables))
        return loss

    for _ in range(400):
        step()
    first = float(tf.reduce_mean(_per_feature_log_prob(made, x)[:, 0]))
    assert first > -0.8, first


def test_masked_mlp_output_bias_option():
    from flows.nn import MaskedMLP
    with pytest.raises(ValueError) as info:
        MaskedMLP(3, 2, [8], tf.float32, output_bias="uniform")
    assert "output_bias = 'uniform' is not accepted; accepted: zeros, normal" in str(info.value)
    # with zero_last the output layer starts at zero whatever output_bias says (a spline layer starts as the identity)
    net = MaskedMLP(3, 2, [8], tf.float32, output_bias="normal")
    assert not np.any(net._kernels_and_biases()[-1][1].numpy())
    for backend in ("keras", "numpy"):
        net = MaskedMLP(3, 4, [8], tf.float64, zero_last=False, output_bias="normal", backend=backend, seed=1)
        bias = net._kernels_and_biases()[-1][1].numpy()
        assert bias.shape == (12,) and 0.3 < bias.std() < 3.0
