"""Structure figures of the code base, for issue-17-style before/after comparisons.

Prints: the longest functions, the longest signatures (parameter count), the modules that know a
run-directory file name as a literal, and how many places write each well-known default.
Only library code counts (tests and benchmarks are excluded). Usage: python benchmarks/code_structure.py
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "evaluation", "trainer", "runtime", "exporters", "cli", "models_zoo")
# A string literal naming a run-directory file (f-string pieces included: f"vocab_{lang}.txt" has "vocab_").
RUN_FILE = re.compile(r"^(config|metrics|history|report_data|latest|state)\.json$|^report\.html$|"
                      r"^(model|optimizer)\.safetensors$|^(vocab|topics|refined_topics)_$|^checkpoints$")
# (what, regex over source text) for defaults that should be written once.
DEFAULTS = (
    ("vocab_size 5000", r"\b5_?000\b"),
    ("lambda_mmd 20000", r"\b20_?000(\.0)?\b"),
    ("lr 0.002", r"\b0\.002\b|\b2e-3\b"),
    ("batch_size 200", r"batch_size\s*[:=][^=\n]*\b200\b|default=200\b"),
    ("min_df 2", r"min_df\s*[:=][^=\n]*\b2\b|--min-df.*default=2\b"),
    ("max_df 0.5", r"max_df\s*[:=][^=\n]*\b0\.5\b|--max-df.*default=0\.5\b"),
    ("doc_tau", r"doc_tau\s*[:=][^=\n]*\b0\.[12]\b|--doc-tau.*default=0\.[12]\b"),
    ("lambda_doc 100", r"lambda_doc\s*[:=][^=\n]*\b100(\.0)?\b|--lambda-doc.*default=100"),
)


def library_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def main() -> None:
    funcs: list[tuple[int, int, str]] = []
    files = library_files()
    knows: list[str] = []
    default_hits: dict[str, int] = {name: 0 for name, _ in DEFAULTS}
    total_lines = 0
    for path in files:
        text = path.read_text(encoding="utf-8")
        total_lines += text.count("\n")
        rel = str(path.relative_to(ROOT))
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n_lines = (node.end_lineno or node.lineno) - node.lineno + 1
                a = node.args
                n_params = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
                if a.args and a.args[0].arg in ("self", "cls"):
                    n_params -= 1
                funcs.append((n_lines, n_params, f"{rel}:{node.lineno} {node.name}"))
        literals = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        if any(RUN_FILE.match(s) for s in literals):
            knows.append(rel)
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        for name, pattern in DEFAULTS:
            default_hits[name] += len(re.findall(pattern, code))
    print(f"library: {len(files)} modules, {total_lines} lines")
    print("\nlongest functions (lines):")
    for n, _, where in sorted(funcs, reverse=True)[:8]:
        print(f"  {n:4d}  {where}")
    print("\nlongest signatures (parameters):")
    for n_params, _, where in sorted(((p, n, w) for n, p, w in funcs), reverse=True)[:5]:
        print(f"  {n_params:4d}  {where}")
    print(f"\nmodules with a run-directory file name literal: {len(knows)}")
    for rel in knows:
        print(f"  {rel}")
    print("\nplaces a default is written:")
    for name, count in default_hits.items():
        print(f"  {count:3d}  {name}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
