"""Figures of flows with matplotlib alone: heat maps, samples, the layer animation, energy fits, overviews.

Nothing here needs DVC or MLflow; every function takes a :class:`flows.Flow` (or arrays) and a path.
Heat maps show densities (probability per unit area, exp of log-densities in nats); losses are in nats.

Example::

    >>> from flows import viz
    >>> viz.animate_layers(trained_flow, "layers.gif", n=2000, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display
import matplotlib.pyplot as plt  # noqa: E402

__all__ = [
    "grid_points", "auto_lim", "flow_density", "density_2d", "samples_vs_data", "image_grid", "image_panels",
    "layer_frames",
    "animate_layers", "energy_density", "sample_histogram", "confined_energy", "fit_energy", "log_normaliser",
    "energy_fits", "plot_energy_fits", "toy_overview",
]


# --------------------------------------------------------------------------------------------- grids
def grid_points(lim: float, n: int = 200):
    """``n`` x ``n`` points on ``[-lim, lim]^2``: returns (axis values [n], points [n*n, 2] float32, row = y)."""
    if not lim > 0 or int(n) < 2:
        raise ValueError(f"grid_points: lim = {lim!r} must be > 0 and n = {n!r} at least 2")
    xs = np.linspace(-lim, lim, int(n), dtype=np.float32)
    xx, yy = np.meshgrid(xs, xs)
    return xs, np.stack([xx.ravel(), yy.ravel()], axis=1)


def auto_lim(data: np.ndarray) -> float:
    """Half-width of a square box holding the central 99% of the first two columns of ``data``, plus 15%."""
    return float(np.ceil(np.percentile(np.abs(np.asarray(data)[:, :2]), 99.5) * 1.15 + 1e-6))


def flow_density(flow, lim: float, n: int = 200, batch_size: int = 8192) -> np.ndarray:
    """The flow's density exp(log p(x)) on the ``n`` x ``n`` grid of :func:`grid_points` (rows = y), float64."""
    from .training import mean_log_prob

    if tuple(flow.event_shape) != (2,):
        raise ValueError(f"flow_density needs a 2-D flow, got event_shape {tuple(flow.event_shape)}")
    xs, pts = grid_points(lim, n)
    lp = np.asarray(mean_log_prob(flow, pts.astype(flow.dtype.as_numpy_dtype), batch_size=batch_size), np.float64)
    return np.exp(np.where(np.isfinite(lp), lp, -np.inf)).reshape(len(xs), len(xs))


def _heat(ax, img, lim, vmax, title=None):
    im = ax.imshow(img, origin="lower", extent=[-lim, lim, -lim, lim], vmin=0, vmax=vmax, cmap="viridis",
                   interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


# --------------------------------------------------------------------------------------------- one cell
def density_2d(flow, data: np.ndarray, true_log_density: Callable | None, path, lim: float | None = None,
               n: int = 200):
    """Learned density beside the truth (or the data histogram when no truth) on one grid and colour scale."""
    lim = lim or auto_lim(data)
    xs, pts = grid_points(lim, n)
    learned = flow_density(flow, lim, n)
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
        im = _heat(ax, img, lim, vmax, title)
    fig.colorbar(im, ax=axes, shrink=0.8, label="density")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def samples_vs_data(flow, data: np.ndarray, path, seed: int, dims=(0, 1), n: int = 2000):
    """Scatter of ``n`` test rows beside ``n`` samples of the flow (dimensions ``dims``), same axes."""
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


def _tile(images: np.ndarray, cols: int | None = None) -> np.ndarray:
    """Images [n, h, w, c] (c = 1 or 3, values in [0, 1]) tiled on a white canvas with 1-pixel gaps."""
    images = np.asarray(images, np.float64)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [n, h, w] or [n, h, w, 1 or 3], got shape {images.shape}")
    n = len(images)
    cols = int(cols or np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    h, w, c = images.shape[1:]
    canvas = np.ones((rows * (h + 1) - 1, cols * (w + 1) - 1, c))
    for i, img in enumerate(np.clip(images, 0.0, 1.0)):
        r, k = divmod(i, cols)
        canvas[r * (h + 1): r * (h + 1) + h, k * (w + 1): k * (w + 1) + w] = img
    return canvas[..., 0] if c == 1 else canvas


def image_grid(images: np.ndarray, path, title: str):
    """A square grid of images [n, h, w, 1 or 3] with values in [0, 1] (greyscale or RGB)."""
    image_panels([(images, title)], path)


def image_panels(panels: Sequence, path, suptitle: str | None = None):
    """Grids side by side, e.g. model samples beside real images: ``panels`` is [(images [n,h,w,c], title), ...]
    with values in [0, 1]; every panel uses the same grey/colour scale."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3), constrained_layout=True, squeeze=False)
    for ax, (images, title) in zip(axes[0], panels):
        canvas = _tile(images)
        ax.imshow(canvas, cmap="gray" if canvas.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- animation
def layer_frames(flow, n: int = 2000, seed: int = 0, frames_per_layer: int = 8):
    """Base samples pushed through each layer, with straight-line interpolation between layers.

    With ``s_0 = z`` and ``s_k`` the samples after the k-th layer (noise -> data, K layers), frame
    ``k * F + j`` shows ``(1 - j/F) s_k + (j/F) s_{k+1}`` for j = 0..F-1, and the last frame is ``s_K = x``.
    Returns (frames [K*F + 1, n, 2] float64, layer index of each frame in 0..K).
    """
    if int(frames_per_layer) < 1:
        raise ValueError(f"frames_per_layer = {frames_per_layer!r} must be a positive integer")
    if tuple(flow.event_shape) != (2,):
        raise ValueError(f"layer_frames needs a 2-D flow, got event_shape {tuple(flow.event_shape)}")
    states = [np.asarray(s, np.float64) for s in flow.forward_trajectory(flow.sample_base(n, seed=seed))]
    f = int(frames_per_layer)
    frames, layer = [], []
    for k in range(len(states) - 1):
        for j in range(f):
            t = j / f
            frames.append((1.0 - t) * states[k] + t * states[k + 1])
            layer.append(k)
    frames.append(states[-1])
    layer.append(len(states) - 1)
    return np.stack(frames), np.asarray(layer)


def animate_layers(flow, path, n: int = 2000, seed: int = 0, frames_per_layer: int = 8, fps: int = 12,
                   hold: int = 12, lim: float | None = None, data: np.ndarray | None = None, title: str | None = None):
    """Write a GIF of base samples moving through each layer of ``flow`` until they match the target.

    Axes are fixed over the whole animation: half-width from the 99th percentile of |coordinates| over every
    frame, kept between ``lim`` and ``2 * lim`` when ``lim`` is given; points are coloured by their base z1; the
    title says which layer is being applied ("layer k of K"); ``hold`` extra frames repeat the final samples.
    ``data`` (optional) is drawn faintly in grey on every frame as the target.  Returns the number of frames
    handed to the writer (Pillow merges identical consecutive ones, so the held end becomes one long frame).
    """
    from matplotlib.animation import FuncAnimation, PillowWriter

    frames, layer = layer_frames(flow, n, seed, frames_per_layer)
    num_layers = int(layer[-1])
    finite = frames[np.isfinite(frames).all(-1)]
    auto = float(np.percentile(np.abs(finite), 99.0) * 1.1) if len(finite) else 4.0
    lim = auto if lim is None else min(max(float(lim), auto), 2.0 * float(lim))
    seq = list(range(len(frames))) + [len(frames) - 1] * int(hold)
    fig, ax = plt.subplots(figsize=(4.2, 4.2), constrained_layout=True)
    if data is not None:
        d = np.asarray(data)[:n]
        ax.scatter(d[:, 0], d[:, 1], s=1, color="0.88", zorder=0)
    scat = ax.scatter(frames[0][:, 0], frames[0][:, 1], s=2, alpha=0.7, c=frames[0][:, 0], cmap="plasma")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    head = f"{title}: " if title else ""
    txt = ax.set_title("")

    def draw(i):
        scat.set_offsets(frames[i])
        k = layer[i]
        if k == num_layers:
            txt.set_text(f"{head}samples after all {num_layers} layers")
        else:
            txt.set_text(f"{head}layer {k + 1} of {num_layers}" if k or i else f"{head}base samples z ~ N(0, I)")
        return scat, txt

    anim = FuncAnimation(fig, draw, frames=seq, blit=False)
    anim.save(str(path), writer=PillowWriter(fps=int(fps)), dpi=70)
    plt.close(fig)
    return len(seq)


# --------------------------------------------------------------------------------------------- energies
def energy_density(name: str, lim: float = 4.0, n: int = 200) -> np.ndarray:
    """exp(-U(z)) of energy ``name`` normalised to integrate to 1 over the box [-lim, lim]^2 (rows = z2)."""
    import tensorflow as tf

    from .energies import energy

    xs, pts = grid_points(lim, n)
    u = energy(name)(tf.constant(pts, tf.float64)).numpy()
    p = np.exp(-(u - u.min()))
    cell = (xs[1] - xs[0]) ** 2
    return (p / (p.sum() * cell)).reshape(len(xs), len(xs))


def sample_histogram(samples: np.ndarray, lim: float = 4.0, n: int = 200) -> np.ndarray:
    """Density histogram of 2-D samples on the grid of :func:`grid_points` (rows = y), over the box only."""
    s = np.asarray(samples, np.float64)
    s = s[np.isfinite(s).all(1)]
    edges = np.linspace(-lim, lim, int(n) + 1)
    h, _, _ = np.histogram2d(s[:, 1], s[:, 0], bins=[edges, edges])
    total = max(h.sum(), 1.0)
    return h / (total * (edges[1] - edges[0]) ** 2)


def confined_energy(name: str, wall: float | None = 4.0):
    """U(z) + W(z) with W(z) = 1/2 (max(0, |z1| - wall) / 0.1)^2: the energy confined to |z1| <= wall.

    U2, U3 and U4 do not grow along z1, so exp(-U) has infinite mass and reverse KL keeps spreading q along z1
    for as long as one trains (away from the plotted box).  The soft wall makes the target normalisable and
    leaves it unchanged inside the box that the figure shows; ``wall=None`` gives U itself.
    """
    import tensorflow as tf

    from .energies import energy

    U = energy(name)
    if wall is None:
        return U
    if not float(wall) > 0:
        raise ValueError(f"wall = {wall!r} must be a positive number (half-width of the box in z1) or None")

    def confined(z):
        excess = tf.nn.relu(tf.abs(z[..., 0]) - tf.cast(wall, z.dtype)) / tf.cast(0.1, z.dtype)
        return U(z) + 0.5 * tf.square(excess)

    return confined


def fit_energy(name: str, flow_name: str = "planar", num_layers: int = 16, steps: int = 500, batch_size: int = 256,
               learning_rate: float = 1e-2, anneal_steps: int = 0, seed: int = 0, wall: float | None = 4.0):
    """Reverse-KL fit of a planar / radial q to exp(-U - W) (see :func:`confined_energy`); returns (q, losses).

    :func:`flows.energies.fit_reverse_kl` with the walled target: Adam on E_q[log q(x) + beta_t (U + W)(x)],
    beta_t = min(1, 0.01 + t / anneal_steps) when ``anneal_steps > 0`` (the paper's annealing), else 1;
    ``losses[t]`` is the un-annealed E_q[log q + U + W] = KL(q || p) - log Z in nats on step t's batch.
    """
    from .energies import fit_reverse_kl

    return fit_reverse_kl(confined_energy(name, wall), flow_name, num_layers, steps, batch_size, learning_rate,
                          anneal_steps, seed)


def log_normaliser(name: str, wall: float | None = 4.0, lim: float = 6.0, n: int = 1201) -> float:
    """log Z = log of the integral of exp(-(U + W)) (nats) by the midpoint rule on [-lim, lim]^2 (float64).

    With the wall at 4 the mass beyond |z| = 6 is negligible for U1..U4; without it U2..U4 have no finite Z
    and the value is only that of the box.
    """
    import tensorflow as tf

    h = 2.0 * lim / n
    xs = -lim + h * (np.arange(n) + 0.5)
    xx, yy = np.meshgrid(xs, xs)
    pts = tf.constant(np.stack([xx.ravel(), yy.ravel()], 1), tf.float64)
    neg_u = -confined_energy(name, wall)(pts).numpy()
    top = neg_u.max()
    return float(top + np.log(np.exp(neg_u - top).sum() * h * h))


def energy_fits(energies: Sequence[str] = ("u1", "u2", "u3", "u4"), flow_names: Sequence[str] = ("planar", "radial"),
                num_layers: int = 16, steps: int = 500, batch_size: int = 256, learning_rate: float = 1e-2,
                anneal_steps: int = 0, seed: int = 0, wall: float | None = 4.0) -> dict:
    """Fit q (planar / radial, K = ``num_layers``) to every energy with :func:`fit_energy`.

    Returns {(flow, energy): (q, losses)}.
    """
    return {(f, e): fit_energy(e, f, num_layers=num_layers, steps=steps, batch_size=batch_size,
                               learning_rate=learning_rate, anneal_steps=anneal_steps, seed=seed, wall=wall)
            for f in flow_names for e in energies}


def plot_energy_fits(fits: Mapping, path, lim: float = 4.0, n: int = 120, num_samples: int = 100_000,
                     seed: int = 0, wall: float | None = 4.0) -> dict:
    """Rezende & Mohamed (2015), Figure 3: rows = true exp(-U) and the fitted q of each flow, columns = U1..U4.

    Paper: "Variational Inference with Normalizing Flows", D. J. Rezende and S. Mohamed, 2015,
    https://arxiv.org/abs/1505.05770 (section 6.1).

    q is drawn as a histogram of ``num_samples`` samples (a planar / radial q has no density at arbitrary
    points, only at its own samples).  Each column shares one colour scale, densities normalised over the box.
    Returns {(flow, energy): KL(q || p) in nats}: the mean of the last 10% of steps of KL(q || p) - log Z,
    plus log Z of the (walled, ``wall``) target from :func:`log_normaliser`.
    """
    energies = list(dict.fromkeys(e for _, e in fits))
    flow_names = list(dict.fromkeys(f for f, _ in fits))
    truth = {e: energy_density(e, lim, n) for e in energies}
    hists = {key: sample_histogram(q.sample(num_samples, seed=seed).numpy(), lim, n) for key, (q, _) in fits.items()}
    log_z = {e: log_normaliser(e, wall) for e in energies}
    final = {(f, e): float(np.mean(losses[-max(1, len(losses) // 10):])) + log_z[e]
             for (f, e), (_, losses) in fits.items()}
    rows = 1 + len(flow_names)
    fig, axes = plt.subplots(rows, len(energies), figsize=(2.3 * len(energies), 2.3 * rows), squeeze=False,
                             constrained_layout=True)
    for j, e in enumerate(energies):
        vmax = max([truth[e].max()] + [hists[(f, e)].max() for f in flow_names if (f, e) in hists])
        _heat(axes[0, j], truth[e], lim, vmax, f"exp(-{e.upper()})")
        for i, f in enumerate(flow_names, start=1):
            if (f, e) in hists:
                k = len(fits[(f, e)][0].layers)
                _heat(axes[i, j], hists[(f, e)], lim, vmax, f"{f} K={k}: KL {final[(f, e)]:.2f} nats")
            else:
                axes[i, j].axis("off")
    for i, label in enumerate(["true"] + [f"{f} q" for f in flow_names]):
        axes[i, 0].set_ylabel(label)
    walled = "" if wall is None else f", target confined to |z1| <= {wall:g}"
    fig.suptitle(f"reverse-KL fits of q to exp(-U) (Rezende & Mohamed 2015, Fig. 3){walled}; KL(q||p) in nats",
                 fontsize=9)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return final


# --------------------------------------------------------------------------------------------- overview
def toy_overview(models: Mapping, datasets: Sequence[str], path, lim: Mapping | float | None = None, n: int = 120,
                 true_log_density: Callable | None = None) -> dict:
    """Grid of heat maps: first row the truth, then one row per flow; columns = the toy ``datasets``.

    ``models`` maps (flow name, data set) to a trained 2-D :class:`flows.Flow` (a missing pair is left blank);
    ``lim`` is the half-width of each column's box (a number, a {dataset: number} map, or None for 4.0);
    ``true_log_density(name, points)`` defaults to :func:`flows.datasets.toy.log_density`.  Each column has
    one colour scale, from 0 to the truth's maximum (learned densities above it saturate).
    Returns {(flow, dataset): mean |p - q| over the grid} as a rough score (density units).
    """
    if true_log_density is None:
        from .datasets.toy import log_density as true_log_density
    datasets = list(datasets)
    if not datasets:
        raise ValueError("toy_overview: datasets is empty; pass at least one 2-D toy set name")
    flow_names = list(dict.fromkeys(f for f, _ in models))
    lims = {d: float(lim.get(d, 4.0)) if isinstance(lim, Mapping) else float(lim or 4.0) for d in datasets}
    rows, cols = 1 + len(flow_names), len(datasets)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols + 1.2, 2.0 * rows), squeeze=False,
                             constrained_layout=True)
    scores = {}
    for j, d in enumerate(datasets):
        xs, pts = grid_points(lims[d], n)
        truth = np.exp(np.asarray(true_log_density(d, pts), np.float64)).reshape(len(xs), len(xs))
        vmax = float(np.nanmax(truth))
        _heat(axes[0, j], truth, lims[d], vmax, d)
        for i, f in enumerate(flow_names, start=1):
            ax = axes[i, j]
            if (f, d) not in models:
                ax.axis("off")
                continue
            learned = flow_density(models[(f, d)], lims[d], n)
            scores[(f, d)] = float(np.nanmean(np.abs(learned - truth)))
            _heat(ax, learned, lims[d], vmax)
    for i, label in enumerate(["truth"] + flow_names):
        axes[i, 0].set_ylabel(label, fontsize=10)
    fig.suptitle("learned density vs truth\n(one colour scale per column)", fontsize=9)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return scores
