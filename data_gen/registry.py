"""Every simulated family, by name: the one module that imports both the persona and the attack
modules (importing them registers their families), so neither has to import the other."""

from __future__ import annotations

from moat.data_gen import attacks as _attacks  # noqa: F401  (registers the attack families)
from moat.data_gen import personas as _personas  # noqa: F401  (registers the personas)
from moat.data_gen.actors import Actor, registered


def registry() -> dict[str, type[Actor]]:
    """Personas first, then attacks, each in definition order. The stable sort makes the order
    independent of which module happened to be imported first; `plan_actors` draws families in
    this order, so it is part of what makes a seed reproduce the same trace."""
    return dict(sorted(registered().items(), key=lambda item: item[1].label))


def personas() -> dict[str, type[Actor]]:
    return {name: cls for name, cls in registry().items() if cls.label == 0}


def attacks() -> dict[str, type[Actor]]:
    return {name: cls for name, cls in registry().items() if cls.label == 1}
