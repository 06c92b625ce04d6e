"""Planar and radial flows: invertibility constraints, layer log-determinants, energies and reverse KL.

The generic checks of every registered flow (the flow's log-det against autodiff, NotInvertibleError when
sampling, the density on a grid, dtypes, ...) are in test_battery_flows.py.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # TFP 0.25 needs Keras 2 (tf_keras)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from flows import energies  # noqa: E402
from flows.planar import PlanarLayer  # noqa: E402
from flows.radial import RadialLayer  # noqa: E402

LAYERS = {"planar": PlanarLayer, "radial": RadialLayer}


def _randomise(flow_or_layer, rng, scale=1.0):
    """Give every variable a random value of size ``scale``, so a test cannot pass at the near-identity init."""
    for v in flow_or_layer.trainable_variables:
        v.assign(rng.normal(0.0, scale, size=v.shape).astype(v.dtype.as_numpy_dtype))


def _draws(rng, n=2000, d=3):
    """(w, u) pairs: random at many scales, plus adversarial ones with w.u << -1."""
    out = []
    for _ in range(n):
        scale_w, scale_u = 10.0 ** rng.uniform(-3, 3, size=2)
        out.append((rng.normal(size=d) * scale_w, rng.normal(size=d) * scale_u))
    for c in [1.0, 1.5, 3.0, 10.0, 1e3, 1e6]:
        for scale_w in [1e-3, 0.1, 0.5, 1.0, 2.0, 30.0]:
            w = rng.normal(size=d) * scale_w
            out.append((w, -c * w / np.dot(w, w)))  # w.u = -c exactly
            out.append((w, -c * w))  # w.u = -c |w|^2
    return out


# ---------------------------------------------------------------- planar: the constraint w.u_hat >= -1
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_planar_constraint_holds_for_random_and_adversarial_parameters(dtype):
    rng = np.random.default_rng(0)
    layer = PlanarLayer(3, dtype)
    wu_hat, wu_list = [], []
    for w, u in _draws(rng):
        layer.w.assign(w.astype(dtype.as_numpy_dtype))
        layer.u.assign(u.astype(dtype.as_numpy_dtype))
        wu_hat.append(float(tf.reduce_sum(layer.w * layer.u_hat())))
        wu_list.append(float(np.dot(layer.w.numpy(), layer.u.numpy())))
    wu_hat, wu_list = np.array(wu_hat), np.array(wu_list)
    assert np.all(np.isfinite(wu_hat))
    assert wu_list.min() < -1e3, "the draws must include adversarial w.u << -1"
    # relative float error: w.u_hat is computed from terms as large as |w.u|
    tol = (1e-5 if dtype == tf.float32 else 1e-12) * np.maximum(1.0, np.abs(wu_list))
    assert np.all(wu_hat >= -1.0 - tol), wu_hat.min()
    # and it is exactly m(w.u) = -1 + softplus(w.u)
    expected = -1.0 + np.logaddexp(0.0, wu_list)
    assert np.all(np.abs(wu_hat - expected) <= tol + 1e-5 * np.abs(expected))


def test_planar_seed_formula_dividing_by_norm_breaks_the_constraint():
    """The seed project used w / |w| instead of w / |w|^2; that u_hat violates w.u_hat >= -1, ours does not."""
    rng = np.random.default_rng(1)
    layer = PlanarLayer(3, tf.float64)
    seed_violations, ours_violations = 0, 0
    for w, u in _draws(rng, n=500):
        layer.w.assign(w)
        layer.u.assign(u)
        wu = np.dot(w, u)
        m = -1.0 + np.logaddexp(0.0, wu)
        u_seed = u + (m - wu) * w / np.linalg.norm(w)
        seed_violations += np.dot(w, u_seed) < -1.0 - 1e-9
        ours_violations += float(tf.reduce_sum(layer.w * layer.u_hat())) < -1.0 - 1e-9 * max(1.0, abs(wu))
    assert seed_violations > 50, seed_violations
    assert ours_violations == 0


def test_planar_layer_is_injective_along_w_where_the_constraint_bites():
    """With w.u << -1 the unconstrained map folds; the constrained one is strictly increasing along w."""
    layer = PlanarLayer(2, tf.float64)
    layer.w.assign([2.0, 0.0])
    layer.u.assign([-50.0, 0.0])  # w.u = -100
    t = tf.constant(np.linspace(-5, 5, 2001)[:, None] * np.array([[1.0, 0.0]]))
    y, log_det = layer.apply(t)
    assert np.all(np.diff(y.numpy()[:, 0]) > 0)
    assert np.all(np.isfinite(log_det.numpy()))


# ---------------------------------------------------------------- radial: beta > -alpha
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_radial_beta_greater_than_minus_alpha(dtype):
    rng = np.random.default_rng(2)
    layer = RadialLayer(2, dtype)
    x = tf.constant(rng.normal(size=(64, 2)) * 3, dtype)
    ab = np.concatenate([rng.normal(size=(500, 2)) * 5, rng.uniform(-30, 30, size=(500, 2)),
                         [[-30.0, -30.0], [30.0, -30.0], [-30.0, 30.0], [0.0, -30.0]]])
    for a, b in ab:
        layer.a.assign(a)
        layer.b.assign(b)
        alpha, beta, alpha_plus_beta = (float(t) for t in layer.alpha_beta())
        assert alpha > 0.0
        assert alpha_plus_beta > 0.0, (a, b)  # the form the layer computes with
        if dtype == tf.float64:  # in float32, -alpha + softplus(b) may round to -alpha for b < -17
            assert beta > -alpha, (a, b, alpha, beta)
        else:
            assert beta >= -alpha, (a, b, alpha, beta)
        np.testing.assert_allclose(alpha_plus_beta, alpha + beta, rtol=1e-6, atol=1e-6)
        _, log_det = layer.apply(x)
        assert np.all(np.isfinite(log_det.numpy())), (a, b)


def test_radial_gradient_is_finite_at_the_centre():
    layer = RadialLayer(2, tf.float64)
    x = tf.identity(layer.z0)[None, :]
    with tf.GradientTape() as tape:
        tape.watch(x)
        y, log_det = layer.apply(x)
        total = tf.reduce_sum(y) + tf.reduce_sum(log_det)
    grads = tape.gradient(total, [x] + list(layer.trainable_variables))
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)


# ---------------------------------------------------------------- log-determinants against autodiff
@pytest.mark.parametrize("name", ["planar", "radial"])
@pytest.mark.parametrize("dim", [1, 2, 5])
def test_layer_log_det_matches_autodiff_jacobian(name, dim):
    rng = np.random.default_rng(3)
    layer = LAYERS[name](dim, tf.float64)
    _randomise(layer, rng, scale=1.5)
    x = tf.constant(rng.normal(size=(16, dim)) * 2.0)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y, log_det = layer.apply(x)
    jac = tape.batch_jacobian(y, x).numpy()
    expected = np.linalg.slogdet(jac)[1]
    np.testing.assert_allclose(log_det.numpy(), expected, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- energies and reverse KL
def test_energies_known_values():
    z = tf.constant([[0.0, 0.0], [1.0, np.sin(np.pi / 2)], [2.0, 0.0]], tf.float64)
    np.testing.assert_allclose(energies.u2(z).numpy(), [0.0, 0.0, 0.5 * (np.sin(np.pi) / 0.4) ** 2], atol=1e-12)
    # U1 on the ring |z| = 2 at z1 = 2: only the mixture term remains
    u1 = energies.u1(tf.constant([[2.0, 0.0]], tf.float64)).numpy()[0]
    np.testing.assert_allclose(u1, -np.log(1.0 + np.exp(-0.5 * (4.0 / 0.6) ** 2)), rtol=1e-12)
    with pytest.raises(ValueError, match="accepted: u1, u2, u3, u4"):
        energies.energy("u5")
    with pytest.raises(ValueError, match="accepted: planar, radial"):
        energies.VariationalFlow("maf")


@pytest.mark.parametrize("name", ["planar", "radial"])
def test_variational_flow_log_prob_matches_change_of_variables(name):
    rng = np.random.default_rng(6)
    q = energies.VariationalFlow(name, num_layers=4, dtype="float64")
    _randomise(q, rng, scale=1.0)
    z = tf.random.stateless_normal([12, 2], seed=[7, 0], dtype=tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(z)
        x = z
        for layer in reversed(q.layers):  # Invert(f_1) is last: layers are listed data -> noise
            x, _ = layer.forward(x)
    jac = tape.batch_jacobian(x, z).numpy()
    x2, log_q = q.sample_and_log_prob(12, seed=7)
    np.testing.assert_allclose(x2.numpy(), x.numpy(), rtol=1e-12)
    expected = -0.5 * np.sum(z.numpy() ** 2, -1) - np.log(2 * np.pi) - np.linalg.slogdet(jac)[1]
    np.testing.assert_allclose(log_q.numpy(), expected, rtol=1e-9)


LOG_Z_U1 = 1.8775  # log of the integral of exp(-U1) over [-6, 6]^2 (1201^2 grid; U1 decays radially), nats


@pytest.mark.parametrize("name", ["planar", "radial"])
def test_reverse_kl_on_u1_decreases(name):
    _, losses = energies.fit_reverse_kl("u1", name, num_layers=8, steps=300, batch_size=256, learning_rate=1e-2)
    kl_start = losses[:20].mean() + LOG_Z_U1
    kl_end = losses[-20:].mean() + LOG_Z_U1
    # measured (seed 0, 8 layers, 300 steps): planar 3.36 -> 0.85 nats, radial 2.87 -> 1.17 nats
    assert kl_end < kl_start - 1.0, (kl_start, kl_end)
    assert kl_end < 1.5, kl_end
    assert kl_end > -0.1, "KL(q||p) is non-negative up to Monte-Carlo error"
