"""Wall time and peak memory of the default pipeline, stage by stage.

Runs every stage of `dvc repro` in DVC's own order, one at a time (`dvc repro -s --force <stage>`), and prints a
markdown table of seconds and peak resident memory (the largest process of the stage, MiB).  The sum is the
wall time of a full `dvc repro` from scratch, minus DVC's own start-up once per stage.

    python benchmarks/time_repro.py [--out benchmarks/results/repro_times.md] [--only-grid]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def stage_order() -> list[str]:
    out = subprocess.run(["dvc", "repro", "--dry", "--force"], cwd=ROOT, capture_output=True, text=True, check=True)
    return re.findall(r"Running stage '([^']+)'", out.stdout)


def run_stage(name: str) -> tuple[float, float, int]:
    start = time.perf_counter()
    proc = subprocess.Popen(["dvc", "repro", "-s", "--force", name], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    parent = psutil.Process(proc.pid)

    def poll():
        nonlocal peak
        while proc.poll() is None:
            try:
                for p in [parent, *parent.children(recursive=True)]:
                    peak = max(peak, p.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.2)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    _, err = proc.communicate()
    t.join()
    if proc.returncode:
        sys.stderr.write(err[-3000:])
    return time.perf_counter() - start, peak / 2**20, proc.returncode


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = ap.parse_args()
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    rows, total = [], 0.0
    for name in stage_order():
        secs, mib, rc = run_stage(name)
        total += secs
        rows.append(f"| {name} | {secs:.1f} | {mib:.0f} | {'ok' if rc == 0 else f'FAILED ({rc})'} |")
        print(rows[-1], flush=True)
    table = "\n".join(["| stage | seconds | peak RSS (MiB) | status |", "|---|---|---|---|", *rows,
                       f"| **total** | **{total:.1f}** ({total / 60:.1f} min) | | |"])
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"# Default `dvc repro`, stage by stage ({os.cpu_count()} CPUs)\n\n{table}\n")


if __name__ == "__main__":
    main()
