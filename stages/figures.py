"""Figures of one trained cell (density heat maps for 2-D sets, samples beside data, image sample grids).

A thin wrapper: the plotting lives in :mod:`flows.viz`; this picks what fits the cell's data kind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flows.viz import density_2d, image_grid, image_panels, samples_vs_data

__all__ = ["cell_figures", "image_samples", "density_2d", "samples_vs_data", "image_grid"]

TEMPERATURES = (1.0, 0.7)  # T = 1 is the model itself; 0.7 is the reduced temperature of the Glow paper


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
        image_samples(flow, test, spec, transform, out / "samples.png", seed)
    if not any(out.iterdir()):
        (out / "README.txt").write_text(f"no figure applies to flow '{flow.name}' on this data kind\n")


def image_samples(flow, test, spec, transform, path: Path, seed: int = 0, n: int = 36):
    """Samples at each of TEMPERATURES beside ``n`` real test images, as discrete pixels on one grey/colour scale.

    Samples live in the flow's logit space; ``transform.to_pixels`` maps them back to pixel levels (inverting
    the logit and the alpha squeeze, then quantising), the same levels the real images are stored in.
    """
    shape = tuple(spec.event_shape)
    top = float(spec.levels - 1)
    panels = []
    for t in TEMPERATURES:
        y = flow.sample(n, seed=seed, temperature=t).numpy().reshape((-1,) + shape)
        panels.append((transform.to_pixels(y) / top, f"samples, T = {t} (seed {seed})"))
    panels.append((np.asarray(test[:n], np.float64) / top, f"test images ({spec.name})"))
    image_panels(panels, path, f"{flow.name} on {spec.name}: {spec.levels} grey levels" if shape[-1] == 1
                 else f"{flow.name} on {spec.name}")
