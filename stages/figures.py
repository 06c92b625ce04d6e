"""Figures of one trained cell (density heat maps for 2-D sets, samples beside data, image sample grids).

A thin wrapper: the plotting lives in :mod:`flows.viz`; this picks what fits the cell's data kind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flows.viz import density_2d, image_grid, samples_vs_data

__all__ = ["cell_figures", "density_2d", "samples_vs_data", "image_grid"]


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
