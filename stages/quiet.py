"""Clean stage output: TensorFlow's start-up notices are dropped, everything else TensorFlow says gets through.

:func:`start_tensorflow` imports TensorFlow and asks for its devices (where CUDA is probed) with file
descriptor 2 captured, then writes back to stderr every captured line that is not one of the known start-up
notices of :data:`NOISE` (absl's "All log messages before absl::InitializeLog()", oneDNN's notice, "Could not find
cuda drivers", ``failed call to cuInit`` on a machine without a GPU, the CPU-instructions notice, the CUDA
plugin's "Unable to register ... factory" lines).  So a real TensorFlow error or warning still reaches the user,
and its warnings and errors are never hidden: ``TF_CPP_MIN_LOG_LEVEL`` defaults to 1, which drops only
TensorFlow's C++ INFO lines (XLA's "XLA service ... initialized", "Compiled cluster using XLA!", the MLIR
crash-reproducer notice, printed at the first compilation), and a value the user sets wins.  ``tf.function``
retracing warnings (Python logging) are dropped as well, and so are the INFO records of MLflow's SQLite set-up
(alembic's migrations when a new ``mlflow.db`` is created).  Every stage calls it through :func:`stages.common.run_main`, before its ``main``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from contextlib import contextmanager

#: the start-up notices dropped (each matched anywhere in one stderr line)
NOISE = tuple(re.compile(p) for p in (
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"oneDNN custom operations are on",
    r"Could not find cuda drivers on your machine",
    r"failed call to cuInit",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation placer already registered",
    r"TF-TRT Warning: Could not find TensorRT",
))
#: tf.function's retracing warning (a Python log record of the logger "tensorflow")
RETRACING = re.compile(r"triggered tf\.function retracing")


def is_noise(line: str) -> bool:
    return any(p.search(line) for p in NOISE)


@contextmanager
def filtered_stderr():
    """Capture file descriptor 2 (C++ and Python writes alike) for the block; afterwards write every line but the
    :data:`NOISE` ones back to the real stderr, even if the block raised."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            kept = [line for line in buf.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not is_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _DropRetracing(logging.Filter):
    def filter(self, record):
        return not RETRACING.search(record.getMessage())


_DEVICE: str | None = None


def start_tensorflow() -> str:
    """Import TensorFlow and probe its devices without the start-up noise (once per process); returns the
    device in words, e.g. ``CPU (x86_64, 2 threads)`` or ``1 GPU (/physical_device:GPU:0)``."""
    global _DEVICE
    if _DEVICE is not None:
        return _DEVICE
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # C++ INFO lines only; warnings and errors still show
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with filtered_stderr():
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
    tf.get_logger().addFilter(_DropRetracing())
    if gpus:
        _DEVICE = f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''} ({', '.join(g.name for g in gpus)})"
    else:
        import platform

        threads = tf.config.threading.get_intra_op_parallelism_threads() or len(os.sched_getaffinity(0))
        _DEVICE = f"CPU ({platform.machine() or platform.processor()}, {threads} thread{'s' * (threads != 1)})"
    return _DEVICE


def announce(stage: str, doing: str) -> None:
    """The stage's one line about its device: ``<stage>: <doing> on <device>``."""
    print(f"{stage}: {doing} on {start_tensorflow()}", flush=True)
