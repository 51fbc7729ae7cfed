"""The package layout shows the architecture, and keeps showing it.

The layers are sub-packages of `astep_cal` (docs/pages/development.md, "The layout"): front-ends call the
engine; the engine calls science, state and formats; science is functions on arrays. These tests read
the modules' import statements (no import is run) and fail on an import circle, on a layer importing one
above it, on a runtime module left at the package root, and on a module grown past the size a newcomer
reads in one sitting.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "daemon" / "astep_cal"
LAYERS = ("frontends", "engine", "science", "state", "formats", "support", "devtools")
# Which layers each layer may import at module level (devtools may import anything; nothing imports it).
ALLOWED = {
    "frontends": {"frontends", "engine", "science", "state", "formats", "support"},
    "engine": {"engine", "science", "state", "formats", "support"},
    "state": {"state", "formats", "support"},
    "formats": {"formats", "support", "science", "state", "frontends"},
    "science": {"science", "formats", "support"},
    "support": {"support"},
    "devtools": set(LAYERS),
}
MAX_LINES = 400  # a runtime module a newcomer reads in one sitting
MAX_DEVTOOL_LINES = 440  # benchmarks and comparison tools carry their report formatting


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def module_level_imports(path: Path, known: set[str]) -> set[str]:
    """The astep_cal modules a module imports when it is imported (not those imported inside functions)."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("astep_cal")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("astep_cal"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
    return {m for m in out if m in known}


def test_runtime_modules_live_in_layer_subpackages():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == {"__init__", "__main__"}, f"modules at the package root: {sorted(top)}"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(LAYERS)


def test_no_import_circle():
    mods = modules()
    graph = {name: module_level_imports(path, set(mods)) - {name} for name, path in mods.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if nxt.count(".") == 1 and nxt != "astep_cal":  # a layer's __init__: docstring only
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_layers_import_only_what_they_may():
    mods = modules()
    wrong = []
    for name, path in mods.items():
        parts = name.split(".")
        if len(parts) < 3:
            continue
        for imported in module_level_imports(path, set(mods)):
            layer = imported.split(".")[1] if imported.count(".") else None
            if layer in LAYERS and layer not in ALLOWED[parts[1]]:
                wrong.append(f"{name} imports {imported}")
    assert not wrong, wrong


def test_no_runtime_module_imports_devtools():
    mods = modules()
    offenders = [name for name, path in mods.items() if ".devtools" not in name
                 and "astep_cal.devtools" in path.read_text()]
    # `cli demo` reaches the demo lazily, inside the function: allowed; a module-level import is not.
    for name in offenders:
        assert not any(m.startswith("astep_cal.devtools") for m in module_level_imports(mods[name], set(mods))), name


def test_no_module_past_its_size():
    def limit(path: Path) -> int:
        return MAX_DEVTOOL_LINES if "devtools" in path.parts else MAX_LINES

    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > limit(p)}
    assert not long, f"modules over their size: {long}"
