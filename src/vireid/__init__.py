"""vireid: cross-modal person retrieval toolkit (visible-infrared ReID and text to RGB+thermal).

The public API is plain Python; the ``vireid`` command line and the YAML configs are thin layers over it.
Heavy submodules are imported lazily so that ``import vireid`` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "FeatureExtractor",
    "__version__",
    "create_model",
    "evaluate",
    "list_configs",
    "list_methods",
    "load",
    "load_config",
    "register_method",
]

# name -> module that defines it; imported on first access (module ``__getattr__``, PEP 562).
_LAZY = {
    "create_model": "vireid.api",
    "load": "vireid.api",
    "list_methods": "vireid.api",
    "list_configs": "vireid.api",
    "register_method": "vireid.api",
    "evaluate": "vireid.evaluation",
    "load_config": "vireid.config",
    "FeatureExtractor": "vireid.inference",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vireid' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
