"""params.yaml validation: every bad value stops a stage with one line naming the key, the value and what is
accepted, before any work is done."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.common import ParamsError, load_params, run_main

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


def test_paper_power_rows_build_and_match_their_published_row():
    """Every cell of the paper grid is a named configuration of a registered flow that builds for POWER (6-D) and
    maps to its own row of the papers' tables (flows/published.py), each row once."""
    import flows
    from flows.published import lookup
    from stages.common import cell_settings, flow_of

    params = load_params(ROOT / "params-paper.yaml")
    assert params["grid"]["datasets"] == ["power"]
    rows = {}
    for name in params["grid"]["flows"]:
        hparams, config = cell_settings(params, name, "power")
        flow = flows.build_flow(flow_of(params, name), [6], **hparams)
        assert flow.config["flow"] == flow_of(params, name)
        pub = lookup(flow_of(params, name), "power", params["flows"][name])
        assert pub is not None, name
        rows[pub[0]] = name
        if name == "ffjord":  # 1.6 s a step on one core: a small budget, validated on a 20k-row subset
            assert config.steps >= 500 and config.max_val == 20000
        else:
            assert config.steps >= 5000 and config.max_val == 184435  # the whole validation split
    assert set(rows) == {"Gaussian", "MADE", "MADE MoG", "Real NVP (5)", "Real NVP (10)", "MAF (5)", "MAF (10)",
                         "MAF MoG (5)", "RQ-NSF (C)", "RQ-NSF (AR)", "Glow (NSF's re-run)", "NAF-DDSF (5)",
                         "FFJORD"}, rows  # every row of the POWER column
    assert len(rows) == len(params["grid"]["flows"])  # no two cells on one published row


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
            assert train.logit_alpha == {"mnist": 1e-6, "celeba": 0.05}[ds]
            assert train.steps >= 50_000
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
    (("seed",), -1, ["seed = -1", "integer >= 0"]),
    (("seed",), "zero", ["seed", "'zero'"]),
    (("grid", "flows"), ["maf", "nope"], ["grid.flows[1]", "'nope'", "accepted flows"]),
    (("grid", "datasets"), [], ["grid.datasets", "at least 1 long"]),
    (("datasets", "moons", "train", "steps"), -5, ["datasets.moons.train.steps", "-5", "integer >= 1"]),
    (("datasets", "moons", "train", "steps"), 1.5, ["datasets.moons.train.steps", "1.5"]),
    (("datasets", "moons", "train", "learning_rate"), "fast", ["learning_rate", "'fast'", "positive number"]),
    (("datasets", "moons", "train", "learning_rate"), 0, ["learning_rate", "positive number"]),
    (("datasets", "moons", "train", "epochs"), 3, ["datasets.moons.train", "'epochs'", "accepted", "steps"]),
    (("flows", "maf", "num_layers"), "five", ["flows.maf", "num_layers", "'five'", "integer"]),
    (("flows", "maf", "depth"), 3, ["flows.maf", "'depth'", "accepted", "num_layers"]),
    (("flows", "nope"), {}, ["flows.nope is invalid", "accepted flows", "maf", "named configuration"]),
    (("flows", "maf10"), {"flow": "maf", "num_layer": 10}, ["flows.maf10 has no setting 'num_layer'", "num_layers"]),
    (("datasets", "nope"), {}, ["datasets has no setting 'nope'", "accepted", "moons"]),
    (("colour",), "red", ["'colour'", "accepted", "grid"]),
    (("datasets", "moons", "train", "jit_compile"), "yes", ["datasets.moons.train.jit_compile", "'yes'", "False, True, auto"]),
    (("figures", "energy_steps"), 0, ["figures.energy_steps", "integer >= 1"]),
    # a section written as null is refused, not silently defaulted
    (("datasets", "moons", "train"), None, ["datasets.moons.train is empty (null)", "accepted", "steps"]),
    # one bin cannot make a spline (it diverged at step 2 before)
    (("flows", "nsf", "num_bins"), 1, ["flows.nsf.num_bins = 1", "integer >= 2"]),
    # a model too large for memory is refused with its size, before anything is allocated
    (("flows", "maf", "hidden_units"), [1000000000], ["flows.maf", "at least", "weights", "GiB", "memory"]),
    # each form of a two-form flow has its own options: a key that does nothing for a form is refused
    (("flows", "realnvp", "image", "hidden_units"), [8], ["flows.realnvp.image has no setting 'hidden_units'",
                                                           "num_filters"]),
    (("flows", "glow", "vector", "num_filters"), 8, ["flows.glow.vector has no setting 'num_filters'", "hidden_units"]),
    (("flows", "realnvp", "num_layers"), 3, ["flows.realnvp has no setting 'num_layers'", "image, vector"]),
    (("datasets", "digits", "overrides", "realnvp"), {"hparams": {"batch_norm": True}},
     ["datasets.digits.overrides.realnvp.hparams has no setting 'batch_norm'", "num_filters"]),
    (("flows", "maf", "activation"), "swishy", ["flows.maf.activation = 'swishy'", "accepted", "gelu"]),
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
    from flows.training import TrainConfig

    out = TrainConfig.from_options({"steps": 10}, "datasets.x.train", seed=3)
    assert out.steps == 10 and out.batch_size == TrainConfig.batch_size and out.seed == 3


def test_run_main_keeps_the_traceback_of_a_bug(capsys):
    """Only the project's own errors (and OSError) become one line and exit 2; a bug keeps its traceback."""
    import flows

    def bad_option():
        flows.build_flow("maf", [2], num_layers=0)

    with pytest.raises(SystemExit) as info:
        run_main(bad_option)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: flows.maf.num_layers = 0 is invalid"), err

    def refused_by_builder():  # options valid one by one, refused together for this event shape
        flows.build_flow("glow", [8, 8, 1], num_scales=4)

    with pytest.raises(SystemExit):
        run_main(refused_by_builder)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: flows.glow on event shape [8, 8, 1]:"), err

    def bug():
        raise ValueError("an internal inconsistency")  # not a project error type: a bug

    with pytest.raises(ValueError, match="internal inconsistency"):
        run_main(bug)
    with pytest.raises(ZeroDivisionError):
        run_main(lambda: 1 / 0)


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
