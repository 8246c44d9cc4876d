"""The import rules of docs/architecture.md, checked on the source (static) and by importing (dynamic).

1. The runtime (xtm.runtime), the package root's shared modules (xtm.*) and the evaluation modules
   (metrics, published numbers, report) never import torch: the base install has no torch.
2. The trainer never imports the CLIs or the report renderer (training hands the report data).
3. Nothing imports the CLIs except the CLIs themselves.
4. No module imports another module's underscore names (what is shared is public and documented).
5. No import cycles between modules (imports inside TYPE_CHECKING blocks excepted: they never run).
6. Layers (LAYERS): each subpackage imports only the ones its row names: core none, runtime core only,
   evaluation and models_zoo core and runtime; the CLIs anything.
7. The runtime and the package root import no package the base install lacks (OPTIONAL) at module level:
   only inside the functions that need them.
(Rule 8, library code never prints, is tests/test_no_print.py's.)
"""

from __future__ import annotations

import ast
import re
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
# Which layers (subpackages; "core" is the package root's own modules) each layer may import, checked against
# every import that can run, lazy ones inside functions included (docs/architecture.md, import rule 6). Not an
# import, so not checked here: the package root serves `xtm.train` and `xtm.TopicModel` by name on first access
# (core/__init__.py's `_LAZY`, through importlib), the public entry points a user expects at the top.
LIBRARY_LAYERS = frozenset({"core", "runtime", "evaluation", "models_zoo", "trainer", "exporters"})
LAYERS: dict[str, frozenset[str]] = {
    # What every part shares depends on no part.
    "core": frozenset(),
    # The base install: no torch (trainer, models_zoo, exporters) and no report renderer.
    "runtime": frozenset({"core"}),
    # The runtime legitimately: the inference report (report_theta) reads a bundle (xtm.runtime.bundle) and
    # xtm-infer's output lines (xtm.runtime.records) as xtm-infer does. Never torch's layers: xtm-report runs on
    # the runtime's install plus scipy (the `report` extra).
    "evaluation": frozenset({"core", "runtime"}),
    # What a model is never reaches into how it learns; the runtime for the contextual route's tokenizer
    # (models_zoo.context_encoders -> runtime.contextual), which training and serving must share.
    "models_zoo": frozenset({"core", "runtime"}),
    # Training evaluates (metrics) and xtm.train(export=...) exports; export loads the trained model
    # (load_trained_model) and its contextual head. Neither imports the CLIs (test_nothing_imports_the_clis).
    "trainer": LIBRARY_LAYERS,
    "exporters": LIBRARY_LAYERS,
    "cli": LIBRARY_LAYERS | {"cli"},
}
# Packages the base install lacks (pyproject.toml's `dependencies`: numpy, click, tqdm, py3langid, sentencepiece;
# test_optional_packages_are_not_base_dependencies keeps this true). The runtime and the package root import them
# only inside the functions that need them: at module level, `import xtm.runtime` fails on the base install.
OPTIONAL = ("scipy", "sklearn", "onnx", "onnxruntime", "pyarrow", "transformers", "sentence_transformers",
            "tokenizers", "ray")


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


def layer(mod: str) -> str:
    """The layer of an xtm module: its subpackage, or "core" for the package root's own modules."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS and parts[1] != "core" else "core"


def layer_violations(mod: str, path: Path) -> list[str]:
    """`file:line: ...` for each import in `path` (module `mod`) of a layer LAYERS does not give its layer."""
    own = layer(mod)
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    return [f"{where}:{line}: {own} imports {t} ({layer(t)})"
            for line, target, names in imports(path)
            for t in resolve(target, names) or [target]
            if (t == "xtm" or t.startswith("xtm.")) and layer(t) != own and layer(t) not in LAYERS[own]]


TRY_STATEMENTS = (ast.Try, ast.TryStar) if hasattr(ast, "TryStar") else (ast.Try,)  # try/except* from 3.11


def module_level_imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for each import that runs when `path` is imported: the module's body, its class bodies
    and the branches around them, not function bodies (lazy imports) nor TYPE_CHECKING blocks."""
    def walk(body: list[ast.stmt]) -> Iterator[tuple[int, str]]:
        for node in body:
            if isinstance(node, ast.Import):
                yield from ((node.lineno, a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if not node.level:  # a relative import is the package's own
                    yield node.lineno, node.module or ""
            elif isinstance(node, ast.If):
                if not is_type_checking(node):
                    yield from walk(node.body)
                yield from walk(node.orelse)
            elif isinstance(node, TRY_STATEMENTS):
                for part in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                    yield from walk(part)
            elif isinstance(node, (ast.With, ast.ClassDef, ast.For, ast.While)):
                yield from walk(node.body)
    yield from walk(ast.parse(path.read_text(encoding="utf-8")).body)


def base_install(mod: str) -> bool:
    """Modules the base install (no extras) imports: the runtime's and the package root's."""
    return torch_free(mod) and not mod.startswith("xtm.evaluation")


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


def test_runtime_and_core_import_no_optional_package_at_module_level() -> None:
    bad = [f"{MODULES[m].relative_to(ROOT)}:{line}: imports {target} when imported (import it inside the "
           "function that needs it)"
           for m in MODULES if base_install(m)
           for line, target in module_level_imports(MODULES[m]) if target.split(".")[0] in OPTIONAL]
    assert not bad, "\n".join(bad)


def test_optional_packages_are_not_base_dependencies() -> None:
    """OPTIONAL lists what the base install lacks: a package moved into `dependencies` leaves the list."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = text.split("\ndependencies = [", 1)[1].split("\n]", 1)[0]
    base = {m[1].lower().replace("-", "_") for m in re.finditer(r'^\s*"([A-Za-z0-9_.-]+)', block, re.M)}
    assert base >= {"numpy", "click"}, base  # the block was found
    assert not base & set(OPTIONAL), base & set(OPTIONAL)


def test_runtime_and_core_import_without_optional_packages(tmp_path: Path) -> None:
    """Import every runtime and package-root module where torch and each OPTIONAL package fail to import, and
    none of them was even tried (a module-level `try: import scipy` costs every command's start-up too)."""
    for name in ("torch", *OPTIONAL):
        (tmp_path / f"{name}.py").write_text(
            "import builtins\n"
            "builtins.__dict__.setdefault('_xtm_tried', []).append(__name__)\n"
            f"raise ImportError('{name} is not installed (test_import_rules)')\n")
    mods = sorted(m for m in MODULES if base_install(m) and m != "xtm.runtime.ray")  # ray: its own extra
    code = ("import builtins, importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods)
            + "tried = builtins.__dict__.get('_xtm_tried', [])\n"
            "assert not tried, f'tried to import {tried}'\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert p.returncode == 0, p.stderr[-2000:]


def test_each_layer_imports_only_the_layers_its_row_names() -> None:
    assert set(LAYERS) == LIBRARY_LAYERS | {"cli"} and set(PACKAGES) == set(LAYERS)
    bad = [hit for m in MODULES for hit in layer_violations(m, MODULES[m])]
    assert not bad, "\n".join(bad)


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


@pytest.mark.parametrize("rule", ["torch", "cli", "private", "cycle", "layer", "optional"])
def test_the_rules_catch_a_violation(tmp_path: Path, rule: str) -> None:
    """The checks above can fail: each sees a planted violation."""
    src = {"torch": "import torch\n", "cli": "from xtm.cli import train\n",
           "private": "from xtm.runtime.model import _Encoder\n", "cycle": "",
           "layer": "def f():\n    from xtm.trainer.api import train\n",
           "optional": "import numpy\ntry:\n    import pyarrow.parquet\nexcept ImportError:\n    pass\n"
                       "class A:\n    import scipy\ndef f():\n    import sklearn\n"
                       "if TYPE_CHECKING:\n    import onnx\n"}[rule]
    f = tmp_path / "planted.py"
    f.write_text(src)
    found = list(imports(f)) if rule != "cycle" else []
    if rule == "layer":
        # lazily, inside a function, still an edge: core importing the trainer, the runtime importing the trainer
        assert layer_violations("xtm.planted", f) == ["planted.py:2: core imports xtm.trainer.api (trainer)"]
        assert layer_violations("xtm.runtime.planted", f)[0].endswith("runtime imports xtm.trainer.api (trainer)")
        assert layer_violations("xtm.cli.planted", f) == []
    elif rule == "optional":
        assert list(module_level_imports(f)) == [(1, "numpy"), (3, "pyarrow.parquet"), (7, "scipy")]
    elif rule == "torch":
        assert found[0][1] == "torch"
    elif rule == "cli":
        assert found[0][1].startswith("xtm.cli")
    elif rule == "private":
        assert found[0][2] == ["_Encoder"]
    else:
        assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
        assert find_cycles({"a": {"b"}, "b": set()}) == []
