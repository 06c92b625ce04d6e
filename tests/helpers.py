"""Helpers shared by the test files: copies of the repository, the environment the stages run in, free ports,
a local HTTP server on 127.0.0.1 and a server subprocess waited for on its health URL.

A plain module, imported as ``from helpers import ...``: pytest's default (``prepend``) import mode puts this
directory on ``sys.path`` for the test files in it (there is no ``__init__.py``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

#: top-level entries of the repository a copy never takes: outputs and state of the developer's own runs
TOP_SKIP = frozenset({".git", ".venv", "data", "models", "mlartifacts", "mlruns", "metrics", "plots", ".pytest_cache",
                      "dvc.lock", "mlflow.db", "mlflow.lock", "experiment", "dvc_plots"})
#: DVC's local state under .dvc/ (its cache and its tmp directory with locks)
DVC_STATE = frozenset({"cache", "tmp"})
#: a git identity for commits made by the tests in their copies
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
                "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost"}
#: taken out of the environment of the stages: the developer's tracking server and DVC root
STAGE_DROP = ("MLFLOW_TRACKING_URI", "DVC_ROOT")


# ------------------------------------------------------------------------------------------- the repository
def copy_repo(dst: Path, extra_skip=(), skip_dvc_state: bool = True) -> Path:
    """Copy the repository to ``dst`` (which must not exist) without ``__pycache__`` anywhere, without the
    top-level entries of :data:`TOP_SKIP` and ``extra_skip``, and (``skip_dvc_state``) without .dvc/cache and
    .dvc/tmp. Returns ``dst``."""
    top = TOP_SKIP | set(extra_skip)

    def ignore(directory, names):
        d = Path(directory)
        skip = {"__pycache__"}
        if d == ROOT:
            skip |= top
        elif skip_dvc_state and d == ROOT / ".dvc":
            skip |= DVC_STATE
        return [n for n in names if n in skip]

    shutil.copytree(ROOT, dst, ignore=ignore)
    return Path(dst)


def load_params() -> dict:
    """The repository's params.yaml."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def tiny_moons(params: dict, flows=("maf",), steps: int = 40, eval_every: int = 20, **train) -> dict:
    """Shrink ``params`` (in place, and returned) to a tiny grid: ``flows`` (2 layers of [16, 16] each, the first
    one the default flow) on moons only (2000 / 500 / 1000 rows), ``steps`` steps of batch 128, evaluated every
    ``eval_every`` steps; ``train`` adds more keys to datasets.moons.train."""
    params["grid"] = {"flows": list(flows), "datasets": ["moons"]}
    params["flow"], params["dataset"] = flows[0], "moons"
    for flow in flows:
        hp = {"num_layers": 2, "hidden_units": [16, 16]}
        params["flows"][flow] = {"vector": hp} if flow in ("realnvp", "glow") else hp  # two-form flows: vector:
    params["datasets"] = {"moons": {"data": {"n_train": 2000, "n_val": 500, "n_test": 1000},
                                    "train": {"steps": steps, "batch_size": 128, "eval_every": eval_every, **train}}}
    return params


def venv_path() -> str:
    """$PATH with this interpreter's directory (the virtual environment's bin: dvc, mlflow) first."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def stage_env(drop=STAGE_DROP, git_identity: bool = False, **overrides) -> dict:
    """The environment to run stages and DVC in: this one without the names in ``drop``, with the virtual
    environment first on PATH, DVC_NO_ANALYTICS=1, TF_CPP_MIN_LOG_LEVEL=2, the test git identity
    (``git_identity``) and then ``overrides`` (applied last: they may set a name that ``drop`` removed)."""
    env = dict(os.environ)
    for key in drop:
        env.pop(key, None)
    env.update(PATH=venv_path(), DVC_NO_ANALYTICS="1", TF_CPP_MIN_LOG_LEVEL="2")
    if git_identity:
        env.update(GIT_IDENTITY)
    env.update(overrides)
    return env


# ------------------------------------------------------------------------------------------- network
def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that were free a moment ago (all bound at once, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


class LocalHTTPServer:
    """An HTTP server on 127.0.0.1 (a free port) in a daemon thread, its base URL in ``url`` (ending in '/').
    Subclasses answer GET requests in :meth:`handle_get`; set their own attributes before calling
    ``super().__init__()``, which starts serving. Stop it with :meth:`close`."""

    def __init__(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.handle_get(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def handle_get(self, request: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    @staticmethod
    def name_of(request: BaseHTTPRequestHandler) -> str:
        """The requested file name: the path without its leading '/' and its query."""
        return request.path.lstrip("/").split("?")[0]

    @staticmethod
    def send_range_head(request: BaseHTTPRequestHandler, body: bytes) -> int:
        """Send the status line and headers for ``body``, honouring a ``Range: bytes=<start>-`` header (206 with
        Content-Range) or not (200). Returns the offset to send from."""
        start = 0
        rng = request.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            request.send_response(206)
            request.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            request.send_response(200)
        request.send_header("Content-Length", str(len(body) - start))
        request.end_headers()
        return start

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# ------------------------------------------------------------------------------------------- server processes
def wait_for_http(url: str, proc: subprocess.Popen, log_path: Path, timeout: float, what: str) -> None:
    """Poll ``url`` every 0.5 s until it answers 200; fail the test with the tail of ``log_path`` as soon as
    ``proc`` has exited, or after ``timeout`` seconds. ``what`` names the server in the message."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{Path(log_path).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not answer on {url} within {timeout:g} s:\n{Path(log_path).read_text()[-3000:]}")
        time.sleep(0.5)


@contextmanager
def server_process(argv, log_path: Path, health_url: str, what: str, timeout: float = 90, **popen):
    """Start ``argv`` in its own session (stdout and stderr to ``log_path``), wait until ``health_url`` answers
    (:func:`wait_for_http`) and yield the process; then SIGTERM its process group (the server and the workers it
    started, nothing else), SIGKILL it after 15 s."""
    log = open(log_path, "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **popen)
    try:
        wait_for_http(health_url, proc, log_path, timeout, what)
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        log.close()
