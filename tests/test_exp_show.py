"""README's `dvc exp show` command (the experiment's changed parameters and its test log-likelihood beside the
baseline) renders in a 100-column terminal with no '…' (elided) column, in a copy of the repository whose stages
are recorded over placeholder outputs (nothing trains) and one experiment saved with `dvc exp save`."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import yaml

from helpers import ROOT, copy_repo, stage_env
from test_dvc_deps import PLACEHOLDERS


def readme_command() -> str:
    lines = [l.strip() for l in (ROOT / "README.md").read_text().splitlines() if l.strip().startswith("dvc exp show ")]
    assert len(lines) == 1, lines
    return lines[0].split("  #")[0].strip()


def test_readme_exp_show_fits_100_columns(tmp_path):
    repo = copy_repo(tmp_path / "repo", extra_skip=())
    for sub in ("metrics", "experiment"):  # the committed results, so the baseline has its numbers
        subprocess.run(["cp", "-r", str(ROOT / sub), str(repo / sub)], check=True)
    env = stage_env(git_identity=True, COLUMNS="100")

    def run(*cmd):
        proc = subprocess.run(list(cmd), cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        return proc.stdout

    run("git", "init", "-q")
    run(sys.executable, "-c", PLACEHOLDERS)
    run("dvc", "commit", "-f", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "baseline")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["flow"] = "nsf" if params["flow"] != "nsf" else "maf"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    m = json.loads((repo / "metrics" / "experiment.json").read_text())
    m["test_ll"] += 0.25
    (repo / "metrics" / "experiment.json").write_text(json.dumps(m))
    run("dvc", "commit", "-f", "-q")
    run("dvc", "exp", "save", "-n", "other-flow")
    out = run(*shlex.split(readme_command()), "--no-pager")
    assert "…" not in out, out
    assert max(len(l) for l in out.splitlines()) <= 100, out
    assert "test_ll" in out and "params.yaml:flow" in out and "[other-flow]" in out, out
    assert re.search(rf"other-flow\]\s+{m['test_ll']:.4f}\s+{params['flow']}", out), out
