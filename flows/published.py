"""Published test log-likelihoods, for comparison (nats, higher is better; bits/dim for images, lower is better).

Sources: MAF paper (Papamakarios et al. 2017, arXiv:1705.07057) Table 1 (+/- is 2 std / sqrt(N_test));
NSF paper (Durkan et al. 2019, arXiv:1906.04032) Table 1; FFJORD (Grathwohl et al. 2019, arXiv:1810.01367);
NAF (Huang et al. 2018, arXiv:1804.00779); image results as tabled in the FFJORD paper.
"""

from __future__ import annotations

__all__ = ["TABULAR", "IMAGES", "lookup"]

_COLS = ("power", "gas", "hepmass", "miniboone", "bsds300")

# model -> (value, +/- 2 se or None) per data set, in nats
_ROWS = {
    "Gaussian": [(-7.74, 0.02), (-3.58, 0.75), (-27.93, 0.02), (-37.24, 1.07), (96.67, 0.25)],
    "MADE": [(-3.08, 0.03), (3.56, 0.04), (-20.98, 0.02), (-15.59, 0.50), (148.85, 0.28)],
    "MADE MoG": [(0.40, 0.01), (8.47, 0.02), (-15.15, 0.02), (-12.27, 0.47), (153.71, 0.28)],
    "Real NVP (5)": [(-0.02, 0.01), (4.78, 1.80), (-19.62, 0.02), (-13.55, 0.49), (152.97, 0.28)],
    "Real NVP (10)": [(0.17, 0.01), (8.33, 0.14), (-18.71, 0.02), (-13.84, 0.52), (153.28, 1.78)],
    "MAF (5)": [(0.14, 0.01), (9.07, 0.02), (-17.70, 0.02), (-11.75, 0.44), (155.69, 0.28)],
    "MAF (10)": [(0.24, 0.01), (10.08, 0.02), (-17.73, 0.02), (-12.24, 0.45), (154.93, 0.28)],
    "MAF MoG (5)": [(0.30, 0.01), (9.59, 0.02), (-17.39, 0.02), (-11.68, 0.44), (156.36, 0.28)],
    "Glow (NSF's re-run)": [(0.42, None), (12.24, None), (-16.99, None), (-10.55, None), (156.95, None)],
    "MAF (NSF's re-run)": [(0.45, None), (12.35, None), (-17.03, None), (-10.92, None), (156.95, None)],
    "FFJORD": [(0.46, None), (8.59, None), (-14.92, None), (-10.43, None), (157.40, None)],
    "NAF-DDSF (5)": [(0.62, None), (11.91, None), (-15.09, None), (-8.86, None), (157.73, None)],
    "RQ-NSF (C)": [(0.64, 0.01), (13.09, 0.02), (-14.75, 0.03), (-9.67, 0.47), (157.54, 0.28)],
    "RQ-NSF (AR)": [(0.66, 0.01), (13.09, 0.02), (-14.01, 0.03), (-9.22, 0.48), (157.31, 0.28)],
}
TABULAR = {model: dict(zip(_COLS, vals)) for model, vals in _ROWS.items()}

#: bits/dim (lower is better)
IMAGES = {
    "mnist": {"Real NVP": 1.06, "Glow": 1.05, "FFJORD": 0.99, "MAF": 1.89},
    "celeba": {"Real NVP": 3.02},
}


def _model_row(flow: str, hparams: dict) -> str | None:
    layers = hparams.get("num_layers")
    if flow == "made":
        return "MADE" if hparams.get("num_components", 1) == 1 else "MADE MoG"
    if flow == "gaussian":
        return "Gaussian"
    if flow == "maf":
        if hparams.get("mog_components", 0):
            return "MAF MoG (5)"
        return {5: "MAF (5)", 10: "MAF (10)"}.get(layers, "MAF (5)")
    if flow == "realnvp":
        layers = (hparams.get("vector") or {}).get("num_layers", layers)
        return {5: "Real NVP (5)", 10: "Real NVP (10)"}.get(layers, "Real NVP (5)")
    if flow == "nsf":
        return "RQ-NSF (AR)" if hparams.get("form") == "autoregressive" else "RQ-NSF (C)"
    return {"glow": "Glow (NSF's re-run)", "ffjord": "FFJORD", "naf": "NAF-DDSF (5)"}.get(flow)


def lookup(flow: str, dataset: str, hparams: dict | None = None):
    """The published number for this flow on this data set: (model label, value, +/- or None, unit) or None."""
    hparams = hparams or {}
    if dataset in IMAGES:
        name = {"realnvp": "Real NVP", "glow": "Glow", "ffjord": "FFJORD", "maf": "MAF"}.get(flow)
        if name in IMAGES[dataset]:
            return name, IMAGES[dataset][name], None, "bits/dim"
        return None
    row = _model_row(flow, hparams)
    if row is None or dataset not in _COLS:
        return None
    value, pm = TABULAR[row][dataset]
    return row, value, pm, "nats"
