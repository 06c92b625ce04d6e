"""Normalizing flows in TensorFlow 2 and TensorFlow Probability: every classic flow behind one API.

    >>> import flows
    >>> flow = flows.build_flow("maf", event_shape=[2], num_layers=2, hidden_units=[16, 16])
    >>> flow.log_prob([[0.0, 0.0]]).shape
    TensorShape([1])

The library is usable on its own: no DVC, MLflow or files on disk are needed.
Keras: TFP 0.25 builds its networks with Keras 2 (the ``tf-keras`` package); this package uses
``tf_keras`` explicitly and never Keras 3.
"""

import os as _os

# TFP 0.25 needs Keras 2; make tf.keras resolve to tf_keras too, for code that mixes both.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .base import Flow, FlowLayer, NotInvertibleError  # noqa: E402
from .options import OptionsError  # noqa: E402
from .io import load, save  # noqa: E402
from .registry import FLOWS, FlowSpec, build_flow, check_hparams, register  # noqa: E402

# Each module registers its flows on import.
from . import (  # noqa: E402,F401
    autoregressive,
    continuous,
    coupling,
    gaussian,
    glow,
    image,
    made,
    neural,
    planar,
    radial,
    spline,
)

__all__ = [
    "Flow",
    "FlowLayer",
    "NotInvertibleError",
    "FLOWS",
    "FlowSpec",
    "build_flow",
    "check_hparams",
    "OptionsError",
    "save",
    "load",
    "register",
]
