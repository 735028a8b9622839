"""The package's layers stay true: no upward import, no import cycle, no private name imported across
modules (docs/architecture.md lists the floors). Read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dsteer_eval"

# A package imports only from its own floor or below (docs/architecture.md).
FLOORS = {
    "common": 0, "stats": 0,
    "steering": 1, "vectors": 1, "models": 1,
    "data": 2,
    "dpo": 3,
    "probes": 4, "metrics": 4,
    "adapters": 5, "tasks": 5,  # top-level adapters/ and tasks/, installed as dsteer_eval.adapters / .tasks
    "sweep": 6, "leaderboard": 6, "report": 6, "describe": 6,
    "cli": 7,
}


def mapped_folders() -> dict[str, Path]:
    """``{package: folder}`` for the packages pyproject installs from elsewhere (``package-dir``: the design
    card's top-level ``adapters/`` and ``tasks/`` become ``dsteer_eval.adapters`` / ``dsteer_eval.tasks``)."""
    pyproject = PACKAGE.parent / "pyproject.toml"
    if not pyproject.is_file():
        return {}
    mapping = tomllib.loads(pyproject.read_text())["tool"]["setuptools"].get("package-dir", {})
    return {name: PACKAGE.parent / folder for name, folder in mapping.items() if name}


def source_files() -> list[tuple[str, Path]]:
    """(path relative to the installed package, file) for every module of the package, mapped folders included."""
    found = [(p.relative_to(PACKAGE).as_posix(), p) for p in PACKAGE.rglob("*.py")]
    for name, folder in mapped_folders().items():
        prefix = "/".join(name.split(".")[1:])
        found += [(f"{prefix}/{p.relative_to(folder).as_posix()}", p) for p in folder.rglob("*.py")]
    return sorted(found)


def module_name(path: Path) -> str:
    for rel, file in source_files():
        if file == path:
            parts = ("dsteer_eval", *Path(rel).with_suffix("").parts)
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise AssertionError(f"{path} is not a module of the package")


def modules() -> dict[str, Path]:
    out = {}
    for rel, file in source_files():
        parts = ("dsteer_eval", *Path(rel).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return out


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import of one of ``known``, at any depth."""
    out = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "dsteer_eval"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base.split(".")[0] != "dsteer_eval":
                continue
            for alias in node.names:  # `from pkg import module` imports the module
                sub = f"{base}.{alias.name}"
                if sub in known:
                    out.append((sub, [], node.lineno))
                else:
                    out.append((base, [alias.name], node.lineno))
    return [(m, names, line) for m, names, line in out if m in known or m == "dsteer_eval"]


def floor(name: str) -> int:
    parts = name.split(".")
    if len(parts) == 1:
        return 0  # dsteer_eval/__init__.py: the version only
    if parts[1] not in FLOORS:
        raise AssertionError(f"{name}: its package {parts[1]!r} has no floor; add it to FLOORS and docs/architecture.md")
    return FLOORS[parts[1]]


def graph() -> tuple[dict[str, set[str]], list[str], list[str]]:
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    upward, private = [], []
    for name, path in mods.items():
        for target, names, line in imports(name, path, set(mods)):
            if target == name:
                continue
            edges[name].add(target)
            if floor(target) > floor(name):
                upward.append(f"{name}:{line} imports {target} (floor {floor(name)} -> {floor(target)})")
            hidden = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if hidden:
                private.append(f"{name}:{line} imports private {', '.join(hidden)} from {target}")
    return edges, upward, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_package_has_a_floor():
    found = modules()
    for name in found:
        floor(name)
    # the top-level folders are read as the packages the wheel installs them as
    assert found["dsteer_eval.adapters.steered"] == PACKAGE.parent / "adapters" / "steered.py"
    assert found["dsteer_eval.tasks.task_files"] == PACKAGE.parent / "tasks" / "task_files.py"
    assert floor("dsteer_eval.adapters.plugin") == floor("dsteer_eval.tasks.task_files") == 5


def test_the_checker_follows_the_mapped_top_level_folders(tmp_path, monkeypatch):
    """An adapter in the top-level adapters/ that imports the sweep (L6) is an upward import, and a cycle
    through it is seen: the mapped folders are part of the graph."""
    pkg = tmp_path / "dsteer_eval"
    (pkg / "sweep").mkdir(parents=True)
    (tmp_path / "adapters").mkdir()
    for init in (pkg / "__init__.py", pkg / "sweep" / "__init__.py", tmp_path / "adapters" / "__init__.py"):
        init.write_text("")
    (tmp_path / "pyproject.toml").write_text('[tool.setuptools]\npackage-dir = {"dsteer_eval.adapters" = "adapters"}\n')
    (tmp_path / "adapters" / "lm.py").write_text("from dsteer_eval.sweep.b import run\n")
    (pkg / "sweep" / "b.py").write_text("from dsteer_eval.adapters import lm\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    edges, upward, _ = graph()
    assert upward == ["dsteer_eval.adapters.lm:1 imports dsteer_eval.sweep.b (floor 5 -> 6)"]
    assert cycles(edges) == [["dsteer_eval.adapters.lm", "dsteer_eval.sweep.b"]]


def test_no_upward_import():
    _, upward, _ = graph()
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycle():
    found = cycles(graph()[0])
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_private_name_imported_across_modules():
    _, _, private = graph()
    assert not private, "private names imported across modules:\n" + "\n".join(private)


def test_the_checker_sees_a_planted_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks can fail: a fake package with a cycle and an upward import is caught."""
    pkg = tmp_path / "dsteer_eval"
    for sub in ("common", "sweep"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "common" / "a.py").write_text("from dsteer_eval.sweep.b import run\n")
    (pkg / "sweep" / "b.py").write_text("def run():\n    from dsteer_eval.common import a\n    from dsteer_eval.common.a import _x\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    edges, upward, private = graph()
    assert cycles(edges) == [["dsteer_eval.common.a", "dsteer_eval.sweep.b"]]
    assert upward == ["dsteer_eval.common.a:1 imports dsteer_eval.sweep.b (floor 0 -> 6)"]
    assert private == ["dsteer_eval.sweep.b:3 imports private _x from dsteer_eval.common.a"]


# --- every edit of a forward pass lives in steering/ (issue 24 item 3) -------------------------------------

HOOK_CALLS = ("register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook")


def hook_registrations() -> dict[str, list[int]]:
    """Module path (relative to the package) -> lines that register a forward/backward hook."""
    found: dict[str, list[int]] = {}
    for rel, path in source_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in HOOK_CALLS:
                found.setdefault(rel, []).append(node.lineno)
    return found


def test_only_the_steering_package_hooks_a_forward_pass():
    outside = {path: lines for path, lines in hook_registrations().items() if not path.startswith("steering/")}
    assert outside == {}, f"forward-pass hooks outside dsteer_eval/steering/: {outside}"


def steered_private_state() -> set[str]:
    """The private attributes SteeredLM sets on itself (``self._x = ...`` in adapters/steered.py)."""
    names = set()
    tree = ast.parse((mapped_folders()["dsteer_eval.adapters"] / "steered.py").read_text())
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        for target in targets:
            for t in (target.elts if isinstance(target, ast.Tuple) else [target]):
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self" \
                        and t.attr.startswith("_") and not t.attr.startswith("__"):
                    names.add(t.attr)
    return names


def writes_to(path: Path, names: set[str]) -> list[str]:
    """Assignments to ``<anything>.<name>`` (or ``<anything>.<name>[...]``) and in-place calls on it
    (``.update``, ``.append``, ``.clear`` ...), for a name in ``names``."""
    hits = []

    def attr_of(node):
        while isinstance(node, ast.Subscript):
            node = node.value
        return node.attr if isinstance(node, ast.Attribute) and node.attr in names else None

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        for target in targets:
            for t in (target.elts if isinstance(target, ast.Tuple) else [target]):
                if attr_of(t):
                    hits.append(f"{path.name}:{node.lineno} {attr_of(t)}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "update", "append", "extend", "clear", "pop", "setdefault", "__setitem__"):
            if attr_of(node.func.value):
                hits.append(f"{path.name}:{node.lineno} {attr_of(node.func.value)}")
    return hits


def test_nothing_outside_steered_writes_its_private_state():
    names = steered_private_state()
    assert {"_interventions", "_module_edits", "_label", "_steer_args"} <= names  # the checker sees them
    hits = []
    for rel, path in source_files():
        if rel != "adapters/steered.py":
            hits += writes_to(path, names)
    assert hits == [], "SteeredLM's private state written outside adapters/steered.py (use set_steering / " \
                       f"steering_replaced): {hits}"


def test_the_state_checker_sees_a_planted_write(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("def f(lm):\n    lm._interventions = []\n    lm._label.update(alpha=1)\n"
                       "    lm._label['x'] = 2\n    a, lm._module_edits = 1, []\n")
    assert sorted(writes_to(planted, steered_private_state())) == [
        "planted.py:2 _interventions", "planted.py:3 _label", "planted.py:4 _label", "planted.py:5 _module_edits"]


# --- imports at the top of files (issue 24 item 5) -----------------------------------------------------------

# the package's modules that import an optional extra (vLLM) at their top: the only own modules a caller may
# import inside a function (with a ``# deferred: ...`` comment), so the main venv never needs the extra
OPTIONAL_BACKENDS = {"dsteer_eval.sweep.vllm_lm", "dsteer_eval.adapters.steered_vllm"}


def deferred_imports_without_reason() -> list[str]:
    """Imports inside functions that name no reason: the package's own modules and the standard library are
    imported at the top; a third-party import (or an optional backend's module) may wait for start-up cost with
    a ``# deferred: ...`` comment. The CLI verbs (their module docstrings say why) and the lm-eval start-up
    hook (adapters/plugin.py) defer all."""
    stdlib = set(__import__("sys").stdlib_module_names)
    found = []
    for rel, path in source_files():
        if rel.startswith("cli/") or rel == "adapters/plugin.py" or rel.startswith("tasks/"):
            continue
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines), str(path))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    name = (node.module if isinstance(node, ast.ImportFrom) else node.names[0].name) or ""
                    top = name.split(".")[0]
                    commented = any("# deferred" in line for line in lines[node.lineno - 1:node.end_lineno])
                    optional = name in OPTIONAL_BACKENDS and commented
                    if (top == "dsteer_eval" and not optional) or top in stdlib or not commented:
                        found.append(f"{rel}:{node.lineno} {name}")
    return sorted(set(found))


def test_imports_sit_at_the_top_or_say_why_they_wait():
    assert deferred_imports_without_reason() == []
