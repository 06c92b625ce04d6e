"""params.yaml validation: every bad value stops a stage with one line naming the key, the value and what is
accepted, before any work is done."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.common import ParamsError, check_train, load_params

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "params.yaml").read_text())


def write(tmp_path, params) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_default_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params["flow"] in params["flows"]
    assert params["grid"]["flows"] and params["grid"]["datasets"]
    for ds in params["grid"]["datasets"]:
        assert params["datasets"][ds]["train"]["steps"] > 0


def test_paper_params_are_valid():
    params = load_params(ROOT / "params-paper.yaml")
    assert params["datasets"]["power"]["train"]["steps"] >= 100_000


def test_paper_image_params_are_valid_and_every_cell_builds():
    """params-paper-images.yaml: Real NVP and Glow on MNIST and CelebA 64x64; each cell's architecture fits its
    images (Glow's levels each halve the side: 28 allows 2, 64 allows 4) and the logit alpha is the protocol's."""
    import flows
    import flows.datasets as fd
    from stages.common import cell_settings

    params = load_params(ROOT / "params-paper-images.yaml")
    assert set(params["grid"]["datasets"]) == {"mnist", "celeba"}
    for flow in params["grid"]["flows"]:
        for ds in params["grid"]["datasets"]:
            hparams, train = cell_settings(params, flow, ds)
            assert train["logit_alpha"] == {"mnist": 1e-6, "celeba": 0.05}[ds]
            assert train["steps"] >= 50_000
            built = flows.build_flow(flow, fd.DATASETS[ds].event_shape, **hparams)
            assert len(built.layers) > 10, (flow, ds)


def mutate(path, value):
    params = copy.deepcopy(BASE)
    node = params
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return params


BAD = [
    (("flow",), "nope", ["flow", "'nope'", "accepted flows", "maf"]),
    (("dataset",), "nope", ["dataset", "'nope'", "accepted datasets", "moons"]),
    (("seed",), -1, ["seed", "-1", "non-negative integer"]),
    (("seed",), "zero", ["seed", "'zero'"]),
    (("grid", "flows"), ["maf", "nope"], ["grid.flows[1]", "'nope'", "accepted flows"]),
    (("grid", "datasets"), [], ["grid.datasets", "non-empty list"]),
    (("datasets", "moons", "train", "steps"), -5, ["datasets.moons.train.steps", "-5", "integer >= 1"]),
    (("datasets", "moons", "train", "steps"), 1.5, ["datasets.moons.train.steps", "1.5"]),
    (("datasets", "moons", "train", "learning_rate"), "fast", ["learning_rate", "'fast'", "positive number"]),
    (("datasets", "moons", "train", "learning_rate"), 0, ["learning_rate", "positive number"]),
    (("datasets", "moons", "train", "epochs"), 3, ["datasets.moons.train", "'epochs'", "accepted", "steps"]),
    (("flows", "maf", "num_layers"), "five", ["flows.maf", "num_layers", "'five'", "integer"]),
    (("flows", "maf", "depth"), 3, ["flows.maf", "'depth'", "accepted", "num_layers"]),
    (("flows", "nope"), {}, ["flows.nope", "accepted flows"]),
    (("datasets", "nope"), {}, ["datasets.nope", "accepted datasets"]),
    (("colour",), "red", ["'colour'", "accepted", "grid"]),
    (("datasets", "moons", "train", "jit_compile"), "yes", ["datasets.moons.train.jit_compile", "'yes'", "true or false"]),
    (("figures", "energy_steps"), 0, ["figures.energy_steps", "positive integer"]),
]


@pytest.mark.parametrize("path,value,expected", BAD, ids=[".".join(b[0]) + "=" + repr(b[1]) for b in BAD])
def test_bad_values_are_named(tmp_path, path, value, expected):
    with pytest.raises(ParamsError) as info:
        load_params(write(tmp_path, mutate(path, value)))
    msg = str(info.value)
    assert "\n" not in msg
    for part in expected:
        assert part in msg, (part, msg)


def test_train_defaults_filled():
    out = check_train({"steps": 10}, "datasets.x.train")
    assert out["steps"] == 10 and out["batch_size"] > 0 and 0 < out["learning_rate"]


def test_stage_exits_with_one_line(tmp_path):
    """A stage run with a bad params.yaml exits 2 with one 'error:' line and writes nothing."""
    write(tmp_path, mutate(("datasets", "moons", "train", "steps"), -5))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "train.py"), "--flow", "maf", "--dataset", "moons"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "datasets.moons.train.steps = -5" in errors[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
