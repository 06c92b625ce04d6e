"""Figures of one trained cell: density heat maps (2-D), samples beside data, sample grids (images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _grid(lim: float, n: int = 200):
    xs = np.linspace(-lim, lim, n, dtype=np.float32)
    xx, yy = np.meshgrid(xs, xs)
    return xs, np.stack([xx.ravel(), yy.ravel()], axis=1)


def density_2d(flow, data: np.ndarray, true_log_density, path: Path, lim: float | None = None):
    """Learned density beside the truth (or the data histogram) on the same grid and colour scale."""
    import tensorflow as tf

    from flows.training import mean_log_prob

    lim = lim or float(np.ceil(np.percentile(np.abs(data), 99.5) * 1.15 + 1e-6))
    xs, pts = _grid(lim)
    learned = np.exp(mean_log_prob(flow, pts, batch_size=8192)).reshape(len(xs), len(xs))
    if true_log_density is not None:
        truth = np.exp(np.asarray(true_log_density(pts), dtype=np.float64)).reshape(len(xs), len(xs))
        truth_title = "true density"
    else:
        edges = np.linspace(-lim, lim, len(xs) + 1)
        truth, _, _ = np.histogram2d(data[:, 1], data[:, 0], bins=[edges, edges], density=True)
        truth_title = "data histogram"
    vmax = float(np.nanmax([np.nanmax(truth), np.nanmax(learned)]))
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), constrained_layout=True)
    for ax, img, title in ((axes[0], truth, truth_title), (axes[1], learned, "learned density")):
        im = ax.imshow(img, origin="lower", extent=[-lim, lim, -lim, lim], vmin=0, vmax=vmax, cmap="viridis")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.8, label="density")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    del tf


def samples_vs_data(flow, data: np.ndarray, path: Path, seed: int, dims=(0, 1), n: int = 2000):
    x = flow.sample(n, seed=seed).numpy()
    d = np.asarray(data[:n])
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True, constrained_layout=True)
    axes[0].scatter(d[:, dims[0]], d[:, dims[1]], s=2, alpha=0.4)
    axes[0].set_title("data (test split)")
    axes[1].scatter(x[:, dims[0]], x[:, dims[1]], s=2, alpha=0.4, color="tab:orange")
    axes[1].set_title(f"samples (seed {seed})")
    lim = float(np.percentile(np.abs(d[:, list(dims)]), 99.5) * 1.2)
    axes[0].set_xlim(-lim, lim)
    axes[0].set_ylim(-lim, lim)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def image_grid(images: np.ndarray, path: Path, title: str):
    n = int(np.ceil(np.sqrt(len(images))))
    h, w = images.shape[1:3]
    canvas = np.ones((n * (h + 1), n * (w + 1)))
    for i, img in enumerate(images):
        r, c = divmod(i, n)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = img[..., 0]
    fig, ax = plt.subplots(figsize=(4, 4), constrained_layout=True)
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis("off")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cell_figures(flow, splits, spec, transform, out: Path, seed: int = 0):
    """Write the figures that fit this cell's data kind into ``out``."""
    out = Path(out)
    test = np.asarray(splits.test[:20000])
    if spec.kind == "toy" and test.shape[1] == 2:
        true_ld = None
        try:
            from flows.datasets import toy

            true_ld = (lambda pts: toy.log_density(spec.name, pts)) if hasattr(toy, "log_density") else None
            if true_ld is not None:
                true_ld(np.zeros((1, 2), np.float32))
        except (NotImplementedError, KeyError, ValueError):
            true_ld = None
        density_2d(flow, test, true_ld, out / "density.png")
    if spec.kind in ("toy", "tabular") and flow.can_sample:
        samples_vs_data(flow, test, out / "samples.png", seed)
    if spec.kind == "image" and flow.can_sample:
        y = flow.sample(36, seed=seed, temperature=1.0).numpy()
        shape = tuple(spec.event_shape)
        alpha_s = 1.0 / (1.0 + np.exp(-y.reshape((-1,) + shape)))  # back from logit space to [0, 1]
        image_grid(np.clip(alpha_s, 0, 1), out / "samples.png", f"samples (seed {seed}, T=1.0)")
        image_grid(test[:36].astype(np.float32) / float(spec.levels - 1), out / "data.png", "test images")
    if not any(out.iterdir()):
        (out / "README.txt").write_text(f"no figure applies to flow '{flow.name}' on this data kind\n")
