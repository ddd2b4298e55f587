"""The registry lists every family once, in a fixed order, and the family modules import
without a circle: actors is the base, personas and attacks build on it, registry joins them."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import moat.data_gen
from moat.data_gen.actors import Actor, register
from moat.data_gen.registry import attacks, personas, registry

PACKAGE = "moat.data_gen"


def family_classes() -> list[type[Actor]]:
    """Every class below Actor that names its own family (bases such as Persona name none)."""
    found, stack = [], [Actor]
    while stack:
        for sub in stack.pop().__subclasses__():
            stack.append(sub)
            if "family" in vars(sub):
                found.append(sub)
    return found


def test_registry_lists_every_family_class_exactly_once() -> None:
    classes = family_classes()
    counts = Counter(cls.family for cls in classes)
    assert [f for f, n in counts.items() if n > 1] == []
    assert registry() == {cls.family: cls for cls in classes}


def test_personas_and_attacks_split_the_registry_by_label() -> None:
    assert personas().keys() | attacks().keys() == registry().keys()
    assert not personas().keys() & attacks().keys()
    for cls in registry().values():
        assert (cls.label, cls.kind) in {(0, "persona"), (1, "attack")}, cls.family


def test_registering_a_family_twice_fails_and_keeps_the_first() -> None:
    first = registry()["chat_user"]
    impostor = type("Impostor", (first,), {"family": "chat_user"})
    with pytest.raises(ValueError, match="'chat_user' registered twice"):
        register(impostor)
    assert registry()["chat_user"] is first


def _imports(path: Path) -> set[str]:
    """The moat.data_gen modules a file imports anywhere in it, function bodies included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from moat.data_gen import attacks` imports the submodule.
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n.startswith(PACKAGE + ".")}


def test_data_gen_modules_import_without_a_circle() -> None:
    folder = Path(moat.data_gen.__file__).parent
    modules = {f"{PACKAGE}.{p.stem}": p for p in folder.glob("*.py") if p.stem != "__init__"}
    graph = {m: _imports(p) & modules.keys() for m, p in modules.items()}
    assert graph[f"{PACKAGE}.registry"] >= {f"{PACKAGE}.personas", f"{PACKAGE}.attacks"}

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        return next((c for dep in sorted(graph[module]) if (c := cycle_from(dep, path + [module]))), None)

    cycles = [c for m in sorted(graph) if (c := cycle_from(m, []))]
    assert cycles == [], " -> ".join(cycles[0])


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.parametrize(
    "module, must_not_load",
    [
        ("moat.data_gen.personas", "moat.data_gen.attacks"),
        ("moat.data_gen.attacks", "moat.data_gen.personas"),
        ("moat.data_gen.actors", "moat.data_gen.personas"),
        ("moat.data_gen.actors", "moat.data_gen.attacks"),
    ],
)
def test_importing_one_family_module_does_not_load_another(module: str, must_not_load: str) -> None:
    loaded = _python(f"import sys, {module}; print(' '.join(sorted(sys.modules)))").split()
    assert module in loaded
    assert must_not_load not in loaded


@pytest.mark.parametrize("first", ["moat.data_gen.attacks", "moat.data_gen.personas", "moat.data_gen.registry"])
def test_registry_order_does_not_depend_on_import_order(first: str) -> None:
    """plan_actors draws families in registry order, so this order is part of a seed's trace."""
    order = _python(f"import {first}; from moat.data_gen.registry import registry; print(' '.join(registry()))").split()
    assert order == list(registry())
    assert order[: len(personas())] == list(personas())
