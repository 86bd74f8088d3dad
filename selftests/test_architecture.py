"""The import rule of docs/architecture.md, checked on every import of the package.

Every ``import`` and ``from ... import`` of every file is read with ``ast``: at module level, inside
functions (lazy imports) and under ``if TYPE_CHECKING:`` alike, relative or absolute. A package
(``bench/``, ``report/``, ``sim/``) is one node of the rule; its own modules are checked for cycles
among themselves too. A violation names the file and line of the import.
"""

from __future__ import annotations

import ast
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE_DIR = REPO / "pytest_sglang_pd"
ARCHITECTURE_DOC = REPO / "docs" / "architecture.md"

# Shared leaves: small neutral modules anything may import; they import nothing of the package but each other.
LEAVES = frozenset({"__init__", "metrics", "stats", "redact", "prom", "failures", "parallel", "image", "kv_transfer", "releases",
                    "textgen", "facts", "sse", "nic", "stages", "interrupts"})
# The pytest face: nothing imports it but itself.
PYTEST_FACE = frozenset({"plugin", "session", "fixtures", "suite"})
# The chain of the data flow: config -> plan -> live cluster (hosts, docker_node, runtime, slurm, cluster) -> bench
# -> gating -> report. The faces on top (the CLI, the pytest face) may import all of it.
CHAIN = frozenset({"config", "plan", "hosts", "docker_node", "runtime", "pd_path", "slurm", "services",
                   "worker_http", "cluster", "external_cluster", "cluster_facts", "kept_clusters", "watch", "bench",
                   "gating", "report"})
# Which node may import which, besides the shared leaves.
MAY_IMPORT: Mapping[str, frozenset[str]] = {
    "config": frozenset(),
    "plan": frozenset({"config"}),
    "hosts": frozenset(),
    "docker_node": frozenset({"hosts", "plan"}),
    "runtime": frozenset({"hosts", "docker_node", "plan"}),
    "pd_path": frozenset({"plan", "hosts"}),
    "slurm": frozenset({"config", "plan", "hosts"}),
    "services": frozenset({"plan"}),
    "worker_http": frozenset(),
    "cluster": frozenset({"config", "plan", "hosts", "docker_node", "runtime", "pd_path", "slurm", "services",
                          "worker_http"}),
    "external_cluster": frozenset({"plan", "cluster"}),
    "cluster_facts": frozenset({"plan", "worker_http", "cluster", "external_cluster"}),
    "kept_clusters": frozenset({"config", "plan", "runtime", "slurm", "services", "cluster"}),
    "watch": frozenset({"config", "plan", "hosts", "docker_node", "runtime", "pd_path", "slurm", "services",
                        "worker_http", "cluster", "external_cluster"}),
    "bench": frozenset({"config", "plan"}),
    "gating": frozenset({"config", "bench"}),
    "report": frozenset({"config", "bench", "gating"}),
    "sim": frozenset(),
    "cli": CHAIN | {"sim", "tune"},
    "tune": CHAIN,  # `sglang-pd tune`: drives the chain for each candidate, like cli.py
    "session": CHAIN,
    "fixtures": CHAIN | {"session"},
    "plugin": CHAIN | {"session", "fixtures"},
    "suite": CHAIN | {"tune"},  # the validation tests themselves (suite/test_*.py; test_tune.py: the search)
}


@dataclass(frozen=True)
class Import:
    source: str  # dotted module name of the importing file
    target: str  # dotted module name imported (the longest that is a module of the package)
    path: Path  # the importing file
    line: int
    text: str  # the import statement as written

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root.parent)}:{self.line}"


def _modules(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package's own name for its __init__.py)."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def read_imports(package_dir: Path) -> list[Import]:
    """Every import of one module of the package by another, wherever in the file it stands."""
    modules = _modules(package_dir)
    root = package_dir.name
    found = []
    for name, path in modules.items():
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source, filename=str(path))
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bases = [(alias.name, ()) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = here.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                bases = [(base, tuple(alias.name for alias in node.names))]
            else:
                continue
            for base, names in bases:
                if base != root and not base.startswith(root + "."):
                    continue
                targets = {f"{base}.{n}" if f"{base}.{n}" in modules else base for n in names} or {base}
                for target in sorted(targets):
                    while target not in modules and "." in target:  # `import pkg.mod.attr`-like spellings
                        target = target.rpartition(".")[0]
                    text = " ".join(line.strip() for line in lines[node.lineno - 1:node.end_lineno])
                    found.append(Import(name, target, path, node.lineno, text))
    return found


def node_of(module: str) -> str:
    """The rule's node: a top-level module by its name, a subpackage's modules all by the subpackage's name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _cycles(edges: Mapping[str, Mapping[str, Import]]) -> list[list[str]]:
    """One cycle (as a closed list of nodes) per strongly connected component of more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, {})):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted({*edges, *(w for targets in edges.values() for w in targets)}):
        if v not in index:
            connect(v)
    return [_shortest_cycle(edges, set(component)) for component in components]


def _shortest_cycle(edges: Mapping[str, Mapping[str, Import]], members: set[str]) -> list[str]:
    """The shortest closed walk inside one strongly connected component (ties: by name), e.g. [a, b, a]."""
    best: list[str] | None = None
    for start in sorted(members):
        previous: dict[str, str] = {}
        frontier, found = [start], False
        while frontier and not found:
            following = []
            for v in frontier:
                for w in sorted(edges.get(v, {})):
                    if w not in members or w in previous:
                        continue
                    previous[w] = v
                    if w == start:
                        found = True
                        break
                    following.append(w)
                if found:
                    break
            frontier = following
        path = [start]
        while found and (len(path) == 1 or path[-1] != start):
            path.append(previous[path[-1]])
        cycle = path[::-1]
        if found and (best is None or len(cycle) < len(best)):
            best = cycle
    assert best is not None
    return best


def _edges(imports: Iterable[Import], key) -> dict[str, dict[str, Import]]:
    """from -> to -> the first import (by file and line) that makes the arrow."""
    out: dict[str, dict[str, Import]] = defaultdict(dict)
    for imp in sorted(imports, key=lambda i: (str(i.path), i.line)):
        a, b = key(imp.source), key(imp.target)
        if a != b:
            out[a].setdefault(b, imp)
    return out


def allowed(source: str, target: str) -> bool:
    if target in PYTEST_FACE:
        return source in PYTEST_FACE
    if source in LEAVES:
        return target in LEAVES
    return target in LEAVES or target in MAY_IMPORT.get(source, frozenset())


def violations(package_dir: Path) -> list[str]:
    """Every arrow the rule forbids, every module the rule does not place, every cycle (between nodes, and
    between the modules of one package): each named by file and line."""
    imports = read_imports(package_dir)
    out = []
    nodes = {node_of(m) for m in _modules(package_dir)}
    for node in sorted(nodes - LEAVES - set(MAY_IMPORT)):
        out.append(f"{node}: not placed by the import rule (add it to docs/architecture.md and MAY_IMPORT)")
    for imp in sorted(imports, key=lambda i: (str(i.path), i.line)):
        a, b = node_of(imp.source), node_of(imp.target)
        line = f"{imp.where(package_dir)}: {a} -> {b} is against the import rule: `{imp.text}`"
        if a != b and not allowed(a, b) and line not in out:
            out.append(line)
    node_edges = _edges(imports, node_of)
    for cycle in _cycles(node_edges):
        steps = [f"{node_edges[a][b].where(package_dir)} ({a} -> {b})" for a, b in zip(cycle, cycle[1:])]
        out.append(f"import cycle {' -> '.join(cycle)}: " + "; ".join(steps))
    module_edges = _edges(imports, lambda m: m)
    for cycle in _cycles(module_edges):
        if len({node_of(m) for m in cycle}) > 1:
            continue  # told above, between nodes
        steps = [f"{module_edges[a][b].where(package_dir)}" for a, b in zip(cycle, cycle[1:])]
        out.append(f"import cycle {' -> '.join(cycle)} inside {node_of(cycle[0])}/: " + "; ".join(steps))
    return out


def graph(package_dir: Path) -> dict[str, set[str]]:
    """node -> the nodes it imports."""
    return {a: set(targets) for a, targets in _edges(read_imports(package_dir), node_of).items()}


# ------------------------------------------------------------------ the package as it is

def test_the_package_follows_the_import_rule():
    problems = violations(PACKAGE_DIR)
    assert not problems, "\n".join(problems)


def test_every_kind_of_import_is_read():
    """Relative, absolute, lazy (in a function) and TYPE_CHECKING imports all count."""
    seen = {(i.source.removeprefix("pytest_sglang_pd."), i.target.removeprefix("pytest_sglang_pd."), i.text)
            for i in read_imports(PACKAGE_DIR)}

    def read(source: str, target: str, text: str) -> bool:
        return any(s == source and t == target and x.startswith(text) for s, t, x in seen)

    assert read("plan", "config", "from ..config import")  # relative, at module level
    assert read("report", "pytest_sglang_pd", "from .. import")  # two levels up: the package's __init__
    assert read("report", "gating", "from .. import")  # a module named in `from .. import`
    assert read("sim.worker", "kv_transfer", "from pytest_sglang_pd.kv_transfer import")  # absolute
    assert read("cli", "cluster", "from . import cluster")  # lazy, inside a function
    assert read("bench.sglang_tools", "bench.target", "from .target import")  # under `if TYPE_CHECKING:`


def test_the_report_calls_no_node():
    """report/ renders what it is handed: it imports no HTTP client, no SSH, no processes, no Docker."""
    reaching = {"requests", "aiohttp", "urllib", "http", "socket", "subprocess", "fabric", "paramiko", "docker"}
    found = []
    for path in sorted((PACKAGE_DIR / "report").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in reaching]
    assert not found, "\n".join(found)


def test_the_documented_rule_is_the_enforced_one():
    """docs/architecture.md's table of the rule says exactly what MAY_IMPORT and LEAVES say."""
    text = ARCHITECTURE_DOC.read_text()
    section = text.split("## The import rule", 1)[1].split("\n## ", 1)[0]
    documented: dict[str, frozenset[str]] = {}
    leaves: set[str] = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        names = [n.rstrip("/") for n in re.findall(r"`([^`]+)`", cells[0])]
        targets = frozenset(n.rstrip("/") for n in re.findall(r"`([^`]+)`", cells[1]))
        if "shared leaves" in cells[1]:
            leaves.update(names)
            continue
        for name in names:
            documented[name] = targets
    assert leaves == LEAVES
    assert documented == dict(MAY_IMPORT)


# ------------------------------------------------------------------ the checker catches what it must

def _copy(tmp_path: Path) -> Path:
    target = tmp_path / PACKAGE_DIR.name
    shutil.copytree(PACKAGE_DIR, target, ignore=shutil.ignore_patterns("__pycache__", "*.json", "tokenizer"))
    return target


def _append(path: Path, code: str) -> int:
    """Append ``code`` to ``path``; the line number of its first line."""
    text = path.read_text()
    path.write_text(text + ("" if text.endswith("\n") else "\n") + code)
    return text.count("\n") + 1 + (0 if text.endswith("\n") else 1)


def test_an_import_of_the_pytest_face_from_config_is_caught_with_file_and_line(tmp_path: Path):
    package = _copy(tmp_path)
    line = _append(package / "config" / "__init__.py", "from ..plugin import SuiteRun\n")
    problems = violations(package)
    assert f"pytest_sglang_pd/config/__init__.py:{line}: config -> plugin is against the import rule: " \
           "`from ..plugin import SuiteRun`" in problems
    assert any(p.startswith("import cycle config -> plugin -> config") for p in problems), problems


@pytest.mark.parametrize("file, code, arrow", [
    ("gating.py", "def lazy():\n    from .fixtures import suite_run\n", "gating -> fixtures"),
    ("bench/builtin.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..sim import worker\n",
     "bench -> sim"),
    ("sim/output.py", "import pytest_sglang_pd.bench.result\n", "sim -> bench"),
    ("report/html.py", "from pytest_sglang_pd.cluster import LiveCluster\n", "report -> cluster"),
    ("plan/__init__.py", "from .. import gating\n", "plan -> gating"),
])
def test_forbidden_arrows_are_caught_lazy_type_checking_relative_or_absolute(tmp_path: Path, file, code, arrow):
    package = _copy(tmp_path)
    line = _append(package / file, code)
    problems = [p for p in violations(package) if f" {arrow} is against the import rule" in p]
    assert len(problems) == 1 and problems[0].startswith(f"pytest_sglang_pd/{file}:"), violations(package)
    assert int(problems[0].split(":")[1]) >= line


def test_a_cycle_inside_a_package_is_caught(tmp_path: Path):
    package = _copy(tmp_path)
    _append(package / "bench" / "result.py", "def lazy():\n    from . import builtin\n")
    problems = violations(package)
    assert any(p.startswith("import cycle pytest_sglang_pd.bench.builtin -> pytest_sglang_pd.bench.result -> "
                            "pytest_sglang_pd.bench.builtin inside bench/") for p in problems), problems


def test_a_new_module_must_be_placed_by_the_rule(tmp_path: Path):
    package = _copy(tmp_path)
    (package / "tuner.py").write_text("from . import plan\n")
    assert "tuner: not placed by the import rule (add it to docs/architecture.md and MAY_IMPORT)" in violations(package)


def test_cycles_in_a_synthetic_graph():
    def imp(a: str, b: str) -> Import:
        return Import(a, b, Path(f"/x/{a}.py"), 1, "")

    edges = _edges([imp("p.a", "p.b"), imp("p.b", "p.c"), imp("p.c", "p.a"), imp("p.c", "p.d"), imp("p.d", "p.e")],
                   lambda m: m)
    assert _cycles(edges) == [["p.a", "p.b", "p.c", "p.a"]]
    assert _cycles(_edges([imp("p.a", "p.b"), imp("p.b", "p.c")], lambda m: m)) == []
