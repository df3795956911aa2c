"""vireid: cross-modal person retrieval toolkit (visible-infrared ReID and text to RGB+thermal).

The public API is plain Python; the ``vireid`` command line and the YAML configs are thin layers over it.
Heavy submodules are imported lazily so that ``import vireid`` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["FeatureExtractor", "__version__", "evaluate", "load_config"]


def __getattr__(name: str):
    if name == "evaluate":
        from vireid.evaluation import evaluate

        return evaluate
    if name == "load_config":
        from vireid.config import load_config

        return load_config
    if name == "FeatureExtractor":
        from vireid.inference import FeatureExtractor

        return FeatureExtractor
    raise AttributeError(f"module 'vireid' has no attribute {name!r}")
