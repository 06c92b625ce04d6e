"""Bad input battery: every case runs the real stage command in a tiny copy of the repository and must exit
non-zero, end stderr with ONE line ``error: ...`` naming the problem (no traceback), and leave no partial
output (the tree is the same file for file, size and mtime, before and after; no temporary files).

Download cases point the stage at a local HTTP server on 127.0.0.1 through $FLOWS_DATA_MIRROR; the official
URLs that the downloader tries after the mirror go through an unresolvable proxy (``proxy.invalid``), so they
fail at once and no test ever reaches the internet.  Read-only cases: root ignores permission bits, so the
stage runs under ``setpriv`` without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (still uid 0, now bound by the
0555 mode of the directory).

=====================  ==========================================================  ===========================
id                     command (and what is wrong)                                 expected in the error line
=====================  ==========================================================  ===========================
params-flow-unknown    train.py --flow maf --dataset moons; ``flow: nope``         flow = 'nope'
params-dataset-unknown train.py ...; ``dataset: nope``                             dataset = 'nope'
params-steps-type      train.py ...; ``datasets.moons.train.steps: "ten"``         steps = 'ten'
params-steps-zero      train.py ...; ``steps: 0``                                  steps = 0
params-batch-negative  train.py ...; ``batch_size: -32``                           batch_size = -32
params-lr-nan          train.py ...; ``learning_rate: .nan``                       learning_rate = nan
params-lr-negative     train.py ...; ``learning_rate: -0.001``                     learning_rate = -0.001
params-hparam-unknown  train.py ...; ``flows.realnvp.num_flows: 3``                'num_flows'
params-hidden-type     train.py ...; ``flows.maf.hidden_units: "64,64"``           hidden_units
params-hidden-elem     train.py ...; ``flows.maf.hidden_units: [64, wide]``        hidden_units
params-hidden-zero     train.py ...; ``flows.maf.hidden_units: [0, 16]``           hidden_units
params-layers-zero     train.py ...; ``flows.maf.num_layers: 0``                   num_layers
params-yaml-syntax     train.py ...; params.yaml is not YAML                       not valid YAML
params-missing         train.py ...; no params.yaml                                params.yaml not found
params-grid-unknown    report.py; ``grid.flows: [maf, nope]``                      grid.flows[1]
params-ntrain-negative prepare.py moons; ``datasets.moons.data.n_train: -5``       n_train
arg-dataset-unknown    download.py nope                                            dataset 'nope'
data-nan               evaluate.py --flow maf --dataset moons; NaN in test.npy     NaN
data-inf               evaluate.py ...; Inf in train.npy                           Inf
data-dims-3            evaluate.py ...; train.npy of shape [n, 3]                  wrong dimensions
data-dims-1d           evaluate.py ...; test.npy of shape [n]                      wrong dimensions
data-missing-file      evaluate.py ...; train.npy deleted                          train.npy
data-missing-raw       prepare.py moons; data/raw/moons deleted                    data/raw/moons is missing
data-train-nan         train.py --flow maf --dataset moons; NaN in train.npy       NaN
dl-truncated-md5       download.py miniboone; mirror serves a truncated data.tar.gz MD5
dl-truncated-zip       download.py power (source uci); mirror serves a cut zip     zip
dl-html                download.py power (source uci); mirror serves an HTML page  HTML
dl-zip-escape          download.py miniboone (skip_md5); zip entry ``../evil.txt`` outside
dl-tar-absolute        download.py miniboone (skip_md5); tar entry ``/tmp/...``    outside
dl-tar-symlink         download.py miniboone (skip_md5); member is a symlink       link
fs-readonly-raw        download.py moons; data/raw is mode 0555                    Permission denied
fs-readonly-processed  prepare.py moons; data/processed is mode 0555               Permission denied
fs-readonly-plots      report.py; plots/ is mode 0555 (metrics/ writable)          Permission denied
fs-parent-is-file      report.py; plots is a file, not a directory                 not a writable directory
eval-missing-model     evaluate.py --flow maf --dataset moons; no models/maf-moons config.json is missing
eval-run-elsewhere     evaluate.py ...; trained, then mlflow.db replaced (empty)   is not in the tracking store
=====================  ==========================================================  ===========================
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import STAGE_DROP, LocalHTTPServer, copy_repo, load_params, stage_env

EXTRA_SKIP = {"checkpoints", "benchmarks", "example_training.ipynb"}  # not copied besides helpers.TOP_SKIP
#: the state every case starts from (restored before each case)
STATE = ("data", "metrics", "plots", "models", "checkpoints", "experiment", "mlruns", "mlartifacts", "mlflow.db")
SETPRIV = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search",
           "--"]


# ------------------------------------------------------------------------------------------- the fixtures
class _Server(LocalHTTPServer):
    """Serves ``files`` {name: bytes} on 127.0.0.1; 404 for anything else."""

    def __init__(self):
        self.files = {}
        super().__init__()

    def handle_get(self, request):
        name = self.name_of(request)
        if name not in self.files:
            request.send_error(404)
            return
        body = self.files[name]
        request.send_response(200)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)


def _env(mirror: str = "") -> dict:
    return stage_env(
        drop=(*STAGE_DROP, "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy", "NO_PROXY"),
        TF_USE_LEGACY_KERAS="1",
        # official URLs (tried after the mirror) fail at once: the proxy's name never resolves (RFC 2606)
        http_proxy="http://proxy.invalid:9", https_proxy="http://proxy.invalid:9", no_proxy="127.0.0.1,localhost",
        FLOWS_DATA_MIRROR=mirror,
    )


def _tiny_params() -> dict:
    params = load_params()
    params["grid"] = {"flows": ["maf"], "datasets": ["moons"]}
    params["flow"], params["dataset"] = "maf", "moons"
    params["figures"] = {"energy_layers": 2, "energy_steps": 10}
    params["flows"]["maf"] = {"num_layers": 2, "hidden_units": [16, 16]}
    params["datasets"] = {"moons": {"data": {"n_train": 200, "n_val": 50, "n_test": 100},
                                    "train": {"steps": 4, "batch_size": 32, "eval_every": 2}}}
    params["data"] = {"mirror": ""}
    return params


def _stage(repo, *args, env=None, privileged=True, timeout=300):
    cmd = [sys.executable, *args]
    if not privileged and os.geteuid() == 0:
        cmd = SETPRIV + cmd
    return subprocess.run(cmd, cwd=repo, env=env or _env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A tiny repository copy with moons downloaded and prepared by the real stages, and a fake evaluation."""
    base = tmp_path_factory.mktemp("bad_inputs")
    repo = copy_repo(base / "repo", extra_skip=EXTRA_SKIP)
    (repo / "params.yaml").write_text(yaml.safe_dump(_tiny_params(), sort_keys=False))
    for stage in ("download", "prepare"):
        proc = _stage(repo, f"stages/{stage}.py", "moons")
        assert proc.returncode == 0, proc.stderr[-3000:]
    eval_json = repo / "metrics" / "eval" / "maf-moons.json"
    eval_json.parent.mkdir(parents=True)
    eval_json.write_text(json.dumps({"flow": "maf", "dataset": "moons", "test_ll": -2.5, "test_ll_se": 0.02,
                                     "n_test": 100, "units": "nats"}))
    shutil.copytree(repo / "data", base / "pristine" / "data")
    shutil.copytree(repo / "metrics", base / "pristine" / "metrics")
    (base / "pristine" / "params.yaml").write_text((repo / "params.yaml").read_text())
    return repo


def _reset(repo: Path):
    """Back to the state of the fixture: params.yaml, data/ and metrics/ as prepared, no other outputs."""
    pristine = repo.parent / "pristine"
    for name in STATE:
        path = repo / name
        if path.is_dir() and not path.is_symlink():
            for d, _, _ in os.walk(path):
                os.chmod(d, 0o755)
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    shutil.copytree(pristine / "data", repo / "data")
    shutil.copytree(pristine / "metrics", repo / "metrics")
    (repo / "params.yaml").write_text((pristine / "params.yaml").read_text())


def _snapshot(repo: Path) -> dict:
    """Every file (size, mtime) and directory of the tree, without __pycache__."""
    out = {}
    for d, dirs, files in os.walk(repo):
        dirs[:] = [x for x in dirs if x != "__pycache__"]
        for name in dirs + files:
            p = Path(d) / name
            st = p.lstat()
            # a directory's mtime moves when a temporary entry comes and goes: only its existence counts
            out[str(p.relative_to(repo))] = (st.st_mode, st.st_size, st.st_mtime_ns) if p.is_file() else (st.st_mode,)
    return out


# ------------------------------------------------------------------------------------------- the set-ups
def _params(repo, edit):
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _set(*keys_value):
    *keys, value = keys_value

    def setup(repo, server):
        def edit(params):
            node = params
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = value

        _params(repo, edit)

    return setup


def _write_split(repo, split, arr):
    """Replace a prepared split and keep the manifest consistent with it (as a buggy preparation would)."""
    d = repo / "data" / "processed" / "moons"
    np.save(d / f"{split}.npy", np.ascontiguousarray(arr), allow_pickle=False)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["splits"][split].update(shape=list(arr.shape), dtype=arr.dtype.name,
                                     sha256=hashlib.sha256((d / f"{split}.npy").read_bytes()).hexdigest())
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _split(repo, split):
    return np.load(repo / "data" / "processed" / "moons" / f"{split}.npy")


def _nan_in(split, value):
    def setup(repo, server):
        arr = _split(repo, split).copy()
        arr[7, 1] = value
        _write_split(repo, split, arr)

    return setup


def _tar(entries) -> bytes:
    """A tar.gz of (name, bytes or ("symlink", target))."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, body in entries:
            info = tarfile.TarInfo(name)
            if isinstance(body, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, body[1]
                tf.addfile(info)
            else:
                info.size = len(body)
                tf.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def _zip(entries) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, body in entries:
            zf.writestr(name, body)
    return buf.getvalue()


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros((10, 43)))
    return buf.getvalue()


def _serve(name, body, **data_params):
    """Serve ``body`` as ``name`` on the mirror; ``data_params`` go to datasets.<dataset>.data in params.yaml."""

    def setup(repo, server):
        server.files.clear()
        server.files[name] = body() if callable(body) else body
        for dataset, params in data_params.items():
            _params(repo, lambda p: p["datasets"].setdefault(dataset, {}).update(data=params))

    return setup


def _chmod_ro(rel, create=False):
    def setup(repo, server):
        path = repo / rel
        if create:
            path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o555)

    return setup


def _make_file(rel):
    def setup(repo, server):
        path = repo / rel
        if path.is_dir():
            shutil.rmtree(path)
        path.write_text("not a directory\n")

    return setup


def _remove(rel):
    def setup(repo, server):
        path = repo / rel
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()

    return setup


def _write(rel, text):
    def setup(repo, server):
        (repo / rel).write_text(text)

    return setup


MINIBOONE = "data/miniboone/data.npy"
TRAIN = ("stages/train.py", "--flow", "maf", "--dataset", "moons")
EVAL = ("stages/evaluate.py", "--flow", "maf", "--dataset", "moons")


def _trained_against_another_store(repo, server):
    """models/maf-moons trained for real, then mlflow.db replaced by an empty store: the model's training run is
    elsewhere (a model fetched with `dvc pull`, or MLFLOW_TRACKING_URI changed since training)."""
    proc = _stage(repo, *TRAIN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (repo / "mlflow.db").unlink()
    proc = subprocess.run([sys.executable, "-c", "from stages import tracking; tracking.experiment_id(tracking._mlflow())"],
                          cwd=repo, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and (repo / "mlflow.db").exists(), proc.stderr[-3000:]

# id, stage arguments, set-up, expected substrings of the error line, runs privileged (root may ignore modes)
CASES = [
    ("params-flow-unknown", TRAIN, _set("flow", "nope"), ["flow = 'nope'", "accepted flows"]),
    ("params-dataset-unknown", TRAIN, _set("dataset", "nope"), ["dataset = 'nope'", "accepted datasets"]),
    ("params-steps-type", TRAIN, _set("datasets", "moons", "train", "steps", "ten"),
     ["datasets.moons.train.steps = 'ten'", "integer"]),
    ("params-steps-zero", TRAIN, _set("datasets", "moons", "train", "steps", 0), ["datasets.moons.train.steps = 0"]),
    ("params-batch-negative", TRAIN, _set("datasets", "moons", "train", "batch_size", -32),
     ["datasets.moons.train.batch_size = -32"]),
    ("params-lr-nan", TRAIN, _set("datasets", "moons", "train", "learning_rate", float("nan")),
     ["learning_rate = nan", "positive number"]),
    ("params-lr-negative", TRAIN, _set("datasets", "moons", "train", "learning_rate", -0.001),
     ["learning_rate = -0.001", "positive number"]),
    ("params-hparam-unknown", TRAIN, _set("flows", "realnvp", "num_flows", 3), ["flows.realnvp", "'num_flows'", "accepted"]),
    ("params-hidden-type", TRAIN, _set("flows", "maf", "hidden_units", "64,64"), ["flows.maf", "hidden_units = '64,64'", "list"]),
    ("params-hidden-elem", TRAIN, _set("flows", "maf", "hidden_units", [64, "wide"]),
     ["flows.maf", "hidden_units = [64, 'wide']", "list of integers"]),
    ("params-hidden-zero", TRAIN, _set("flows", "maf", "hidden_units", [0, 16]), ["flows.maf", "hidden_units = [0, 16]", ">= 1"]),
    ("params-layers-zero", TRAIN, _set("flows", "maf", "num_layers", 0), ["flows.maf", "num_layers = 0", ">= 1"]),
    ("params-yaml-syntax", TRAIN, _write("params.yaml", "flow: [maf\ndataset: moons\n"), ["params.yaml", "not valid YAML"]),
    ("params-missing", TRAIN, _remove("params.yaml"), ["params.yaml not found"]),
    ("params-grid-unknown", ("stages/report.py",), _set("grid", "flows", ["maf", "nope"]), ["grid.flows[1] = 'nope'"]),
    ("params-ntrain-negative", ("stages/prepare.py", "moons"), _set("datasets", "moons", "data", "n_train", -5),
     ["datasets.moons.data", "n_train = -5", ">= 1"]),
    ("arg-dataset-unknown", ("stages/download.py", "nope"), None, ["dataset 'nope' is unknown"]),
    ("data-nan", EVAL, _nan_in("test", np.nan), ["test.npy", "NaN"]),
    ("data-inf", EVAL, _nan_in("train", np.inf), ["train.npy", "Inf"]),
    ("data-dims-3", EVAL, lambda r, s: _write_split(r, "train", np.zeros((200, 3), np.float32)),
     ["train.npy", "wrong dimensions", "[200, 3]"]),
    ("data-dims-1d", EVAL, lambda r, s: _write_split(r, "test", np.zeros((100,), np.float32)),
     ["test.npy", "wrong dimensions", "[100]"]),
    ("data-missing-file", EVAL, _remove("data/processed/moons/train.npy"), ["train.npy", "missing"]),
    ("data-missing-raw", ("stages/prepare.py", "moons"), _remove("data/raw/moons"), ["data/raw/moons is missing"]),
    ("data-train-nan", TRAIN, _nan_in("train", np.nan), ["train.npy", "NaN"]),
    ("dl-truncated-md5", ("stages/download.py", "miniboone"), _serve("data.tar.gz", lambda: _tar([(MINIBOONE, _npy())])[:300]),
     ["data.tar.gz", "MD5"]),
    ("dl-truncated-zip", ("stages/download.py", "power"),
     _serve("household_power_consumption.zip",
            lambda: _zip([("household_power_consumption.txt", "Date;Time\n" * 2000)])[:700], power={"source": "uci"}),
     ["household_power_consumption.zip", "zip"]),
    ("dl-html", ("stages/download.py", "power"),
     _serve("household_power_consumption.zip", b"<!DOCTYPE html><html><body>Please log in</body></html>",
            power={"source": "uci"}),
     ["household_power_consumption.zip", "HTML"]),
    ("dl-zip-escape", ("stages/download.py", "miniboone"),
     _serve("data.tar.gz", lambda: _zip([(MINIBOONE, _npy()), ("../evil.txt", b"owned")]), miniboone={"skip_md5": True}),
     ["'../evil.txt'", "outside"]),
    ("dl-tar-absolute", ("stages/download.py", "miniboone"),
     _serve("data.tar.gz", lambda: _tar([(MINIBOONE, _npy()), ("/tmp/flows-bad-inputs-evil.txt", b"owned")]),
            miniboone={"skip_md5": True}),
     ["/tmp/flows-bad-inputs-evil.txt", "outside"]),
    ("dl-tar-symlink", ("stages/download.py", "miniboone"),
     _serve("data.tar.gz", lambda: _tar([(MINIBOONE, ("symlink", "../../../../../etc/passwd"))]),
            miniboone={"skip_md5": True}),
     [MINIBOONE, "link"]),
    ("fs-readonly-raw", ("stages/download.py", "moons"), _chmod_ro("data/raw"), ["data/raw/", "Permission denied"], False),
    ("fs-readonly-processed", ("stages/prepare.py", "moons"), _chmod_ro("data/processed"),
     ["data/processed/", "Permission denied"], False),
    ("fs-readonly-plots", ("stages/report.py",), _chmod_ro("plots", create=True),
     ["plots/results.png", "Permission denied"], False),
    ("fs-parent-is-file", ("stages/report.py",), _make_file("plots"), ["plots/results.png", "not a writable directory"]),
    ("eval-missing-model", EVAL, None, ["models/maf-moons/config.json is missing"]),
    ("eval-run-elsewhere", EVAL, _trained_against_another_store,
     ["is not in the tracking store sqlite:///", "MLFLOW_TRACKING_URI", "dvc repro -f train@maf-moons"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(repo, server, case):
    name, args, setup, expected, *rest = case
    privileged = rest[0] if rest else True
    if not privileged and os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.fail("running as root without setpriv (util-linux), which drops root's permission bypass so that a "
                    "read-only directory refuses writes: install util-linux (Debian: apt-get install util-linux)")
    _reset(repo)
    if setup is not None:
        setup(repo, server)
    before = _snapshot(repo)
    proc = _stage(repo, *args, env=_env(server.url if name.startswith("dl-") else ""), privileged=privileged)
    after = _snapshot(repo)

    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    report = f"exit {proc.returncode}; stderr tail:\n" + "\n".join(lines[-15:])
    assert proc.returncode != 0, report
    assert "Traceback" not in proc.stderr, report
    assert last.startswith("error: "), report
    assert sum(line.startswith("error:") for line in lines) == 1, report
    for part in expected:
        assert part in last, (part, last)
    # no partial outputs: nothing written, nothing removed, no temporary files
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in before if k in after and before[k] != after[k])
    assert not added and not removed and not changed, f"added {added}, removed {removed}, changed {changed}"
    assert not Path("/tmp/flows-bad-inputs-evil.txt").exists() and not (repo / "data" / "evil.txt").exists()
    print(f"{name}: exit {proc.returncode}: {last}")
