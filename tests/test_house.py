"""The house rules that can be read off the source (ipo_jax/, parsed with `ast`, nothing imported).

- No import cycle between ipo_jax modules, counting imports written inside functions (a cycle
  hidden that way still means two modules that cannot be understood apart).
- Imports of ipo_jax modules at module top. The one exception is cli.py's dispatch: `ipo-jax
  --help` and `ipo-jax presets` answer in ~0.3 s because they do not import jax (a training
  stage's imports take ~8 s on the 2-core CI machine).
- Data flows one way: each layer below imports nothing above it (LAYERS).
- Library code logs; only the command line (cli.py, and launch.py, which relays its processes'
  output lines) prints.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ipo_jax"
LAZY_IMPORTS_ALLOWED = {"ipo_jax.cli"}
PRINTS_ALLOWED = {"ipo_jax.cli", "ipo_jax.launch"}
# Each entry: modules under the prefix must not import any module under the listed prefixes.
TOP = ("ipo_jax.cli", "ipo_jax.demo", "ipo_jax.launch")
LAYERS = {
    "ipo_jax.models": ("ipo_jax.data", "ipo_jax.sampling", "ipo_jax.rollout", "ipo_jax.judging",
                       "ipo_jax.pipeline", "ipo_jax.eval", "ipo_jax.train", "ipo_jax.serve", *TOP),
    "ipo_jax.loss": ("ipo_jax.sampling", "ipo_jax.rollout", "ipo_jax.judging", "ipo_jax.pipeline",
                     "ipo_jax.eval", "ipo_jax.train", "ipo_jax.serve", *TOP),
    "ipo_jax.data": ("ipo_jax.rollout", "ipo_jax.judging", "ipo_jax.pipeline", "ipo_jax.eval",
                     "ipo_jax.train", "ipo_jax.serve", *TOP),
    "ipo_jax.sampling": ("ipo_jax.rollout", "ipo_jax.judging", "ipo_jax.pipeline", "ipo_jax.eval",
                         "ipo_jax.train", "ipo_jax.serve", *TOP),
    "ipo_jax.checkpoint": ("ipo_jax.rollout", "ipo_jax.judging", "ipo_jax.pipeline", "ipo_jax.eval",
                           "ipo_jax.train", "ipo_jax.serve", *TOP),
    "ipo_jax.judging": ("ipo_jax.pipeline", "ipo_jax.eval", "ipo_jax.train", "ipo_jax.serve", *TOP),
    "ipo_jax.rollout": ("ipo_jax.pipeline", "ipo_jax.eval", "ipo_jax.train", "ipo_jax.serve", *TOP),
    "ipo_jax.pipeline": ("ipo_jax.eval", "ipo_jax.train", "ipo_jax.serve", *TOP),
    "ipo_jax.eval": ("ipo_jax.pipeline", "ipo_jax.train", "ipo_jax.serve", *TOP),
    "ipo_jax.train": ("ipo_jax.pipeline", "ipo_jax.eval", "ipo_jax.judging", "ipo_jax.rollout",
                      "ipo_jax.serve", *TOP),
    "ipo_jax.validation": ("ipo_jax.train", "ipo_jax.pipeline", "ipo_jax.eval", "ipo_jax.serve", *TOP),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The ipo_jax modules one import statement reaches ('from a import b' is module a.b when a.b
    is a module, else a)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".")
            if MODULES[module].name != "__init__.py":
                package = package[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    return [n for n in names if n == "ipo_jax" or n.startswith("ipo_jax.")]


def _walk(module: str):
    """(import target, inside a function?) for every ipo_jax import of `module`, and its print calls."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    imports, prints = [], []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                imports.extend((target, in_function, child.lineno) for target in _targets(module, child))
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Name) and child.func.id == "print":
                prints.append(child.lineno)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return imports, prints


WALKED = {module: _walk(module) for module in MODULES}


def test_no_import_cycles_even_through_imports_inside_functions():
    graph = defaultdict(set)
    for module, (imports, _) in WALKED.items():
        graph[module].update(t for t, _, _ in imports if t in MODULES and t != module)
    cycles, index, low, stack, on_stack = [], {}, {}, [], set()

    def strongly_connected(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongly_connected(w)
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
            # A package's __init__ importing its own submodules is not a cycle of understanding.
            if len(component) > 1 and not all(c.startswith(min(component, key=len)) for c in component):
                cycles.append(sorted(component))

    for module in sorted(MODULES):
        if module not in index:
            strongly_connected(module)
    assert not cycles, f"import cycles: {cycles}"


def test_ipo_jax_imports_sit_at_module_top():
    inside = sorted({f"{m}:{line}" for m, (imports, _) in WALKED.items() if m not in LAZY_IMPORTS_ALLOWED
                     for _, in_function, line in imports if in_function})
    assert not inside, f"{len(inside)} imports inside functions: " + ", ".join(inside)


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_data_flows_one_way(layer):
    forbidden = LAYERS[layer]
    wrong = sorted({f"{m}:{line} imports {t}" for m, (imports, _) in WALKED.items()
             if m == layer or m.startswith(layer + ".")
             for t, _, line in imports if any(t == f or t.startswith(f + ".") for f in forbidden)})
    assert not wrong, "\n".join(wrong)


def test_library_code_logs_and_only_the_command_line_prints():
    printing = [f"{m}:{line}" for m, (_, prints) in WALKED.items() if m not in PRINTS_ALLOWED for line in prints]
    assert not printing, "print() in library modules: " + ", ".join(printing)


def test_the_rules_see_the_package():
    # Guards the checks above against passing on an empty walk.
    assert len(MODULES) > 50 and "ipo_jax.train.loop" in MODULES
    assert any(imports for imports, _ in WALKED.values())
    assert WALKED["ipo_jax.cli"][1], "cli.py prints its results; the print finder should see them"
