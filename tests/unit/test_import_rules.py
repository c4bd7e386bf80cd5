"""The import rules, read from the source (no module is imported): every ``import`` statement of
``training``, ``serving`` and ``tuning`` counts, those inside functions and ``TYPE_CHECKING``
blocks included, so a cycle cannot hide behind a late import.

- no import cycle between modules;
- no Ray in the Ray-free layers: serving's ``core``, ``edge``, ``state`` and ``feedback``, and
  ``training/models``;
- ``ray.serve`` only in ``serving/deploy``;
- serving's layers import downwards only (:data:`SERVING_LAYERS`);
- ``training`` imports neither ``serving`` nor ``tuning``; ``tuning`` does not import ``serving``;
- training's base layers import only what is under them (:data:`TRAINING_BASE`: ``common`` nothing,
  ``data`` only ``common``, ``models`` only ``common`` and ``data``), and no module imports a
  command module (``training/commands``, ``serving/commands``: entry points only).

``docs/architecture.md`` draws the same rules.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("training", "serving", "tuning")
RAY_FREE = ("serving.core", "serving.edge", "serving.state", "serving.feedback", "training.models")
# what each layer of serving may import, besides itself (and training)
SERVING_LAYERS = {
    "state": set(),
    "feedback": set(),
    "core": {"state"},
    "edge": {"core", "state", "feedback"},
    "deploy": {"core", "edge", "state", "feedback"},
    "jobs": {"deploy", "core", "edge", "state", "feedback"},
    "commands": {"jobs", "deploy", "core", "edge", "state", "feedback"},
}


def _top(name: str) -> str:
    return name.split(".")[0]

# training's base layers and what each may import of training (besides itself)
TRAINING_BASE = {"common": set(), "data": {"common"}, "models": {"common", "data"}}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(module: str) -> set[str]:
    """Every module ``module`` names in an import (``from a.b import c`` names ``a.b.c`` where
    that is a module, else ``a.b``); relative imports resolved."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if _top(base) in PACKAGES:
                    out.add(full if full in MODULES else base)
                else:  # ``from ray import serve`` names ray.serve (and ray)
                    out.update((base, full))
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _under(module: str, packages: tuple[str, ...]) -> bool:
    """Whether ``module`` is one of ``packages`` or inside one (``serving.state`` holds
    ``serving.state.memory``, not ``serving.state_store``)."""
    return any(module == p or module.startswith(p + ".") for p in packages)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "serving" and len(parts) > 2 else None


def test_no_import_cycles():
    first_party = {m: {i for i in imps if i in MODULES and i != m} for m, imps in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(first_party[v]):
            if w not in index:
                strongconnect(w)
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
                cycles.append(sorted(component))

    for v in sorted(first_party):
        if v not in index:
            strongconnect(v)
    assert not cycles, "import cycles (modules that import each other, directly or not): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_ray_free_layers_import_no_ray():
    bad = {m: sorted(i for i in imps if _top(i) == "ray")
           for m, imps in GRAPH.items() if _under(m, RAY_FREE)}
    assert not {m: i for m, i in bad.items() if i}


def test_only_deploy_imports_ray_serve():
    bad = {m: sorted(i for i in imps if i == "ray.serve" or i.startswith("ray.serve."))
           for m, imps in GRAPH.items() if not _under(m, ("serving.deploy",))}
    assert not {m: i for m, i in bad.items() if i}


def test_serving_layers_import_downwards():
    assert {_layer(m) for m in MODULES if _layer(m)} == set(SERVING_LAYERS), "a layer without rules"
    bad = []
    for module, imps in GRAPH.items():
        layer = _layer(module)
        if layer is None:
            continue
        for i in imps:
            other = _layer(i)
            if other and other != layer and other not in SERVING_LAYERS[layer]:
                bad.append(f"{module} ({layer}) imports {i} ({other})")
    assert not bad, "\n".join(sorted(bad))


def test_arrows_between_packages_point_one_way():
    bad = [f"{m} imports {i}" for m, imps in GRAPH.items() for i in imps
           if (_top(m) in ("training", "tuning") and _top(i) == "serving")
           or (_top(m) == "training" and _top(i) == "tuning")
           or (_under(m, ("training.models",)) and _top(i) in ("serving", "tuning"))]
    assert not bad, "\n".join(sorted(bad))


def test_training_base_layers_import_only_what_is_under_them():
    bad = []
    for module, imps in GRAPH.items():
        parts = module.split(".")
        if parts[0] != "training" or len(parts) < 3 or parts[1] not in TRAINING_BASE:
            continue
        for i in imps:
            other = i.split(".")
            if other[0] == "training" and len(other) > 1 and i in MODULES and other[1] != parts[1] \
                    and other[1] not in TRAINING_BASE[parts[1]]:
                bad.append(f"{module} imports {i}")
    assert not bad, "\n".join(sorted(bad))


def test_nothing_imports_a_command_module():
    commands = ("training.commands", "serving.commands")
    bad = [f"{m} imports {i}" for m, imps in GRAPH.items() for i in imps
           if _under(i, commands) and not _under(m, commands)]
    assert not bad, "\n".join(sorted(bad))


def test_the_rules_see_late_imports():
    """The reader itself: an import inside a function counts (the cycles this test first found
    were closed that way)."""
    tree = ast.parse("def f():\n    from serving.deploy import app\n")
    found = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert found == {"serving.deploy"}
    assert "serving.core.service" in MODULES and "training.models.bandit" in MODULES
