"""Glow's blocks (ActNorm, LULinear, 1x1 conv), image Real NVP, NAF and FFJORD, checked numerically in float64.

The generic checks of every registered flow (log-det against autodiff, round trip, graph agreement, dtypes,
extreme inputs, density on a grid, ...) are in test_battery_flows.py; this file keeps the family-specific ones.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import flows  # noqa: E402
from flows.continuous import ODEFlow  # noqa: E402
from flows.glow import ActNorm, Invertible1x1Conv, LULinear  # noqa: E402
from flows.image import Squeeze, checkerboard_mask, squeeze, unsqueeze  # noqa: E402
from flows.neural import dsf, dsf_invert  # noqa: E402
from test_battery_flows import _autodiff_log_det  # noqa: E402  (the battery's autodiff log-det)

F64 = tf.float64


def _x(shape, seed=0, scale=1.0, shift=0.0):
    return tf.constant(np.random.default_rng(seed).normal(size=shape) * scale + shift, F64)


def _perturb(module, seed=0, scale=0.1):
    """Move every trainable variable off its (often identity) initialisation, so no check passes trivially."""
    rng = np.random.default_rng(seed)
    for v in module.trainable_variables:
        v.assign_add(rng.normal(0.0, scale, size=v.shape))



# ------------------------------------------------------------------------------------------ ActNorm
@pytest.mark.parametrize("shape", [(256, 3), (32, 5, 4, 3)])
def test_actnorm_initialisation_whitens_each_channel(shape):
    layer = ActNorm(3, F64)
    x = _x(shape, seed=3, scale=np.array([0.5, 2.0, 7.0]), shift=np.array([-3.0, 0.0, 10.0]))
    y = layer.initialize(x).numpy().reshape(-1, 3)
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-10)
    np.testing.assert_allclose(y.std(0), 1.0, atol=1e-5)  # eps = 1e-6 on std
    assert bool(layer.initialized.numpy())


def test_actnorm_is_not_reinitialised_after_restore(tmp_path):
    layer = ActNorm(3, F64)
    layer.initialize(_x((64, 3), seed=4, scale=3.0, shift=1.0))
    loc, log_scale = layer.loc.numpy().copy(), layer.log_scale.numpy().copy()
    layer.initialize(_x((64, 3), seed=5, scale=0.1, shift=-9.0))  # a second call is a no-op
    np.testing.assert_array_equal(layer.loc.numpy(), loc)
    path = tf.train.Checkpoint(layer=layer).write(str(tmp_path / "ckpt"))

    fresh = ActNorm(3, F64)
    tf.train.Checkpoint(layer=fresh).read(path).assert_existing_objects_matched()
    assert bool(fresh.initialized.numpy())
    fresh.initialize(_x((64, 3), seed=6, scale=0.1, shift=-9.0))  # e.g. a training script re-running init
    np.testing.assert_array_equal(fresh.loc.numpy(), loc)
    np.testing.assert_array_equal(fresh.log_scale.numpy(), log_scale)


def test_actnorm_evaluation_never_uses_batch_statistics():
    layer = ActNorm(3, F64)
    layer.initialize(_x((64, 3), seed=7))
    batch = _x((16, 3), seed=8, scale=5.0, shift=4.0)
    z, ldj = layer.inverse(batch)
    expected = (batch.numpy() - layer.loc.numpy()) * np.exp(-layer.log_scale.numpy())
    np.testing.assert_allclose(z.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(ldj.numpy(), -layer.log_scale.numpy().sum())
    assert np.abs(z.numpy().mean(0)).max() > 1.0  # the shifted batch is not re-whitened
    np.testing.assert_allclose(layer.inverse(batch[:1])[0].numpy(), z.numpy()[:1], rtol=1e-12)


# ------------------------------------------------------------------------------------------ LU layers
def test_lulinear_log_det_is_log_abs_det_w_and_round_trip():
    layer = LULinear(5, F64, seed=3)
    _perturb(layer, seed=3, scale=0.3)
    x = _x((4, 5), seed=11)
    z, ldj = layer.inverse(x)
    w = layer.weight().numpy()
    np.testing.assert_allclose(z.numpy(), x.numpy() @ w.T, rtol=1e-12)
    np.testing.assert_allclose(ldj.numpy(), np.linalg.slogdet(w)[1], rtol=1e-10)
    assert abs(np.linalg.slogdet(w)[1]) > 0.05  # perturbed: not volume preserving
    np.testing.assert_allclose(ldj.numpy(), _autodiff_log_det(lambda t: layer.inverse(t)[0], x), rtol=1e-10)
    x2, fldj = layer.forward(z)
    np.testing.assert_allclose(x2.numpy(), x.numpy(), atol=1e-10)
    np.testing.assert_allclose(fldj.numpy(), -ldj.numpy(), rtol=1e-12)


def test_invertible_1x1_conv_log_det_and_round_trip():
    layer = Invertible1x1Conv(4, F64, seed=4)
    _perturb(layer, seed=4, scale=0.3)
    x = _x((2, 3, 2, 4), seed=12)
    z, ldj = layer.inverse(x)
    np.testing.assert_allclose(ldj.numpy(), 6 * np.linalg.slogdet(layer.weight().numpy())[1], rtol=1e-10)
    np.testing.assert_allclose(ldj.numpy(), _autodiff_log_det(lambda t: layer.inverse(t)[0], x), rtol=1e-10)
    np.testing.assert_allclose(layer.forward(z)[0].numpy(), x.numpy(), atol=1e-10)


# ------------------------------------------------------------------------------------------ image blocks
def test_squeeze_masks_and_multiscale_squeeze():
    x = _x((2, 4, 6, 3), seed=13)
    np.testing.assert_array_equal(unsqueeze(squeeze(x)).numpy(), x.numpy())
    assert squeeze(x).shape == (2, 2, 3, 12)
    m0, m1 = checkerboard_mask(4, 6, 0, F64).numpy(), checkerboard_mask(4, 6, 1, F64).numpy()
    np.testing.assert_array_equal(m0 + m1, 1.0)
    assert m0.sum() == 12 and m0[0, 0, 0, 0] == 1 and m0[0, 0, 1, 0] == 0
    layer = Squeeze(2, F64)  # 2 active channels, 1 factored out: the active ones stay first
    z, ldj = layer.inverse(x)
    np.testing.assert_array_equal(z.numpy()[..., :8], squeeze(x[..., :2]).numpy())
    np.testing.assert_array_equal(layer.forward(z)[0].numpy(), x.numpy())
    np.testing.assert_array_equal(ldj.numpy(), 0.0)


def test_multiscale_factored_out_channels_pass_through():
    f = flows.build_flow("realnvp", [4, 4, 1], "float64", num_layers=2, num_filters=8, num_res_blocks=1)
    _perturb(f, seed=5)
    x = _x((2, 4, 4, 1), seed=14)
    traj = f.inverse_trajectory(x)
    # after the first scale's squeeze (layer 3) the state is [2, 2, 2, 4]; the last 2 channels are factored out
    # after the channel couplings (layers 4..6) and must not change through the final scale's couplings
    factored = traj[7].numpy()[..., 2:]
    for t in traj[8:-1]:
        np.testing.assert_array_equal(t.numpy()[..., 2:], factored)
    assert traj[-1].shape == x.shape


# ------------------------------------------------------------------------------------------ NAF and FFJORD details
def test_dsf_transformer_is_increasing_and_its_inverse_is_exact():
    rng = np.random.default_rng(20)
    x = tf.constant(np.linspace(-30, 30, 601)[:, None], F64)
    log_a, b, log_w = (tf.constant(rng.normal(size=(1, 1, 5)), F64) for _ in range(3))
    log_w = tf.nn.log_softmax(log_w)
    y, log_dy = dsf(x, log_a, b, log_w)
    assert np.all(np.diff(y.numpy()[:, 0]) > 0)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y2 = dsf(x, log_a, b, log_w)[0]
    np.testing.assert_allclose(np.log(tape.gradient(y2, x).numpy()), log_dy.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(dsf_invert(y, log_a, b, log_w).numpy(), x.numpy(), atol=1e-8)


def test_ffjord_hutchinson_is_unbiased_and_evaluation_exact():
    layer = ODEFlow(12, [16], F64, trace="hutchinson", num_steps=2)
    _perturb(layer, seed=7, scale=0.2)
    x = _x((2, 12), seed=21)
    exact = layer.inverse(x, training=False)[1].numpy()
    np.testing.assert_array_equal(layer.inverse(x, training=False)[1].numpy(), exact)  # deterministic
    tf.random.set_seed(0)
    draws = np.stack([layer.inverse(x, training=True)[1].numpy() for _ in range(200)])
    assert draws.std(0).min() > 0  # the estimate is stochastic ...
    se = draws.std(0) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(0) - exact) < 4 * se + 1e-3), (draws.mean(0), exact)  # ... and unbiased
    with pytest.raises(ValueError, match="accepted: auto, exact, hutchinson"):
        flows.build_flow("ffjord", [2], trace="stochastic")


def test_image_shape_errors_name_the_fix():
    with pytest.raises(ValueError, match="divisible"):
        flows.build_flow("glow", [6, 6, 1], num_scales=2)
    with pytest.raises(flows.OptionsError, match=r"got event shape \[8, 8\]"):
        flows.build_flow("realnvp", [8, 8])
