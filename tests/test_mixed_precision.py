"""Mixed precision is real, not a flag that does nothing: under Keras' ``mixed_float16`` policy the conditioner
networks compute in float16 (float32 variables), densities and log-determinants stay float32, and a loss-scaled
fit trains to about the same loss as float32."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import flows
from flows.training import TrainConfig, fit, set_seed


@pytest.fixture()
def mixed_policy():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _dense_layers(flow):
    return [v for v in flow.submodules if isinstance(v, keras.layers.Dense)]


@pytest.mark.parametrize("name", ["realnvp", "nsf"])
def test_mixed_policy_runs_hidden_layers_in_float16(mixed_policy, name):
    flow = flows.build_flow(name, [4], num_layers=2, hidden_units=[16, 16])
    x = tf.random.stateless_normal([64, 4], seed=[0, 1])
    lp = flow.log_prob(x)
    dense = _dense_layers(flow)
    assert dense, "no Dense layers found"
    compute = [d.compute_dtype for d in dense]
    assert "float16" in compute and compute.count("float32") == len(dense) // 3, compute  # 2 hidden + 1 output
    assert all(v.dtype == tf.float32 for v in flow.trainable_variables)
    assert lp.dtype == tf.float32 and np.all(np.isfinite(lp.numpy()))
    z, ldj = flow.inverse(x)
    assert z.dtype == tf.float32 and ldj.dtype == tf.float32


def test_default_policy_keeps_float32_everywhere():
    flow = flows.build_flow("realnvp", [4], num_layers=2, hidden_units=[16, 16])
    flow.log_prob(tf.zeros([2, 4]))
    assert {d.compute_dtype for d in _dense_layers(flow)} == {"float32"}


def test_loss_scaled_float16_training_matches_float32(mixed_policy):
    x = (np.random.default_rng(0).normal(size=(3000, 4)) * [1.0, 2.0, 0.5, 1.0]).astype(np.float32)
    cfg = dict(steps=150, eval_every=150, batch_size=256, learning_rate=3e-3)
    set_seed(0)
    half = flows.build_flow("realnvp", [4], num_layers=2, hidden_units=[32, 32])
    h_half = fit(half, x[:2500], x[2500:], TrainConfig(mixed_precision=True, **cfg), log=lambda s: None)
    keras.mixed_precision.set_global_policy("float32")
    set_seed(0)
    full = flows.build_flow("realnvp", [4], num_layers=2, hidden_units=[32, 32])
    h_full = fit(full, x[:2500], x[2500:], TrainConfig(**cfg), log=lambda s: None)
    start = h_full.val_loss[0] if len(h_full.val_loss) > 1 else None
    assert np.isfinite(h_half.val_loss[-1])
    assert abs(h_half.val_loss[-1] - h_full.val_loss[-1]) < 0.05, (h_half.val_loss, h_full.val_loss, start)
    assert any(d.compute_dtype == "float16" for d in _dense_layers(half))
