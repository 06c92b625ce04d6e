"""Twelve 2-D toy densities: samplers and their true log-densities (closed form, quadrature or a grid).

The shapes follow the sets of FFJORD's ``toy_data.py`` (Grathwohl et al., 2018, arXiv:1810.01367) that
the seed project used, redesigned where needed so that each has a known density:

* closed form: ``8gaussians``, ``4gaussians`` (Gaussian mixtures); ``circles``, ``rings`` (uniform rings
  blurred by N(0, s^2 I): p(x) = exp(-(|x|^2+r^2)/2s^2) I0(r|x|/s^2) / (2 pi s^2)); ``checkerboard``
  (uniform on 8 squares); ``line``, ``cos`` (x ~ U[a, b], y = f(x) + N(0, s^2)); ``tum`` (the letters T, U, M
  drawn as segments, each blurred by N(0, s^2 I): a uniform segment convolved with a Gaussian is
  [Phi((L-u)/s) - Phi(-u/s)] / L * N(v; 0, s^2), u along and v across the segment);
* quadrature (a curve c(t), t ~ p(t), blurred by N(0, s^2 I): p(x) = E_t N(x; c(t), s^2 I), computed with
  4,000 midpoint nodes in u = F(t)): ``swissroll``, ``moons``, ``2spirals``; against 16,000 nodes the
  log-density of 3,000 samples differs by at most 6e-5 (swissroll, moons) and 2e-3 nats (2spirals), and
  by up to 0.03 nats far in the tails (0.5 off the curve);
* grid reference: ``pinwheel`` (a non-linear warp of a Gaussian with no closed-form inverse): a histogram of
  4,000,000 samples on a 400 x 400 grid over [-5, 5]^2, cached per process; accurate to a few percent where
  the density is not tiny, and -inf-free (empty bins get half a count).

Differences from FFJORD, made so that the density is known: circles and rings draw the angle uniformly
(sklearn uses evenly spaced angles); 2spirals has Gaussian noise only (FFJORD adds a uniform jitter too);
FFJORD's line and cos lie exactly on a curve (no density), here x ~ U[-2.5, 2.5], y = x + N(0, 0.1^2) and
x ~ U[-3, 3], y = 1.5 cos(1.5 x) + N(0, 0.1^2); 4gaussians has centres (+-2, 0), (0, +-2) and sd 0.4;
tum writes T, U, M with 11 strokes blurred by sd 0.06.

All densities are in nats, over R^2.
"""

from __future__ import annotations

from ..errors import DataError

import functools
import math

import numpy as np
from scipy import special

__all__ = ["NAMES", "sample", "log_density", "density_kind"]

NAMES = ("swissroll", "circles", "rings", "moons", "4gaussians", "8gaussians", "pinwheel", "2spirals",
         "checkerboard", "line", "cos", "tum")

_LOG2PI = math.log(2 * math.pi)


def _check(name):
    if name not in NAMES:
        raise DataError(f"unknown toy data set {name!r}; accepted: {', '.join(sorted(NAMES))}")


# ------------------------------------------------------------------------------------------ the definitions
_S8 = 4.0 / math.sqrt(2)  # FFJORD: scale 4 then divided by 1.414
_C8 = np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (1 / math.sqrt(2), 1 / math.sqrt(2)),
                (1 / math.sqrt(2), -1 / math.sqrt(2)), (-1 / math.sqrt(2), 1 / math.sqrt(2)),
                (-1 / math.sqrt(2), -1 / math.sqrt(2))]) * _S8
_SD8 = 0.5 / math.sqrt(2)
_C4 = np.array([(1, 0), (-1, 0), (0, 1), (0, -1)]) * 2.0
_SD4 = 0.4
_RINGS = {"circles": ((3.0, 1.5), 0.24), "rings": ((3.0, 2.25, 1.5, 0.75), 0.08)}
_LINE = (-2.5, 2.5, 0.1)   # x ~ U[a, b], y = x + N(0, s^2)
_COS = (-3.0, 3.0, 0.1)    # x ~ U[a, b], y = 1.5 cos(1.5 x) + N(0, s^2)
_TUM_SD = 0.06
# the letters as segments ((x0, y0), (x1, y1)), in [-3.5, 3.5] x [-1.25, 1.25]
_TUM = np.array([
    ((-3.5, 1.25), (-1.5, 1.25)), ((-2.5, 1.25), (-2.5, -1.25)),                     # T
    ((-1.0, 1.25), (-1.0, -0.75)), ((-1.0, -0.75), (-0.5, -1.25)), ((-0.5, -1.25), (0.5, -1.25)),
    ((0.5, -1.25), (1.0, -0.75)), ((1.0, -0.75), (1.0, 1.25)),                        # U
    ((1.5, -1.25), (1.5, 1.25)), ((1.5, 1.25), (2.5, 0.0)), ((2.5, 0.0), (3.5, 1.25)),
    ((3.5, 1.25), (3.5, -1.25)),                                                      # M
])
_QUAD_NODES = 4000
_QUAD_SD = {"swissroll": 0.2, "moons": 0.2, "2spirals": 0.1}


def _curve(name, u):
    """Point c(t(u)) for u in [0, 1): the curve and its parametrisation of each quadrature set."""
    if name == "swissroll":  # sklearn make_swiss_roll (x, z) / 5: t ~ U[1.5 pi, 4.5 pi]
        t = 1.5 * np.pi * (1 + 2 * u)
        return np.stack([t * np.cos(t), t * np.sin(t)], -1) / 5.0
    if name == "moons":  # sklearn make_moons, then 2 x - (1, 0.2) as in FFJORD; half the mass on each moon
        first = u < 0.5
        th = np.pi * np.where(first, 2 * u, 2 * u - 1)
        x = np.where(first, np.cos(th), 1 - np.cos(th))
        y = np.where(first, np.sin(th), 0.5 - np.sin(th))
        return np.stack([2 * x - 1, 2 * y - 0.2], -1)
    if name == "2spirals":  # FFJORD: n = sqrt(U) 3 pi, +-(-n cos n, n sin n) / 3
        first = u < 0.5
        n = np.sqrt(np.where(first, 2 * u, 2 * u - 1)) * 3 * np.pi
        sign = np.where(first, 1.0, -1.0)
        return sign[..., None] * np.stack([-np.cos(n) * n, np.sin(n) * n], -1) / 3.0
    raise AssertionError(name)


def _pinwheel(rng, n):
    """FFJORD's pinwheel: 5 arms, radial sd 0.3, tangential sd 0.1, rate 0.25, times 2."""
    rads = np.linspace(0, 2 * np.pi, 5, endpoint=False)
    feats = rng.standard_normal((n, 2)) * np.array([0.3, 0.1]) + np.array([1.0, 0.0])
    labels = rng.integers(0, 5, n)
    ang = rads[labels] + 0.25 * np.exp(feats[:, 0])
    c, s = np.cos(ang), np.sin(ang)
    return 2 * np.stack([c * feats[:, 0] - s * feats[:, 1], s * feats[:, 0] + c * feats[:, 1]], -1)


def _segments_sample(rng, segs, sd, n):
    lengths = np.linalg.norm(segs[:, 1] - segs[:, 0], axis=1)
    k = rng.choice(len(segs), size=n, p=lengths / lengths.sum())
    t = rng.random(n)[:, None]
    pts = segs[k, 0] + t * (segs[k, 1] - segs[k, 0])
    return pts + sd * rng.standard_normal((n, 2))


def sample(name: str, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points of toy set ``name`` as float32 [n, 2], reproducible from ``seed``."""
    _check(name)
    n = int(n)
    rng = np.random.default_rng(seed)
    if name in ("8gaussians", "4gaussians"):
        centres, sd = (_C8, _SD8) if name == "8gaussians" else (_C4, _SD4)
        x = centres[rng.integers(0, len(centres), n)] + sd * rng.standard_normal((n, 2))
    elif name in _RINGS:
        radii, sd = _RINGS[name]
        r = np.asarray(radii)[rng.integers(0, len(radii), n)]
        th = rng.uniform(0, 2 * np.pi, n)
        x = np.stack([r * np.cos(th), r * np.sin(th)], -1) + sd * rng.standard_normal((n, 2))
    elif name in _QUAD_SD:
        x = _curve(name, rng.random(n)) + _QUAD_SD[name] * rng.standard_normal((n, 2))
    elif name == "pinwheel":
        x = _pinwheel(rng, n)
    elif name == "checkerboard":  # FFJORD: uniform on 8 of the 16 squares of side 2 in [-4, 4]^2
        x1 = rng.random(n) * 4 - 2
        x2 = rng.random(n) - rng.integers(0, 2, n) * 2 + np.floor(x1) % 2
        x = np.stack([x1, x2], -1) * 2
    elif name in ("line", "cos"):
        a, b, sd = _LINE if name == "line" else _COS
        xs = rng.uniform(a, b, n)
        x = np.stack([xs, _ycurve(name, xs) + sd * rng.standard_normal(n)], -1)
    else:  # tum
        x = _segments_sample(rng, _TUM, _TUM_SD, n)
    return x.astype(np.float32)


def _ycurve(name, xs):
    return xs if name == "line" else 1.5 * np.cos(1.5 * xs)


def density_kind(name: str) -> str:
    """How ``log_density`` is computed: "closed form", "quadrature" or "grid reference"."""
    _check(name)
    if name in _QUAD_SD:
        return "quadrature"
    if name == "pinwheel":
        return "grid reference"
    return "closed form"


# ------------------------------------------------------------------------------------------ log-densities
def _log_gauss_mixture(x, centres, sd):
    d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
    return special.logsumexp(-0.5 * d2 / sd**2, axis=1) - math.log(len(centres)) - _LOG2PI - 2 * math.log(sd)


def _log_rings(x, radii, sd):
    rho = np.linalg.norm(x, axis=1)[:, None]
    r = np.asarray(radii)[None]
    z = r * rho / sd**2
    # log I0(z) = log(i0e(z)) + z
    comp = -(rho**2 + r**2) / (2 * sd**2) + np.log(special.i0e(z)) + z - _LOG2PI - 2 * math.log(sd)
    return special.logsumexp(comp, axis=1) - math.log(len(radii))


def _log_segments(x, segs, sd):
    p0, p1 = segs[:, 0], segs[:, 1]
    lengths = np.linalg.norm(p1 - p0, axis=1)
    e = (p1 - p0) / lengths[:, None]
    rel = x[:, None, :] - p0[None]
    u = (rel * e[None]).sum(-1)
    v = rel[..., 0] * e[None, :, 1] - rel[..., 1] * e[None, :, 0]
    log_along = np.log(np.maximum(special.ndtr((lengths - u) / sd) - special.ndtr(-u / sd), 1e-300)) - np.log(lengths)
    log_across = -0.5 * (v / sd) ** 2 - 0.5 * _LOG2PI - math.log(sd)
    weights = np.log(lengths / lengths.sum())
    return special.logsumexp(weights + log_along + log_across, axis=1)


def _log_quadrature(name, x, chunk=2048):
    u = (np.arange(_QUAD_NODES) + 0.5) / _QUAD_NODES
    c = _curve(name, u)
    sd = _QUAD_SD[name]
    out = np.empty(len(x))
    for i in range(0, len(x), chunk):
        d2 = ((x[i:i + chunk, None, :] - c[None]) ** 2).sum(-1)
        out[i:i + chunk] = special.logsumexp(-0.5 * d2 / sd**2, axis=1)
    return out - math.log(_QUAD_NODES) - _LOG2PI - 2 * math.log(sd)


_GRID_LIM, _GRID_BINS, _GRID_SAMPLES = 5.0, 400, 4_000_000


@functools.lru_cache(maxsize=None)
def _grid(name):
    rng = np.random.default_rng(12345)
    counts = np.zeros((_GRID_BINS, _GRID_BINS))
    for _ in range(8):
        pts = _pinwheel(rng, _GRID_SAMPLES // 8)
        h, _, _ = np.histogram2d(pts[:, 0], pts[:, 1], bins=_GRID_BINS, range=[[-_GRID_LIM, _GRID_LIM]] * 2)
        counts += h
    width = 2 * _GRID_LIM / _GRID_BINS
    dens = np.maximum(counts, 0.5) / (_GRID_SAMPLES * width**2)
    return np.log(dens)


def _log_grid(name, x):
    logd = _grid(name)
    width = 2 * _GRID_LIM / _GRID_BINS
    ij = np.floor((x + _GRID_LIM) / width).astype(int)
    inside = ((ij >= 0) & (ij < _GRID_BINS)).all(1)
    out = np.full(len(x), math.log(0.5 / (_GRID_SAMPLES * width**2)))
    out[inside] = logd[ij[inside, 0], ij[inside, 1]]
    return out


def log_density(name: str, x) -> np.ndarray:
    """True log-density (nats) of toy set ``name`` at points ``x`` [n, 2]; float64 [n]. See the module doc."""
    _check(name)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise DataError(f"log_density({name!r}): x has shape {list(x.shape)}, expected [n, 2]")
    if name == "8gaussians":
        return _log_gauss_mixture(x, _C8, _SD8)
    if name == "4gaussians":
        return _log_gauss_mixture(x, _C4, _SD4)
    if name in _RINGS:
        return _log_rings(x, *_RINGS[name])
    if name == "checkerboard":
        cell = np.floor(x / 2)
        # the occupied squares of side 2 are those with floor(x1/2) + floor(x2/2) even
        inside = (np.abs(x) <= 4).all(1) & ((cell[:, 0] + cell[:, 1]) % 2 == 0)
        return np.where(inside, math.log(1 / 32), -np.inf)
    if name in ("line", "cos"):
        a, b, sd = _LINE if name == "line" else _COS
        inside = (x[:, 0] >= a) & (x[:, 0] <= b)
        r = x[:, 1] - _ycurve(name, x[:, 0])
        ll = -0.5 * (r / sd) ** 2 - 0.5 * _LOG2PI - math.log(sd) - math.log(b - a)
        return np.where(inside, ll, -np.inf)
    if name == "tum":
        return _log_segments(x, _TUM, _TUM_SD)
    if name in _QUAD_SD:
        return _log_quadrature(name, x)
    return _log_grid(name, x)


# ------------------------------------------------------------------------------------------ registry entries
def _register():
    from ._core import DatasetSpec, register_dataset

    def fetch(raw_dir, mirror, params, name):
        return {"source": f"generated by flows.datasets.toy.sample({name!r}, n, seed)", "generated": True,
                "files": {}}

    def build(raw_dir, params, seed, name):
        n_tr, n_va, n_te = params["n_train"], params["n_val"], params["n_test"]
        for key in ("n_train", "n_val", "n_test"):
            if params[key] < 1:
                raise DataError(f"dataset {name!r}: {key} = {params[key]} must be a positive integer")
        x = sample(name, n_tr + n_va + n_te, seed)
        return {"train": x[:n_tr], "val": x[n_tr:n_tr + n_va], "test": x[n_tr + n_va:],
                "notes": {"density": density_kind(name), "log_density": f"flows.datasets.toy.log_density({name!r}, x)",
                          "units": "R^2; log-densities in nats"}}

    for name in NAMES:
        register_dataset(DatasetSpec(
            name=name, kind="toy", event_shape=(2,), offline=True,
            defaults={"n_train": 20000, "n_val": 2000, "n_test": 5000},
            fetch=functools.partial(fetch, name=name), build=functools.partial(build, name=name),
            description=f"2-D toy set {name} ({density_kind(name)} density)", units="nats"))


_register()
