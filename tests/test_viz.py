"""flows.viz and stages/overview.py: the figures are written, show what they claim, and bad input fails loudly."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import flows
from flows import viz
from flows.datasets import toy
from flows.training import TrainConfig, fit, set_seed


@pytest.fixture(scope="module")
def moons_flow():
    """A small Real NVP fitted briefly to moons (enough to move mass onto the two arcs)."""
    set_seed(0)
    x = toy.sample("moons", 3000, seed=0)
    flow = flows.build_flow("realnvp", event_shape=[2], num_layers=4, hidden_units=[32, 32])
    fit(flow, x[:2500], x[2500:], TrainConfig(steps=300, batch_size=256, learning_rate=3e-3, eval_every=300),
        log=lambda s: None)
    return flow, x[2500:]


def test_layer_frames_interpolate_between_layers(moons_flow):
    flow, _ = moons_flow
    frames, layer = viz.layer_frames(flow, n=300, seed=1, frames_per_layer=4)
    states = [s.numpy() for s in flow.forward_trajectory(flow.sample_base(300, seed=1))]
    k = len(flow.layers)
    assert frames.shape == (4 * k + 1, 300, 2) and layer[0] == 0 and layer[-1] == k
    np.testing.assert_allclose(frames[0], states[0], atol=1e-6)    # base samples first
    np.testing.assert_allclose(frames[-1], states[-1], atol=1e-5)  # the flow's samples last
    np.testing.assert_allclose(frames[4 * 2], states[2], atol=1e-5)  # every 4th frame is a layer output
    np.testing.assert_allclose(frames[4 * 2 + 2], 0.5 * (states[2] + states[3]), atol=1e-5)  # halfway between
    np.testing.assert_allclose(frames[-1], flow.sample(300, seed=1).numpy(), atol=1e-4)


def test_animate_layers_writes_a_gif_with_every_frame(moons_flow, tmp_path):
    flow, test = moons_flow
    path = tmp_path / "layers.gif"
    n_frames = viz.animate_layers(flow, path, n=400, seed=0, frames_per_layer=3, hold=2, data=test)
    k = len(flow.layers)
    assert n_frames == 3 * k + 1 + 2
    with Image.open(path) as im:
        assert im.format == "GIF" and im.is_animated
        # Pillow merges identical consecutive frames (the held end): every moving frame is kept
        assert im.n_frames >= 3 * k + 1
        im.seek(0)
        first = np.asarray(im.convert("L"), dtype=float)
        im.seek(im.n_frames - 1)
        last = np.asarray(im.convert("L"), dtype=float)
    assert first.shape == last.shape and np.abs(first - last).mean() > 1.0  # the points moved


def test_animate_layers_rejects_bad_input(tmp_path):
    flow = flows.build_flow("maf", event_shape=[3], num_layers=1, hidden_units=[8])
    with pytest.raises(ValueError, match="event_shape"):
        viz.animate_layers(flow, tmp_path / "x.gif")
    flow2 = flows.build_flow("maf", event_shape=[2], num_layers=1, hidden_units=[8])
    with pytest.raises(ValueError, match="frames_per_layer"):
        viz.layer_frames(flow2, frames_per_layer=0)


def test_flow_density_integrates_to_one_and_fits_the_truth(moons_flow):
    flow, _ = moons_flow
    xs, pts = viz.grid_points(4.0, 100)
    q = viz.flow_density(flow, 4.0, 100)
    mass = q.sum() * (xs[1] - xs[0]) ** 2
    assert 0.9 < mass < 1.05, mass
    p = np.exp(toy.log_density("moons", pts)).reshape(100, 100)
    base = np.exp(-0.5 * (np.add.outer(xs**2, xs**2))) / (2 * np.pi)  # what an untrained flow would give
    assert np.abs(q - p).mean() < 0.6 * np.abs(base - p).mean()


def test_energy_targets_and_normaliser():
    # U1 is normalisable: log Z ~ 1.8775 nats (flows.energies); the wall does not change it
    assert viz.log_normaliser("u1", wall=None) == pytest.approx(1.8775, abs=2e-3)
    assert viz.log_normaliser("u1") == pytest.approx(1.8775, abs=2e-3)
    z = tf.constant([[0.5, 0.3], [6.0, 0.0]], tf.float64)
    u, w = viz.confined_energy("u2", wall=None)(z).numpy(), viz.confined_energy("u2")(z).numpy()
    assert u[0] == w[0] and w[1] == pytest.approx(u[1] + 0.5 * (2.0 / 0.1) ** 2)
    dens = viz.energy_density("u3", 4.0, 100)
    xs, _ = viz.grid_points(4.0, 100)
    assert dens.sum() * (xs[1] - xs[0]) ** 2 == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="u1"):
        viz.energy_density("u9")
    with pytest.raises(ValueError, match="wall"):
        viz.confined_energy("u1", wall=-1.0)


def test_energy_fit_reduces_kl_and_plots(tmp_path):
    fits = viz.energy_fits(energies=("u1", "u2"), flow_names=("planar",), num_layers=4, steps=120,
                           batch_size=128, seed=0)
    fits[("radial", "u1")] = viz.fit_energy("u1", "radial", num_layers=4, steps=120, batch_size=128, seed=0)
    for key, (q, losses) in fits.items():
        assert len(q.layers) == 4 and len(losses) == 120
        assert losses[-12:].mean() < losses[:12].mean() - 0.3, key  # the fit made progress
    kl = viz.plot_energy_fits(fits, tmp_path / "energies.png", n=60, num_samples=20000)
    assert set(kl) == set(fits)
    assert all(-0.1 < v < 5.0 for v in kl.values()), kl  # KL(q || p) >= 0 up to Monte-Carlo noise
    with Image.open(tmp_path / "energies.png") as im:
        assert im.size[0] > 300 and im.size[1] > 300


def test_toy_overview_grid(moons_flow, tmp_path):
    flow, _ = moons_flow
    untrained = flows.build_flow("realnvp", event_shape=[2], num_layers=2, hidden_units=[8])
    untrained.initialize(tf.zeros([4, 2]))
    scores = viz.toy_overview({("fitted", "moons"): flow, ("untrained", "moons"): untrained}, ["moons"],
                              tmp_path / "overview.png", lim=3.0, n=80)
    assert set(scores) == {("fitted", "moons"), ("untrained", "moons")}
    assert scores[("fitted", "moons")] < scores[("untrained", "moons")]
    assert (tmp_path / "overview.png").stat().st_size > 10000
    with pytest.raises(ValueError, match="datasets"):
        viz.toy_overview({}, [], tmp_path / "none.png")


def test_overview_stage_json_names(tmp_path):
    """The stage's toy-set filter keeps only 2-D toy sets of the grid."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from stages import overview

    grid = {"grid": {"datasets": ["moons", "power", "digits", "8gaussians"]}}
    assert overview.toy_sets(grid) == ["moons", "8gaussians"]
    assert json.loads(json.dumps(overview.parse_args([]).__dict__))["out"] == "plots/overview"


def test_overview_stage_without_toy_sets_logs_to_mlflow(tmp_path, monkeypatch):
    """The stage end to end on a grid with no 2-D toy set: energies + json + README, one MLflow run "figures"."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from stages import overview

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["grid"] = {"flows": ["maf"], "datasets": ["power"]}
    params["dataset"] = "power"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # artifacts go to <DVC_ROOT>/mlartifacts: keep them in tmp
    overview.main(["--energy-layers", "1", "--energy-steps", "3"])
    out = tmp_path / "plots" / "overview"
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "energies.png", "overview.json"]
    summary = json.loads((out / "overview.json").read_text())
    assert summary["toy_sets"] == [] and len(summary["energy_fits"]["kl_q_p_nats"]) == 8

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_name for r in runs] == ["figures"] and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["kind"] == "figures" and "energy_kl.planar.u1" in runs[0].data.metrics
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id, "figures")} >= {"figures/energies.png"}
    assert list((tmp_path / "mlartifacts").glob("*/artifacts/figures/energies.png"))
    with pytest.raises(Exception, match="energy-layers"):
        overview.main(["--energy-layers", "0"])


# --------------------------------------------------------------------------------------------- image grids
@pytest.mark.parametrize("name, shape, levels, flow_name", [
    ("mnist", (28, 28, 1), 256, "glow"),     # the MNIST layout, greyscale
    ("celeba32", (32, 32, 3), 256, "realnvp"),  # the CelebA 32x32 layout, RGB
    ("digits", (8, 8, 1), 17, "maf"),          # a vector flow sees the image flattened
])
def test_image_sample_grid_beside_real_images(tmp_path, name, shape, levels, flow_name):
    """samples.png holds three panels (T = 1, T = 0.7, real test images) on one scale, greyscale or RGB."""
    from flows.datasets import DATASETS
    from flows.experiment import model_for_data
    from stages import figures

    spec = DATASETS[name]
    assert tuple(spec.event_shape) == shape and spec.levels == levels
    hp = {"glow": {"num_layers": 1, "num_scales": 1, "num_filters": 8},
          "realnvp": {"num_layers": 2, "num_scales": 1, "num_filters": 8, "num_res_blocks": 1},
          "maf": {"num_layers": 1, "hidden_units": [16]}}[flow_name]
    kind = "image" if "image" in flows.FLOWS[flow_name].kinds else "vector"
    hp = {k: v for k, v in hp.items() if k in flows.FLOWS[flow_name].options(kind)}
    flow, transform, _ = model_for_data(flow_name, hp, "image", shape, levels, 0.05)
    pixels = np.random.default_rng(0).integers(0, levels, size=(40,) + shape).astype(np.uint8)
    y, _ = transform(tf.constant(pixels), tf.constant([1, 2], tf.int64))
    flow.initialize(y)
    # the display inverse undoes the dequantisation, the alpha squeeze and the logit exactly
    np.testing.assert_array_equal(transform.to_pixels(y.numpy().reshape((-1,) + shape)), pixels)
    path = tmp_path / "samples.png"
    figures.image_samples(flow, pixels, spec, transform, path, seed=3)
    img = np.asarray(Image.open(path).convert("RGB"), np.float64)
    assert img.shape[1] > 2.5 * img.shape[0], "three panels side by side"
    colour = np.abs(img - img.mean(axis=2, keepdims=True)).max()
    assert (colour > 30) == (shape[-1] == 3), f"RGB only for colour images (max channel spread {colour})"
    again = tmp_path / "again.png"
    figures.image_samples(flow, pixels, spec, transform, again, seed=3)
    assert again.read_bytes() == path.read_bytes(), "a fixed seed gives the same grid"


def test_image_tiles_reject_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="images must be"):
        viz.image_grid(np.zeros((4, 8, 8, 2)), tmp_path / "x.png", "two channels")
