"""Registry of training methods, imported lazily.

A method is one module in this package that exposes ``METHOD``, an object with at least ``name`` and
``config_class`` (a :class:`vireid.config.RunConfig` subclass), plus the hooks the engine calls (see
``vireid.methods.base.Method``). Shared blocks (backbones, heads, samplers, augmentations) never import a
method; methods import shared blocks.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES: dict[str, str] = {
    "baseline": "vireid.methods.baseline",
    "idkl": "vireid.methods.idkl",
    "dakd": "vireid.methods.dakd",
    "dikdnet": "vireid.methods.dikdnet",
    "mce": "vireid.methods.mce",
}


def available_methods() -> list[str]:
    return sorted(_MODULES)


def get_method(name: str) -> Any:
    """Return the ``METHOD`` object of a registered method; ``KeyError`` with the valid names otherwise."""
    if name not in _MODULES:
        raise KeyError(f"unknown method '{name}'; available: {', '.join(available_methods())}")
    module = importlib.import_module(_MODULES[name])
    return module.METHOD
