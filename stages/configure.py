"""Stage configure: the resolved settings of every cell, one JSON file each, for the train stages to depend on.

Writes configs/<flow>-<dataset>.json for every flow x dataset of params.yaml's grid, and configs/experiment.json
for the single experiment chosen by ``flow`` and ``dataset`` (train_exp). Each file holds

    {"flow": ..., "dataset": ..., "seed": ..., "hparams": {...}, "train": {...}, "data": {...}}

``hparams`` and ``train`` are the cell's settings as :func:`stages.common.cell_settings` resolves them (the flow's
section and the data set's ``train`` section, with the data set's ``overrides.<flow>`` on top; validated and
completed with the defaults; ``train`` includes ``logit_alpha``), ``data`` is the data set's ``data`` section.

train@<flow>-<dataset> depends on its own file instead of on sections of params.yaml: DVC compares the files'
hashes, so an edit of one flow's hyper-parameters or of one data set's override reruns exactly the cells whose
settings changed, and ``dvc status`` names them once this stage has run. The files are written in a fixed
form (sorted keys), so the same settings always give the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common import (  # noqa: E402
    StageError, atomic_path, cell_name, cell_settings, flow_of, load_params, params_arg, run_main,
)

#: the directory of the cells' settings files (a DVC output, kept in git)
CONFIG_DIR = Path("configs")
#: the settings file of the experiment chosen by params.yaml's ``flow`` and ``dataset``
EXPERIMENT = "experiment"
#: the keys of every settings file
KEYS = ("flow", "model", "dataset", "seed", "hparams", "train", "data")


def config_path(flow: str, dataset: str) -> Path:
    """The settings file of train@<flow>-<dataset>: configs/<flow>-<dataset>.json."""
    return CONFIG_DIR / f"{cell_name(flow, dataset)}.json"


def experiment_path() -> Path:
    """The settings file of train_exp: configs/experiment.json."""
    return CONFIG_DIR / f"{EXPERIMENT}.json"


def resolve(params: dict, flow: str, dataset: str) -> dict:
    """The settings of one cell, from validated params (:func:`stages.common.load_params`): the one place that
    resolves them for the pipeline."""
    hparams, config = cell_settings(params, flow, dataset)
    train = {k: v for k, v in dataclasses.asdict(config).items() if k != "seed"}
    return {"flow": flow, "model": flow_of(params, flow), "dataset": dataset, "seed": params["seed"],
            "hparams": hparams, "train": train, "data": params["datasets"][dataset]["data"]}


def to_text(settings: dict) -> str:
    return json.dumps(settings, indent=2, sort_keys=True) + "\n"


def read_config(path: str | Path, flow: str, dataset: str) -> dict:
    """The settings written by this stage for ``flow`` x ``dataset`` (for the train stage); raises
    :class:`stages.common.StageError` if the file is missing, unreadable or for another cell."""
    path = Path(path)
    again = "run the configure stage first (dvc repro configure)"
    try:
        settings = json.loads(path.read_text())
    except FileNotFoundError:
        raise StageError(f"{path} is missing: {again}") from None
    except (OSError, ValueError) as exc:
        raise StageError(f"{path}: cannot read the settings ({' '.join(str(exc).split())}); {again}") from None
    if not isinstance(settings, dict) or set(settings) != set(KEYS):
        raise StageError(f"{path}: not a settings file (expected the keys {', '.join(KEYS)}); {again}")
    if (settings["flow"], settings["dataset"]) != (flow, dataset):
        raise StageError(f"{path} holds the settings of {cell_name(settings['flow'], settings['dataset'])}, "
                         f"not of {cell_name(flow, dataset)}; {again}")
    return settings


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    params_arg(ap)
    ap.add_argument("--out", default=str(CONFIG_DIR), help="directory of the settings files (default configs)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    params = load_params(args.params)
    files = {config_path(f, d).name: to_text(resolve(params, f, d))
             for f in params["grid"]["flows"] for d in params["grid"]["datasets"]}
    files[experiment_path().name] = to_text(resolve(params, params["flow"], params["dataset"]))

    old = {p.name: p.read_text() for p in out.glob("*.json")} if out.is_dir() else {}
    with atomic_path(out) as tmp:  # all files at once; files of cells no longer in the grid go
        tmp.mkdir()
        for name, text in files.items():
            (tmp / name).write_text(text)
    changed = sorted(Path(n).stem for n, text in files.items() if old.get(n) != text)
    removed = sorted(Path(n).stem for n in set(old) - set(files))
    parts = [f"{what}: {_names(cells)}" for what, cells in (("changed", changed), ("removed", removed)) if cells]
    print(f"configure: {len(files)} settings files in {out}/ ({'; '.join(parts) or 'none changed'})")


def _names(cells: list[str], most: int = 8) -> str:
    more = f" and {len(cells) - most} more" if len(cells) > most else ""
    return ", ".join(cells[:most]) + more


if __name__ == "__main__":
    run_main(main)
