"""The house rules of docs/architecture.md, checked on the source: imports point down (core <- compressor <-
edges), no import circle, and no private name imported from another module."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lighttoken_hf"
#: Leaf helpers any layer may use (standard library only).
LEAVES = {"lighttoken_hf.jsonio"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every import of a package module in ``path`` (lazy ones too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            if submodules and len(submodules) == len(names):  # `from . import a, b`: the submodules
                out += [(m, []) for m in submodules]
            elif target in modules:
                out.append((target, names))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name in modules]
    return out


def _layer(name: str) -> int:
    if name in LEAVES:
        return -1
    if name.startswith("lighttoken_hf.core"):
        return 0
    return 1 if name.startswith("lighttoken_hf.compressor") else 2


def test_imports_point_down_and_never_import_private_names():
    modules = _modules()
    upward, private = [], []
    for name, path in modules.items():
        for target, names in _imports(name, path, modules):
            if target != "lighttoken_hf" and _layer(target) > _layer(name):
                upward.append(f"{name} -> {target}")
            private += [f"{name} imports {target}.{n}" for n in names if n.startswith("_") and n != "__version__"]
    assert not upward, upward
    assert not private, private


def test_no_import_circle():
    modules = _modules()
    graph = {
        name: {t for t, _ in _imports(name, path, modules) if t != "lighttoken_hf"} for name, path in modules.items()
    }
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt] if nxt in stack else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*stack, nxt])):
                return found
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            circle = visit(name, [name])
            assert circle is None, " -> ".join(circle)


def test_the_checks_find_what_they_look_for(tmp_path):
    """The parser sees relative, lazy and ``from . import`` imports (a check that finds nothing proves nothing)."""
    modules = _modules()
    api = _imports("lighttoken_hf.compressor.api", modules["lighttoken_hf.compressor.api"], modules)
    assert any(t == "lighttoken_hf.compressor.settings" and "CompressionSettings" in names for t, names in api)
    assert any(t == "lighttoken_hf.core.modeling_lighttoken" for t, _ in api)
    cli = {t for t, _ in _imports("lighttoken_hf.cli", modules["lighttoken_hf.cli"], modules)}
    assert "lighttoken_hf.checkpoint" in cli  # a lazy import inside a function
    assert _layer("lighttoken_hf.cli") > _layer("lighttoken_hf.compressor.api") > _layer("lighttoken_hf.core.x")
