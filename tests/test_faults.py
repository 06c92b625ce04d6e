"""Faults: `kill -9` during download, preparation and training, then `dvc repro`: it completes with the same bytes
(download, prepare) or the same numbers (training, bitwise) as an uninterrupted run, and leaves no temporary files.
A processed .npy that was modified or truncated after preparation is detected by its manifest SHA-256 and not used.

Each fault runs the real DVC pipeline in a temporary copy of the repository (tiny params). The download of the
UCI POWER zip (a synthetic one) comes from a throttled HTTP server on 127.0.0.1, set as params.yaml's data.mirror.
DVC itself needs nothing after a SIGKILL: its rwlock entry of the dead process is dropped with a warning.
The training fault reruns the killed stage's chain (download -> prepare -> train -> evaluate), not the whole
pipeline: report, overview and the exp stages only read its outputs, and would add ~90 s on 2 cores.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

import flows.datasets as fd
from flows.datasets import power
from helpers import STAGE_DROP, LocalHTTPServer, copy_repo, load_params, stage_env, tiny_moons

EXTRA_SKIP = {"checkpoints", "benchmarks"}  # not copied besides helpers.TOP_SKIP
DVC_KILLED = "had been killed. Auto removed it from the lock file"


# ------------------------------------------------------------------------------------------------ helpers
def _env() -> dict:
    return stage_env(drop=(*STAGE_DROP, "FLOWS_DATA_MIRROR"), git_identity=True, TF_USE_LEGACY_KERAS="1")


def run(repo, *cmd, check=True, timeout=300):
    proc = subprocess.run(list(cmd), cwd=repo, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def kill_when(repo, cmd, ready, timeout=180):
    """Start ``cmd`` in its own process group; SIGKILL the whole group as soon as ``ready()`` is true."""
    log = open(Path(repo).parent / f"fault-{cmd[-1].replace('@', '_')}.log", "w")  # outside the repository
    proc = subprocess.Popen(cmd, cwd=repo, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + timeout
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"{' '.join(cmd)} ended ({proc.returncode}) before the kill:\n"
                                     + Path(log.name).read_text()[-3000:])
            if time.time() > deadline:
                raise AssertionError(f"{' '.join(cmd)}: not ready after {timeout} s:\n"
                                     + Path(log.name).read_text()[-3000:])
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
        Path(log.name).unlink(missing_ok=True)


def digests(directory) -> dict:
    d = Path(directory)
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def make_repo(base: Path, edit) -> Path:
    repo = copy_repo(base / "repo", extra_skip=EXTRA_SKIP)
    params = load_params()
    params["figures"] = {"energy_layers": 2, "energy_steps": 10}
    edit(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(repo, "git", "init", "-q")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "tiny pipeline")
    return repo


class ThrottledServer(LocalHTTPServer):
    """Serves ``files`` {name: bytes} with HTTP Range; while ``throttle`` is set, 16 KiB every ``throttle`` s."""

    def __init__(self):
        self.files, self.log, self.throttle = {}, [], None
        super().__init__()

    def handle_get(self, request):
        name = self.name_of(request)
        rng = request.headers.get("Range")
        self.log.append((name, rng))
        if name not in self.files:
            request.send_error(404)
            return
        body = self.files[name]
        start = self.send_range_head(request, body)
        try:
            for i in range(start, len(body), 1 << 14):
                request.wfile.write(body[i:i + (1 << 14)])
                request.wfile.flush()
                if self.throttle:
                    time.sleep(self.throttle)
        except (BrokenPipeError, ConnectionResetError):  # the client was killed
            pass


def uci_zip(n=60000) -> bytes:
    """A synthetic UCI household power zip (';' separated, some '?' rows): ~1.5 MB, ~0.5 s to prepare."""
    rng = np.random.default_rng(7)
    v = rng.random((n, 7))
    rows = ["Date;Time;Global_active_power;Global_reactive_power;Voltage;Global_intensity;"
            "Sub_metering_1;Sub_metering_2;Sub_metering_3"]
    for i in range(n):
        hm = f"{(i // 60) % 24:02d}:{i % 60:02d}:00"
        if i % 97 == 3:
            rows.append(f"16/12/2006;{hm};?;?;?;?;?;?;")
        else:
            a = v[i]
            rows.append(f"16/12/2006;{hm};{a[0]:.3f};{a[1]:.3f};{230 + a[2]:.2f};{a[3]:.1f};"
                        f"{a[4]:.3f};{a[5]:.3f};{a[6]:.3f}")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo("household_power_consumption.txt", (2012, 8, 30, 0, 0, 0)),
                    "\n".join(rows) + "\n", zipfile.ZIP_DEFLATED)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ POWER (uci)
@pytest.fixture(scope="module")
def server():
    s = ThrottledServer()
    s.files[power.UCI_ZIP] = uci_zip()
    yield s
    s.close()


@pytest.fixture(scope="module")
def power_repo(tmp_path_factory, server):
    def edit(params):
        params["grid"] = {"flows": ["maf"], "datasets": ["power"]}
        params["flow"], params["dataset"] = "maf", "power"
        params["data"] = {"mirror": server.url}
        params["flows"]["maf"] = {"num_layers": 2, "hidden_units": [16, 16]}
        params["datasets"] = {"power": {"data": {"source": "uci"},
                                        "train": {"steps": 4, "batch_size": 64, "eval_every": 2}}}

    return make_repo(tmp_path_factory.mktemp("faults-power"), edit)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, server):
    """An uninterrupted download and preparation of the same zip, in this process."""
    base = tmp_path_factory.mktemp("faults-reference")
    server.throttle = None
    fd.download("power", base / "raw", mirror=server.url, source="uci")
    fd.prepare("power", base / "raw", base / "processed", seed=0, source="uci")
    return base


def test_kill_9_during_download_then_repro_resumes_and_gives_the_same_bytes(power_repo, server, reference):
    repo = power_repo
    raw = repo / "data" / "raw"
    part = raw / ".power.partial" / "power" / f"{power.UCI_ZIP}.part"
    size = len(server.files[power.UCI_ZIP])
    server.log.clear()
    server.throttle = 0.02  # ~0.8 MB/s: the transfer takes ~2 s
    try:
        kill_when(repo, ["dvc", "repro", "download@power"], lambda: _size(part) >= 1 << 16)
    finally:
        server.throttle = None
    got = part.stat().st_size
    assert 0 < got < size and not (raw / "power").exists()  # killed mid-transfer, nothing published

    proc = run(repo, "dvc", "repro", "download@power")  # what a user does: nothing else
    out = proc.stdout + proc.stderr
    assert DVC_KILLED in out  # DVC found the dead process in .dvc/tmp/rwlock and dropped it by itself
    resumed = [int(r.split("=")[1].split("-")[0]) for name, r in server.log if name == power.UCI_ZIP and r]
    assert resumed and resumed[-1] >= got  # the second run resumed the .part with a Range request

    assert digests(raw / "power") == digests(reference / "raw")  # byte-identical, source.json included
    assert sorted(os.listdir(raw)) == ["power"]  # no .power.partial or other temporary directory left
    assert "download@power" not in run(repo, "dvc", "status", "download@power").stdout


def test_kill_9_during_prepare_then_repro_gives_the_same_bytes(power_repo, reference):
    repo = power_repo
    processed = repo / "data" / "processed"
    run(repo, "dvc", "repro", "download@power")  # nothing to do after the test above
    seen = []

    def tmp_dir_exists():
        seen[:] = list(processed.glob(".power.tmp-*")) if processed.is_dir() else []
        return bool(seen)

    kill_when(repo, ["dvc", "repro", "prepare@power"], tmp_dir_exists)
    assert seen[0].is_dir() and not (processed / "power").exists()  # killed mid-way: a stale temporary directory

    proc = run(repo, "dvc", "repro", "prepare@power")
    assert DVC_KILLED in proc.stdout + proc.stderr
    assert sorted(os.listdir(processed)) == ["power"]  # the stale temporary directory is gone
    got, want = digests(processed / "power"), digests(reference / "processed")
    assert sorted(got) == ["manifest.json", "test.npy", "train.npy", "val.npy"]
    assert got == want  # same SHA-256 for every file, the manifest included
    manifest = json.loads((processed / "power" / "manifest.json").read_text())
    for split in ("train", "val", "test"):
        assert manifest["splits"][split]["sha256"] == got[f"{split}.npy"]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def _flip(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_processed_file_is_detected_by_load_splits(reference, tmp_path):
    out = tmp_path / "processed"
    shutil.copytree(reference / "processed", out)
    fd.load_splits(out)  # verified once, then cached while unchanged
    st = (out / "train.npy").stat()
    _flip(out / "train.npy")
    os.utime(out / "train.npy", ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: still caught
    with pytest.raises(fd.ChecksumError) as err:
        fd.load_splits(out)
    msg = str(err.value)
    assert "\n" not in msg and str(out / "train.npy") in msg and "checksum" in msg
    assert "dvc repro -f prepare@power" in msg
    shutil.copy2(reference / "processed" / "train.npy", out / "train.npy")
    with open(out / "val.npy", "r+b") as f:
        f.truncate(os.path.getsize(out / "val.npy") // 2)
    with pytest.raises(fd.ChecksumError, match=r"corrupt file .*val\.npy: sha256 checksum"):
        fd.load_splits(out)
    with pytest.raises(fd.ChecksumError, match=r"val\.npy: it cannot be read as \.npy"):
        fd.load_splits(out, verify=False)  # even unverified, a truncated file is refused (not a crash)


@pytest.mark.parametrize("fault", ["flipped", "truncated"])
def test_corrupt_processed_file_stops_the_train_stage(power_repo, reference, fault):
    repo = power_repo
    data = repo / "data" / "processed" / "power"
    assert (data / "manifest.json").exists()  # prepared by the tests above
    victim = data / ("train.npy" if fault == "flipped" else "val.npy")
    if fault == "flipped":
        _flip(victim)
        assert victim.stat().st_size == (reference / "processed" / "train.npy").stat().st_size
    else:
        with open(victim, "r+b") as f:
            f.truncate(victim.stat().st_size - 1000)

    run(repo, "dvc", "repro", "-s", "configure")  # the cell's settings file (configs/maf-power.json) is a train dep
    proc = run(repo, "dvc", "repro", "-s", "train@maf-power", check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    want = f"corrupt file data/processed/power/{victim.name}: sha256 checksum"
    assert len(errors) == 1 and want in errors[0] and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "dvc repro -f prepare@power" in errors[0]
    for path in ("models", "metrics/train", "metrics/timing", "plots/history", "checkpoints"):
        assert not (repo / path).exists() or not any((repo / path).iterdir()), path
    if (repo / "mlflow.db").exists():
        con = sqlite3.connect(repo / "mlflow.db")
        try:
            assert con.execute("select count(*) from runs").fetchone()[0] == 0
        finally:
            con.close()

    # the fix the message names; DVC also sees the modified output (`dvc status`: prepare@power changed outs)
    assert "prepare@power" in run(repo, "dvc", "status", "prepare@power").stdout
    run(repo, "dvc", "repro", "-f", "prepare@power")
    assert digests(data) == digests(reference / "processed")
    fd.load_splits(data)


# ------------------------------------------------------------------------------------------------ training
def _moons(steps=400):
    def edit(params):
        tiny_moons(params, steps=steps, eval_every=100, checkpoint_every=20)
    return edit


def _numbers(repo):
    ev = json.loads((repo / "metrics" / "eval" / "maf-moons.json").read_text())
    with open(repo / "plots" / "history" / "maf-moons.csv") as fh:
        hist = [(r["step"], r["train_loss"], r["val_loss"]) for r in csv.DictReader(fh)]
    tr = json.loads((repo / "metrics" / "train" / "maf-moons.json").read_text())
    # where a resume started is run-to-run information: the timing file (not a DVC metric) holds it
    tr["resumed_from_step"] = json.loads((repo / "metrics" / "timing" / "maf-moons.json").read_text())["resumed_from_step"]
    return ev, hist, tr


def test_kill_9_during_training_then_repro_gives_the_same_numbers(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("faults-train"), _moons())
    ref = make_repo(tmp_path_factory.mktemp("faults-train-ref"), _moons())
    # the uninterrupted run, meanwhile: download -> prepare -> train -> evaluate of the same cell in another copy
    ref_log = open(ref.parent / "reference.log", "w")
    ref_proc = subprocess.Popen(["dvc", "repro", "evaluate@maf-moons"], cwd=ref, env=_env(), stdout=ref_log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ckpt = repo / "checkpoints" / "maf-moons" / "checkpoint"  # the index file: written once a checkpoint is whole
        kill_when(repo, ["dvc", "repro", "train@maf-moons"], ckpt.exists, timeout=300)
        assert ckpt.exists() and not (repo / "models" / "maf-moons").exists()

        # what a user does: run it again. The chain of the killed stage, download -> prepare -> train -> evaluate;
        # (report, overview and the exp stages only read these outputs and would add ~90 s)
        proc = run(repo, "dvc", "repro", "evaluate@maf-moons", timeout=600)
        assert DVC_KILLED in proc.stdout + proc.stderr
        assert ref_proc.wait(timeout=600) == 0, (ref.parent / "reference.log").read_text()[-3000:]
    finally:
        if ref_proc.poll() is None:
            os.killpg(ref_proc.pid, signal.SIGKILL)
            ref_proc.wait(timeout=30)
        ref_log.close()

    ev, hist, tr = _numbers(repo)
    ev_ref, hist_ref, tr_ref = _numbers(ref)
    assert tr["resumed_from_step"] >= 20 and tr_ref["resumed_from_step"] == 0 and tr["steps"] == tr_ref["steps"] == 400
    # bitwise: the same float64 numbers (their JSON / CSV text), not merely close
    assert ev["test_ll"] == ev_ref["test_ll"] and ev["test_ll_se"] == ev_ref["test_ll_se"]
    assert hist == hist_ref and len(hist) == 4
    assert (tr["best_step"], tr["best_val_nll"]) == (tr_ref["best_step"], tr_ref["best_val_nll"])
    assert digests(repo / "data" / "processed") == digests(ref / "data" / "processed")
    assert not (repo / "checkpoints").exists()  # removed once the outputs were written
    assert sorted(os.listdir(repo / "models")) == ["maf-moons"]  # no temporary directory left
    status = run(repo, "dvc", "status", "train@maf-moons", "evaluate@maf-moons").stdout
    assert "changed" not in status, status
