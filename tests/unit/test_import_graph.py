"""The package boundaries, read from the source (no imports run): arrows point one way.

- nothing imports ``serving``; ``training`` imports neither ``serving`` nor ``tuning``;
- the model code (``training/models``) imports no Ray;
- no cycle between the sub-packages and top-level modules of ``training`` (``training.baselines``
  uses ``training.evaluation``, never the other way round).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("training", "serving", "tuning")


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _modules(package: str) -> dict[str, set[str]]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): _imports(p)
            for p in (ROOT / package).rglob("*.py")}


def _unit(module: str) -> str:
    """``training.baselines.itemknn`` -> ``training.baselines``; ``training.loop`` -> itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_nothing_imports_serving_and_training_imports_neither_serving_nor_tuning():
    for package in ("training", "tuning"):
        for module, imports in _modules(package).items():
            bad = sorted(i for i in imports if i.split(".")[0] == "serving")
            assert not bad, f"{module} imports {bad}"
    for module, imports in _modules("training").items():
        bad = sorted(i for i in imports if i.split(".")[0] == "tuning")
        assert not bad, f"{module} imports {bad}"


def test_model_code_is_ray_free():
    for module, imports in _modules("training").items():
        if module.startswith("training.models."):
            assert not any(i.split(".")[0] == "ray" for i in imports), module


def test_no_cycle_between_the_parts_of_training():
    graph: dict[str, set[str]] = {}
    for module, imports in _modules("training").items():
        src = _unit(module)
        graph.setdefault(src, set()).update(_unit(i) for i in imports
                                            if i.startswith("training.") and _unit(i) != src)

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for c in (cycle_from(n) for n in sorted(graph)) if c]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
