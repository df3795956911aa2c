"""Training methods and their registry.

A method is one module in this package that exposes ``METHOD``, an object honouring the method contract
(:class:`vireid.methods.base.Method`, described in ``docs/architecture.md``). Methods are looked up by name
in :mod:`vireid.methods.registry`, which imports built-in methods lazily and also finds methods registered
at run time (:func:`register_method`) and plugins (entry point group ``vireid.methods``). Shared blocks
(backbones, heads, samplers, augmentations) never import a method; methods import shared blocks.
"""

from __future__ import annotations

from vireid.methods.registry import (
    ENTRY_POINT_GROUP,
    REGISTRY,
    UnknownMethodError,
    available_methods,
    get_method,
    register_method,
    unregister_method,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "REGISTRY",
    "UnknownMethodError",
    "available_methods",
    "get_method",
    "register_method",
    "unregister_method",
]
