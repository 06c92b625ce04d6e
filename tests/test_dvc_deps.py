"""dvc.yaml's dependencies are exact: every stage depends on the project code it imports, and each train cell on
its own settings only.

* Coverage, checked statically so that it stays true as code moves: from each stage's script, every
  ``import``/``from ... import`` (function-local ones included, parent packages' ``__init__`` included) is
  followed through the project's modules; each project file reached must lie under a dep of that stage.
* In a temporary copy of the repository, with ``dvc status`` only (nothing is trained): the copy is made clean
  without running anything (placeholder outputs, then ``dvc commit -f`` records the current code and params),
  so the tests do not depend on the committed dvc.lock being current. Then one edit, and ``dvc status --json``
  must name exactly the stages that the edit concerns.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, copy_repo, stage_env

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
#: the stages of both pipelines: the default one (dvc.yaml) and the paper-scale one (paper/dvc.yaml, its stages
#: run from the repository root: wdir ..), the latter's names prefixed with "paper:"
STAGES = {**DVC_YAML["stages"], **{f"paper:{k}": v.get("do", v) for k, v in
                                   yaml.safe_load((ROOT / "paper" / "dvc.yaml").read_text())["stages"].items()}}
#: `python <script>.py` in a stage's command
SCRIPT_RE = re.compile(r"(?:^|[\s;&|(])python3?\s+(?:-\S+\s+)*(\S+\.py)\b")
#: calls that import a module named by a string
DYNAMIC_IMPORTS = {"import_module", "__import__"}


# --------------------------------------------------------------------------------------- the import graph
def _module_file(name: str, search: list[Path]) -> Path | None:
    """The project file of module ``name`` (``a/b.py`` or ``a/b/__init__.py`` under a directory of ``search``)."""
    for base in search:
        p = base.joinpath(*name.split("."))
        if (p / "__init__.py").is_file():
            return (p / "__init__.py").resolve()
        if p.with_suffix(".py").is_file():
            return p.with_suffix(".py").resolve()
    return None


def _imported_names(tree: ast.AST, package: str | None) -> tuple[list[str], list[str]]:
    """Every module name ``tree`` may import anywhere (module level, functions, branches), each ``from a
    import b`` giving both ``a`` and ``a.b``; and the places of imports by a computed name (not followed)."""
    names, dynamic = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if not package:
                    continue  # a relative import in a script: fails at run time, imports nothing of ours
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            names.append(module)
            names += [f"{module}.{alias.name}" for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if fname in DYNAMIC_IMPORTS and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
                    names.append(arg.value)
                else:
                    dynamic.append(f"line {node.lineno}")
    return names, dynamic


def import_closure(script: Path) -> tuple[set[Path], list[str]]:
    """The project files that running ``script`` may execute: the script and every project module reached by
    following imports (sys.path as ``python <script>`` has it after the stages' ``sys.path.insert(0, ROOT)``:
    the repository first, then the script's directory). Also the imports by computed names found on the way."""
    script = script.resolve()
    search = [ROOT, script.parent]
    seen: dict[Path, str | None] = {}
    dynamic: list[str] = []
    todo: list[tuple[str | None, Path]] = [(None, script)]
    while todo:
        module, path = todo.pop()
        if path in seen:
            continue
        seen[path] = module
        package = (module if path.name == "__init__.py" else module.rpartition(".")[0]) if module else None
        names, dyn = _imported_names(ast.parse(path.read_text(), str(path)), package)
        dynamic += [f"{path.relative_to(ROOT)}: {d}" for d in dyn]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # `import a.b.c` runs a/__init__.py and a/b/__init__.py first
                sub = ".".join(parts[:i])
                found = _module_file(sub, search)
                if found is None:
                    break  # not ours (or an attribute of a module of ours)
                todo.append((sub, found))
    return set(seen), dynamic


def stage_scripts(stage: dict) -> list[Path]:
    cmd = stage["cmd"] if isinstance(stage["cmd"], str) else " ".join(stage["cmd"])
    return [ROOT / s for s in SCRIPT_RE.findall(cmd)]


def dep_paths(stage: dict) -> list[str]:
    return [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps") or []]


def covered(path: Path, deps: list[str]) -> bool:
    """Whether a dep of ``deps`` is ``path`` or a directory above it."""
    for dep in deps:
        if "${" in dep:
            continue  # data, per matrix item: never code
        d = (ROOT / dep).resolve()
        if path == d or d in path.parents:
            return True
    return False


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_depends_on_every_file_it_imports(name):
    stage = STAGES[name]
    scripts = stage_scripts(stage)
    assert scripts, f"{name}: no `python <script>.py` in its cmd {stage['cmd']!r}"
    deps = dep_paths(stage)
    missing, dynamic = set(), []
    for script in scripts:
        assert script.is_file(), f"{name}: {script.relative_to(ROOT)} (its cmd) does not exist"
        files, dyn = import_closure(script)
        missing |= {f for f in files if not covered(f, deps)}
        dynamic += dyn
    assert not dynamic, (f"{name}: imports by a computed name, which this check cannot follow: {dynamic}; import "
                         f"the modules by name instead (or extend tests/test_dvc_deps.py)")
    assert not missing, (f"dvc.yaml: stage {name} runs code it does not depend on; add to its deps: "
                         f"{sorted(str(f.relative_to(ROOT)) for f in missing)}")


@pytest.mark.parametrize("name", sorted(STAGES))
def test_code_deps_exist(name):
    """A code dep that no longer exists (a module moved) makes DVC refuse the stage: say which."""
    for dep in dep_paths(STAGES[name]):
        if dep.endswith(".py") or dep.split("/")[0] in ("flows", "stages"):
            assert (ROOT / dep).exists(), f"dvc.yaml: stage {name} depends on {dep}, which does not exist"


# a check of the checker: what the scripts import at module level (really executed) is in the static closure
PROBE = """
import importlib.util, json, sys
root, script = sys.argv[1], sys.argv[2]
sys.path[0] = str(__import__("pathlib").Path(script).parent)   # as `python <script>` has it
spec = importlib.util.spec_from_file_location("stage_under_test", script)
spec.loader.exec_module(importlib.util.module_from_spec(spec))  # module level only: no main()
files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
installed = tuple(p.rstrip("/") + "/" for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})  # .venv may be in root
print(json.dumps(sorted(f for f in files if f and f.startswith(root + "/") and not f.startswith(installed))))
"""


def test_static_closure_contains_what_module_level_imports_load(tmp_path):
    scripts = sorted({s for stage in STAGES.values() for s in stage_scripts(stage)})
    for script in scripts:
        proc = subprocess.run([sys.executable, "-c", PROBE, str(ROOT), str(script)], cwd=tmp_path,
                              env=stage_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        loaded = {Path(f).resolve() for f in json.loads(proc.stdout.splitlines()[-1])}
        static, _ = import_closure(script)
        assert loaded - {script.resolve()} <= static, (script, sorted(map(str, loaded - static)))


# --------------------------------------------------------------------------------------- the committed dvc.lock
def lock_disagreements(lock: dict) -> list[str]:
    """Where a dvc.lock contradicts itself: a dep that is another stage's output but records another hash, or a
    directory dep holding other stages' outputs whose file count or size is not theirs summed (a dep re-hashed from
    a workspace that lacked some of them)."""
    outs = {o["path"]: o for body in lock["stages"].values() for o in body.get("outs", [])}
    found = []
    for stage, body in lock["stages"].items():
        for dep in body.get("deps", []):
            path = dep["path"]
            if path in outs:
                if outs[path].get("md5") != dep.get("md5"):
                    found.append(f"{stage}: dep {path} has md5 {dep.get('md5')}, its stage's output "
                                 f"{outs[path].get('md5')}")
                continue
            inside = [o for p, o in outs.items() if p.startswith(path.rstrip("/") + "/")]
            if inside and "nfiles" in dep:
                files, size = sum(o.get("nfiles", 1) for o in inside), sum(o["size"] for o in inside)
                if (dep["nfiles"], dep["size"]) != (files, size):
                    found.append(f"{stage}: dep {path} records {dep['nfiles']} files, {dep['size']} bytes; the "
                                 f"{len(inside)} stage outputs inside it are {files} files, {size} bytes")
    return found


def test_committed_default_lock_agrees_with_itself():
    """The default pipeline's dvc.lock is kept current (a clean clone's `dvc repro` ends with a clean `dvc status`),
    so each dep on other stages' outputs must record those outputs as the lock does: a lock re-hashed from a
    partial workspace (d72bc35: `data/processed` as POWER alone) would make `dvc status` report a change on every
    machine that has all three sets prepared."""
    found = lock_disagreements(yaml.safe_load((ROOT / "dvc.lock").read_text()))
    assert not found, "dvc.lock:\n" + "\n".join(found)


def test_lock_disagreements_finds_a_partial_rehash():
    lock = {"stages": {
        "prepare@a": {"outs": [{"path": "data/processed/a", "md5": "1.dir", "size": 10, "nfiles": 2}]},
        "prepare@b": {"outs": [{"path": "data/processed/b", "md5": "2.dir", "size": 5, "nfiles": 1}]},
        "train": {"deps": [{"path": "data/processed/a", "md5": "1.dir", "size": 10, "nfiles": 2}],
                  "outs": [{"path": "models/a", "md5": "3.dir", "size": 7, "nfiles": 3}]},
        "overview": {"deps": [{"path": "data/processed", "md5": "4.dir", "size": 15, "nfiles": 3},
                              {"path": "models", "md5": "5.dir", "size": 7, "nfiles": 3}]}}}
    assert lock_disagreements(lock) == []
    lock["stages"]["overview"]["deps"][0].update(size=10, nfiles=2)  # hashed with data/processed/b missing
    lock["stages"]["train"]["deps"][0]["md5"] = "9.dir"  # a dep on an output that the output's stage disowns
    found = lock_disagreements(lock)
    assert len(found) == 2 and found[0].startswith("train: dep data/processed/a has md5 9.dir")
    assert "overview: dep data/processed records 2 files, 10 bytes" in found[1] and "3 files, 15 bytes" in found[1]


# --------------------------------------------------------------------------------------- dvc status in a copy
def run(repo: Path, *cmd: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=repo, env=stage_env(git_identity=True), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def stale(repo: Path) -> dict:
    """`dvc status --json`: {stage: [what changed]} for every stage that is not up to date."""
    return json.loads(run(repo, "dvc", "status", "--json").stdout or "{}")


#: creates every missing output and dep of every stage (a file if the name has a suffix, else a directory with a
#: file), so that `dvc commit` can record the stages without running them; prints the stages' names
PLACEHOLDERS = """
import json
from pathlib import Path
from dvc.repo import Repo
with Repo(".") as repo:
    stages = list(repo.index.stages)
    for stage in stages:
        for entry in [*stage.outs, *stage.deps]:
            path = Path(entry.def_path)
            if path.exists() or path.is_absolute() or ".." in path.parts:
                continue
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("placeholder\\n")
            else:
                path.mkdir(parents=True)
                (path / "placeholder").write_text("placeholder\\n")
    print(json.dumps([stage.addressing for stage in stages]))
"""


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    """A copy of the repository whose every stage is up to date for the current code and params (recorded by
    `dvc commit -f` over placeholder outputs: nothing runs), and the names of its stages."""
    repo = copy_repo(tmp_path_factory.mktemp("dvcdeps") / "repo")
    run(repo, "git", "init", "-q")
    names = json.loads(run(repo, sys.executable, "-c", PLACEHOLDERS).stdout.splitlines()[-1])
    run(repo, "dvc", "commit", "-f", "-q")
    assert stale(repo) == {}, "the copy is not clean after `dvc commit -f`"
    return repo, names


@contextmanager
def restored(repo: Path, *paths: str):
    """Put ``paths`` (files, or directories: every file in them) back as they were, and dvc.lock too."""
    saved = {}
    for rel in (*paths, "dvc.lock"):
        p = repo / rel
        for f in ([p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else []):
            saved[f] = f.read_bytes()
    try:
        yield
    finally:
        for rel in paths:
            p = repo / rel
            if p.is_dir():
                shutil.rmtree(p)
        for f, data in saved.items():
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(data)


def configure(repo: Path, force: bool = False) -> None:
    """Run the configure stage for real (it resolves every cell's settings; no TensorFlow work)."""
    run(repo, "dvc", "repro", "-s", *(["-f"] if force else []), "configure")


@pytest.fixture(scope="module")
def configured(copy):
    """``copy`` with configs/ written by the configure stage for the current params (then recorded again)."""
    repo, names = copy
    configure(repo, force=True)  # up to date for DVC (placeholders committed), but not yet written
    run(repo, "dvc", "commit", "-f", "-q")
    assert stale(repo) == {}, "the copy is not clean after the configure stage and `dvc commit -f`"
    return repo, names


def grid(repo: Path) -> tuple[list[str], list[str]]:
    g = yaml.safe_load((repo / "params.yaml").read_text())["grid"]
    return g["flows"], g["datasets"]


@pytest.mark.parametrize("edited", ["flows/training.py", "flows/experiment.py", "stages/common.py",
                                    "stages/figures.py"])
def test_editing_code_evaluate_imports_makes_evaluate_stale(copy, edited):
    """The issue: a change to flows.training.evaluate or to the bits/dim formula (flows.experiment) must rerun
    evaluate even when the retrained weights are bitwise the same."""
    repo, names = copy
    closure, _ = import_closure(ROOT / "stages" / "evaluate.py")
    if (ROOT / edited).resolve() not in closure:
        pytest.fail(f"stages/evaluate.py no longer imports {edited}: update this parametrisation")
    flows, datasets = grid(repo)
    evaluate = {f"evaluate@{f}-{d}" for f in flows for d in datasets} | {"evaluate_exp"}
    assert evaluate <= set(names)
    with restored(repo, edited):
        with open(repo / edited, "a") as fh:
            fh.write("\n# edited by tests/test_dvc_deps.py\n")
        status = stale(repo)
    missing = sorted(evaluate - set(status))
    assert not missing, f"editing {edited} leaves these up to date: {missing}"
    for name in evaluate:
        changed = {dep for entry in status[name] for dep in entry.get("changed deps", {})}
        assert changed and all(edited == d or edited.startswith(d.rstrip("/") + "/") for d in changed), status[name]
    assert stale(repo) == {}


def test_one_override_makes_only_its_cell_stale(configured):
    """Editing datasets.power.overrides.nsf: train@nsf-power is stale once configure has run; train@maf-power (the
    same data set, another flow) and every other stage stay up to date."""
    repo, names = configured
    flows, datasets = grid(repo)
    if "nsf" not in flows or "power" not in datasets:
        pytest.fail("the grid has no nsf-power cell: this test edits its override")
    steps = json.loads((repo / "configs" / "nsf-power.json").read_text())["train"]["steps"]
    with restored(repo, "params.yaml", "configs"):
        params = yaml.safe_load((repo / "params.yaml").read_text())
        over = params["datasets"]["power"]["overrides"] = params["datasets"]["power"].get("overrides") or {}
        over.setdefault("nsf", {}).setdefault("train", {})["steps"] = steps + 1
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        before = stale(repo)
        assert set(before) == {"configure"}, before  # train cells see the edit through their settings files
        configure(repo)
        status = stale(repo)
    expected = {"train@nsf-power": [{"changed deps": {"configs/nsf-power.json": "modified"}}]}
    if (params["flow"], params["dataset"]) == ("nsf", "power"):  # the chosen experiment is this cell
        expected["train_exp"] = [{"changed deps": {"configs/experiment.json": "modified"}}]
    assert status == expected, status
    assert "train@maf-power" in names
    assert stale(repo) == {}


def test_choosing_another_experiment_makes_only_the_experiment_stale(configured):
    """`-S flow=... -S dataset=...` changes train_exp and evaluate_exp only: no grid cell depends on the choice."""
    repo, _ = configured
    flows, datasets = grid(repo)
    with restored(repo, "params.yaml", "configs"):
        params = yaml.safe_load((repo / "params.yaml").read_text())
        choice = next((f, d) for f in flows for d in datasets if (f, d) != (params["flow"], params["dataset"]))
        params["flow"], params["dataset"] = choice
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        configure(repo)
        status = stale(repo)
        settings = json.loads((repo / "configs" / "experiment.json").read_text())
    assert set(status) == {"train_exp", "evaluate_exp"}, status
    assert {"changed deps": {"configs/experiment.json": "modified"}} in status["train_exp"], status
    assert (settings["flow"], settings["dataset"]) == choice
    assert stale(repo) == {}


def test_default_repro_never_runs_a_paper_stage(copy):
    """The quick start's `dvc repro` (the root dvc.yaml) and the paper pipeline (paper/dvc.yaml) are separate: a
    forced dry run of the default pipeline names every default stage and no paper stage; the paper pipeline's
    own dry run names its cells (and the POWER data stages it shares)."""
    repo, _ = copy
    default = run(repo, "dvc", "repro", "--dry", "-f").stdout
    ran = set(re.findall(r"Running stage '([^']+)'", default))
    assert "report" in ran and "train@maf-moons" in ran, default[-2000:]
    assert not any(s.startswith("paper/") for s in ran), sorted(ran)
    paper = run(repo, "dvc", "repro", "--dry", "-f", "paper/dvc.yaml").stdout
    ran = set(re.findall(r"Running stage '([^']+)'", paper))
    grid = yaml.safe_load((repo / "params-paper.yaml").read_text())["grid"]
    for flow in grid["flows"]:
        assert f"paper/dvc.yaml:train@{flow}-power" in ran, sorted(ran)
    assert "paper/dvc.yaml:report" in ran and "prepare@power" in ran
    assert not any(s.startswith(("train@", "evaluate@")) for s in ran), sorted(ran)
