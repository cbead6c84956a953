"""`make mutate`: cosmic-ray over the core pure modules, each against its own fast test
selection, in a throwaway copy of the tree (the working tree is never mutated).

Usage: python tests/mutation/mutate.py [--ref REF] [--only NAME ...] [--out DIR]
  --ref REF   mutate the files as committed at REF (default: the working tree as it is)
  --only      run only the named targets (see TARGETS)
  --out DIR   where the sessions, the survivors and summary.md go (default .mutation/)

For each target: copy the tree, check that `headwater.*` imports from the copy, run the
test selection once unmutated (it must pass; 5x its time, at least 60 s, is the per-mutant
timeout: a mutant whose tests run past it is killed, cosmic-ray's convention, and counted
apart in the report, so a run always finishes), then
`cosmic-ray init` -> `cr-filter-operators` (the operator set below) -> `cosmic-ray exec`,
and report killed / survived. Mutants listed in equivalent.toml (matched by operator and
the mutated line's text) are left out of the score, each with its reason; every other
survivor is printed with its diff. docs/testing.md explains the numbers.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import toml  # cosmic-ray's own dependency (tomllib is 3.11+)

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
PYTEST = ["-x", "-q", "--assert=plain", "-p", "no:randomly", "-p", "no:cacheprovider",
          "-p", "no:timeout"]
FORKSERVER = HERE / "forkserver.py"
TIMEOUT_MARK = "mutant killed: its tests ran past the timeout of"  # forkserver.TIMEOUT_MARK

# module under test -> the tests that exercise it (fast: unit level, no servers).
TARGETS: dict[str, tuple[str, list[str]]] = {
    "scoring": ("query_service/attribution/scoring.py", ["tests/unit/test_mutants_scoring.py"]),
    "rowmap": ("producers/rowmap.py",
               ["tests/unit/test_mutants_rowmap.py", "tests/unit/test_rowmap.py"]),
    "maps": ("producers/tracking/maps.py",
             ["tests/unit/test_mutants_maps.py", "tests/unit/test_tracking.py"]),
    "segments": ("producers/tracking/segments.py",
                 ["tests/unit/test_mutants_segments.py", "tests/unit/test_tracking.py"]),
    "lineage_resolve": ("stream_processors/lineage_resolve.py",
                        ["tests/unit/test_mutants_lineage_resolve.py",
                         "tests/unit/test_tracking.py"]),
    "log_integrity": ("stream_processors/log_integrity.py",
                      ["tests/unit/test_mutants_log_integrity.py",
                       "tests/unit/test_log_integrity.py"]),
    "validate": ("stream_processors/processors/validate.py",
                 ["tests/unit/test_mutants_validate.py", "tests/unit/test_validate.py",
                  "tests/unit/test_validate_reverified.py"]),
    "newton": ("producers/unlearning/newton.py",
               ["tests/unit/test_mutants_newton.py", "tests/unit/test_unlearning.py"]),
}

# cosmic-ray's operators, less its every-operator-to-every-other-operator permutations:
# per arithmetic/comparison operator the one realistic slip (mutmut's set: + <-> -, * <-> /,
# < <-> <=, == <-> !=, is <-> is not, ...), and without the random variable replacers.
# Everything else (numbers, booleans, and/or, not, break/continue, exceptions, empty loops,
# decorators, unary operators) is kept whole.
KEEP_BINARY = {"Add_Sub", "Sub_Add", "Mul_Div", "Div_Mul", "FloorDiv_Div", "Mod_FloorDiv",
               "Pow_Mul", "LShift_RShift", "RShift_LShift", "BitAnd_BitOr", "BitOr_BitAnd",
               "BitXor_BitOr"}
KEEP_COMPARE = {"Eq_NotEq", "NotEq_Eq", "Lt_LtE", "LtE_Lt", "Gt_GtE", "GtE_Gt", "Is_IsNot",
                "IsNot_Is"}
EXCLUDE = [r"core/ReplaceBinaryOperator_(?!(" + "|".join(sorted(KEEP_BINARY)) + r")$)",
           r"core/ReplaceComparisonOperator_(?!(" + "|".join(sorted(KEEP_COMPARE)) + r")$)",
           r"core/VariableReplacer", r"core/VariableInserter"]

# Imports of `headwater.*` resolve to the copy, not to the editable install's tree.
SITECUSTOMIZE = '''
import sys
from importlib.machinery import PathFinder
from importlib.util import spec_from_file_location

ROOT = {root!r}
MAPPING = {{"headwater": ROOT + "/headwater", "headwater.producers": ROOT + "/producers",
           "headwater.query_service": ROOT + "/query_service",
           "headwater.stream_processors": ROOT + "/stream_processors",
           "headwater.v1": ROOT + "/proto/headwater/v1"}}


class CopyFinder:
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname in MAPPING:
            return spec_from_file_location(fullname, MAPPING[fullname] + "/__init__.py",
                                           submodule_search_locations=[MAPPING[fullname]])
        parent = fullname.rpartition(".")[0]
        if parent in MAPPING:
            return PathFinder.find_spec(fullname, [MAPPING[parent]])
        return None


sys.meta_path.insert(0, CopyFinder)
'''


@dataclass
class Result:
    name: str
    module: str
    killed: int = 0
    survived: list[dict] = field(default_factory=list)
    equivalent: list[tuple[dict, str]] = field(default_factory=list)
    errors: int = 0
    timeouts: int = 0  # of the killed: their tests ran past the timeout (cosmic-ray: killed)
    annotations: int = 0  # skipped, not run: inside deferred annotations
    seconds: float = 0.0

    @property
    def scored(self) -> int:
        return self.killed + len(self.survived)

    @property
    def score(self) -> float:
        return self.killed / self.scored if self.scored else 0.0


def copy_tree(ref: str | None, into: Path) -> str:
    """The tree to mutate (committed at `ref`, or the working tree); returns its label."""
    if ref:
        commit = subprocess.run(["git", "rev-parse", ref], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout.strip()
        archive = into.parent / "tree.tar"
        subprocess.run(["git", "archive", "-o", str(archive), commit], cwd=REPO, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
        return commit
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / name.decode()
        if src.is_file():
            (into / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, into / name.decode())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
    return f"working tree on {head}"


def environment(tree: Path) -> dict[str, str]:
    site = tree / ".mutation-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(root=str(tree)))
    env = dict(os.environ, PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1")
    probe = subprocess.run([sys.executable, "-c", "import headwater.producers.rowmap as m;"
                            "print(m.__file__)"], cwd=tree, env=env, capture_output=True,
                           text=True)
    if not probe.stdout.strip().startswith(str(tree)):
        raise SystemExit(f"headwater does not import from the copy {tree}: "
                         f"{probe.stdout}{probe.stderr}")
    return env


def annotations(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) (line, character column) of every annotation in a module that defers
    them (`from __future__ import annotations`): text there is never evaluated."""
    tree = ast.parse(source)
    if not any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
               and any(a.name == "annotations" for a in n.names) for n in tree.body):
        return []
    lines = source.splitlines()

    def char(line: int, byte: int) -> int:
        return len(lines[line - 1].encode()[:byte].decode(errors="ignore"))

    found = []
    for node in ast.walk(tree):
        notes = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            notes = [a.annotation for a in (*args.posonlyargs, *args.args, *args.kwonlyargs,
                                            args.vararg, args.kwarg) if a and a.annotation]
            notes.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            notes = [node.annotation]
        for n in filter(None, notes):
            assert n.end_lineno is not None and n.end_col_offset is not None
            found.append(((n.lineno, char(n.lineno, n.col_offset)),
                          (n.end_lineno, char(n.end_lineno, n.end_col_offset))))
    return found


def skip_annotations(session: Path, module: Path) -> None:
    """Mark mutants inside deferred annotations as skipped (equivalent by construction)."""
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    spans = annotations(module.read_text())
    with use_db(str(session)) as db:
        for item in list(db.pending_work_items):
            m = item.mutations[0]
            at = (m.start_pos[0], m.start_pos[1])
            if any(a <= at < b for a, b in spans):
                db.set_result(item.job_id, WorkResult(output=ANNOTATION,
                                                      worker_outcome=WorkerOutcome.SKIPPED))


ANNOTATION = "inside an annotation (never evaluated)"


def equivalents() -> list[dict]:
    return toml.loads((HERE / "equivalent.toml").read_text()).get("mutant", [])


def original_line(diff: str) -> str:
    """The mutated line as it was (the first removed line of the mutant's diff)."""
    return next((line[1:].strip() for line in diff.splitlines()
                 if line.startswith("-") and not line.startswith("---")), "")


def run_target(name: str, tree: Path, env: dict[str, str], out: Path) -> Result:
    module, tests = TARGETS[name]
    missing = [t for t in tests if not (tree / t).exists()]
    if not tests or missing:  # (no file at all would run the whole suite per mutant)
        raise SystemExit(f"{name}: test files missing: {missing}")
    start = time.monotonic()
    base = subprocess.run([sys.executable, "-m", "pytest", *PYTEST, *tests], cwd=tree, env=env,
                          capture_output=True, text=True)
    if base.returncode != 0:
        raise SystemExit(f"{name}: tests fail before any mutation:\n{base.stdout[-3000:]}")
    timeout = max(60.0, 5 * (time.monotonic() - start))
    command = [sys.executable, str(FORKSERVER), "run", str(out / "forkserver.sock"),
               f"{timeout:.0f}", "--", *PYTEST, *tests]
    again = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if again.returncode != 0:
        raise SystemExit(f"{name}: tests fail through the fork server:\n{again.stdout[-3000:]}")
    config = out / f"{name}.toml"
    session = out / f"{name}.sqlite"
    session.unlink(missing_ok=True)
    config.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(str(tree / module))}\n"
        f"timeout = {timeout + 30:.0f}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(' '.join(command))}\n\n"
        "[cosmic-ray.distributor]\nname = \"local\"\n\n"
        "[cosmic-ray.filters.operators-filter]\n"
        f"exclude-operators = {json.dumps(EXCLUDE)}\n")
    for step in (["cosmic-ray", "init", config, session],
                 ["cr-filter-operators", session, config],
                 ["cosmic-ray", "exec", config, session]):
        if step[0] == "cosmic-ray" and step[1] == "exec":
            skip_annotations(session, tree / module)
        subprocess.run([str(BIN / str(step[0])), *map(str, step[1:])], cwd=tree, env=env,
                       check=True)
    return outcome(name, session, time.monotonic() - start, (tree / module).read_text())


def outcome(name: str, session: Path, seconds: float, source: str) -> Result:
    """Killed, survived and listed-equivalent mutants of one finished session (`source`:
    the module as mutated, for the annotations of sessions run before they were skipped)."""
    module = TARGETS[name][0]
    result = Result(name, module, seconds=seconds)
    spans = annotations(source)
    known = [e for e in equivalents() if e["module"] == module]
    dump = subprocess.run([str(BIN / "cosmic-ray"), "dump", str(session)], check=True,
                          capture_output=True, text=True).stdout
    for line in dump.splitlines():
        item, done = json.loads(line)
        if done and done.get("output") == ANNOTATION:
            result.annotations += 1
        if not done or done["worker_outcome"] == "skipped":
            continue
        if done["worker_outcome"] != "normal":
            result.errors += 1
            continue
        if done["test_outcome"] == "killed":
            result.killed += 1
            output = done.get("output") or ""
            result.timeouts += output == "timeout" or TIMEOUT_MARK in output
            continue
        mutation = item["mutations"][0]
        at = tuple(mutation["start_pos"])
        if any(a <= at < b for a, b in spans):
            result.annotations += 1
            continue
        diff = done.get("diff", "")
        text = original_line(diff)
        survivor = dict(operator=mutation["operator_name"], line=mutation["start_pos"][0],
                        text=text, diff=diff)
        reason = next((e["reason"] for e in known if survivor["operator"] in (
                           [e["operator"]] if isinstance(e["operator"], str) else e["operator"])
                       and (e.get("text") == text
                            or ("pattern" in e and re.search(e["pattern"], text)))), None)
        if reason:
            result.equivalent.append((survivor, reason))
        else:
            result.survived.append(survivor)
    return result


def report(results: list[Result], label: str, out: Path) -> str:
    lines = [f"Mutation score ({label})", "",
             "| module | mutants | killed | of them by timeout | survived "
             "| listed in equivalent.toml | score | counting the listed as survivors "
             "| in annotations (not run) | minutes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        every = r.scored + len(r.equivalent)
        raw = r.killed / every if every else 0.0
        lines.append(f"| {r.module} | {every} | {r.killed} | {r.timeouts} | {len(r.survived)} "
                     f"| {len(r.equivalent)} | {100 * r.score:.1f}% | {100 * raw:.1f}% "
                     f"| {r.annotations} | {r.seconds / 60:.1f} |")
    for r in results:
        for s in r.survived:
            lines += ["", f"SURVIVED {r.module}:{s['line']} {s['operator']}: {s['text']}",
                      s["diff"].rstrip()]
        if r.errors:
            lines += ["", f"{r.module}: {r.errors} mutants could not be run (worker error)"]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref")
    parser.add_argument("--only", nargs="+", choices=sorted(TARGETS))
    parser.add_argument("--out", type=Path, default=REPO / ".mutation")
    parser.add_argument("--report", metavar="COMMIT",
                        help="only rebuild summary.md from the finished sessions in --out, "
                             "which mutated the files at COMMIT")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report:  # LABEL: the commit the sessions mutated
        done = [outcome(n, args.out / f"{n}.sqlite", 0.0, subprocess.run(
                    ["git", "show", f"{args.report}:{TARGETS[n][0]}"], cwd=REPO, check=True,
                    capture_output=True, text=True).stdout)
                for n in args.only or list(TARGETS) if (args.out / f"{n}.sqlite").exists()]
        print(report(done, args.report, args.out))
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="headwater-mutate-") as scratch:
        tree = Path(scratch) / "tree"
        tree.mkdir()
        label = copy_tree(args.ref, tree)
        env = environment(tree)
        (args.out / "forkserver.sock").unlink(missing_ok=True)
        server = subprocess.Popen([sys.executable, str(FORKSERVER), "serve",
                                   str(args.out / "forkserver.sock")], cwd=tree, env=env,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            for name in args.only or list(TARGETS):
                print(f"== {name}: {TARGETS[name][0]} ({label})", flush=True)
                results.append(run_target(name, tree, env, args.out))
                print(report(results[-1:], label, args.out), flush=True)
        finally:
            server.kill()
            server.wait()
    print(report(results, label, args.out))
    return 0 if all(not r.survived and not r.errors for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
