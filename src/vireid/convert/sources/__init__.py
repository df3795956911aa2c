"""Registry of release sources: one module per source, ``vireid.convert.sources.<name>``, exposing ``SOURCE``.

A source is found by its module name, so adding one is adding one file (see :mod:`vireid.convert`); the
names the command line offers are :data:`KNOWN_SOURCES`, and a known name whose module does not exist yet
is reported as not available rather than as a bad name.
"""

from __future__ import annotations

import importlib

from vireid.errors import ConfigError

KNOWN_SOURCES: tuple[str, ...] = ("agw", "caj", "idkl", "dakd", "mce")
"""The ``--from`` names: AGW and CAJ (mangye16/Cross-Modal-Re-ID-baseline), IDKL (1KK077/IDKL), DAKD
(Fouroy4/DAKD) and MCE (IDLNL/MCE)."""


def available_sources() -> list[str]:
    """The known sources whose module exists in this installation."""
    return [name for name in KNOWN_SOURCES if importlib.util.find_spec(f"{__name__}.{name}") is not None]


def get_source(name: str):
    """The :class:`~vireid.convert.source.ReleaseSource` of ``name``; a clear error for unknown or absent ones."""
    if name not in KNOWN_SOURCES:
        raise ConfigError(f"unknown release source '{name}'.", fix=f"use one of: {', '.join(KNOWN_SOURCES)}.")
    module_name = f"{__name__}.{name}"
    if importlib.util.find_spec(module_name) is None:
        raise ConfigError(
            f"the '{name}' release source is not available yet in this vireid version.",
            fix=f"available: {', '.join(available_sources())}.",
        )
    return importlib.import_module(module_name).SOURCE
