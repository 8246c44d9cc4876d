"""The import rules of docs/architecture.md, checked on the source (static) and by importing (dynamic).

1. The runtime (xtm.runtime), the package root's shared modules (xtm.*) and the evaluation modules
   (metrics, published numbers, report) never import torch: the base install has no torch.
2. The trainer never imports the CLIs or the report renderer (training hands the report data).
3. Nothing imports the CLIs except the CLIs themselves.
4. No module imports another module's underscore names (what is shared is public and documented).
5. No import cycles between modules (imports inside TYPE_CHECKING blocks excepted: they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folder -> import prefix (pyproject.toml's package-dir).
PACKAGES = {"core": "xtm", "cli": "xtm.cli", "evaluation": "xtm.evaluation", "exporters": "xtm.exporters",
            "models_zoo": "xtm.models_zoo", "runtime": "xtm.runtime", "trainer": "xtm.trainer"}
TORCH_FREE_PREFIXES = ("xtm.runtime", "xtm.evaluation")
TORCH = ("torch", "safetensors.torch", "torchvision")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    parts[-1] = parts[-1][:-3]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for folder in PACKAGES for p in sorted((ROOT / folder).rglob("*.py"))}


MODULES = modules()


def is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, imported module, names) for every import that can run (TYPE_CHECKING blocks skipped)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def package() -> str:
        return module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]

    def walk(node: ast.AST) -> Iterator[tuple[int, str, list[str]]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and is_type_checking(child):
                yield from (x for stmt in child.orelse for x in walk_stmt(stmt))
                continue
            yield from walk_stmt(child)

    def walk_stmt(node: ast.AST) -> Iterator[tuple[int, str, list[str]]]:
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package().split(".")
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
            yield node.lineno, base, [a.name for a in node.names]
        else:
            yield from walk(node)

    yield from walk(tree)


def resolve(target: str, names: list[str]) -> list[str]:
    """The project modules an import statement loads (`from xtm.x import mod` names a module too)."""
    out = [target] if target in MODULES else []
    out += [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
    return out


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for _, target, names in imports(path):
            graph[mod].update(t for t in resolve(target, names) if t != mod)
    return graph


def torch_free(mod: str) -> bool:
    top_level_shared = mod.count(".") == 1 and mod.startswith("xtm.") and MODULES[mod].parent.name == "core"
    return mod == "xtm" or top_level_shared or mod.startswith(TORCH_FREE_PREFIXES)


def test_torch_free_modules_never_import_torch() -> None:
    bad = [f"{MODULES[m].relative_to(ROOT)}:{line}: imports {target}"
           for m in MODULES if torch_free(m)
           for line, target, _ in imports(MODULES[m]) if target.split(".")[0] in ("torch", "torchvision")
           or target in TORCH]
    assert not bad, "\n".join(bad)


def test_torch_free_modules_import_without_torch(tmp_path: Path) -> None:
    """Import every torch-free module in a process where `import torch` fails."""
    (tmp_path / "torch.py").write_text("raise ImportError('torch is not installed (test_import_rules)')\n")
    mods = sorted(m for m in MODULES if torch_free(m) and m != "xtm.runtime.ray")  # ray: optional extra
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert p.returncode == 0, p.stderr[-2000:]


def test_the_trainer_never_imports_the_clis_or_the_report_renderer() -> None:
    bad = [f"{MODULES[m].relative_to(ROOT)}:{line}: imports {t}"
           for m in MODULES if m.startswith("xtm.trainer")
           for line, target, names in imports(MODULES[m])
           for t in resolve(target, names) or [target]
           if t.startswith("xtm.cli") or t.startswith("xtm.evaluation.report")]
    assert not bad, "\n".join(bad)


def test_nothing_imports_the_clis() -> None:
    bad = [f"{MODULES[m].relative_to(ROOT)}:{line}: imports {target}"
           for m in MODULES if not m.startswith("xtm.cli")
           for line, target, _ in imports(MODULES[m]) if target.startswith("xtm.cli")]
    assert not bad, "\n".join(bad)


def test_no_module_imports_another_modules_private_names() -> None:
    bad = [f"{MODULES[m].relative_to(ROOT)}:{line}: from {target} import {n}"
           for m in MODULES
           for line, target, names in imports(MODULES[m]) if target.startswith("xtm") and target != m
           for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, "\n".join(bad)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_cycles() -> None:
    cycles = find_cycles(edges())
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("rule", ["torch", "cli", "private", "cycle"])
def test_the_rules_catch_a_violation(tmp_path: Path, rule: str) -> None:
    """The checks above can fail: each sees a planted violation."""
    src = {"torch": "import torch\n", "cli": "from xtm.cli import train\n",
           "private": "from xtm.runtime.model import _Encoder\n", "cycle": ""}[rule]
    f = tmp_path / "planted.py"
    f.write_text(src)
    found = list(imports(f)) if rule != "cycle" else []
    if rule == "torch":
        assert found[0][1] == "torch"
    elif rule == "cli":
        assert found[0][1].startswith("xtm.cli")
    elif rule == "private":
        assert found[0][2] == ["_Encoder"]
    else:
        assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
        assert find_cycles({"a": {"b"}, "b": set()}) == []
