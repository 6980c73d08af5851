"""genepanel: design gene panels from omics data with concrete autoencoders.

The library entry points are :func:`select_panel` (train a panel), :func:`impute`
(all genes from a measured panel), :func:`compare_landmarks` (a panel against the L1000
landmarks or another reference) and, for a saved run folder, :func:`load_model`.
From a notebook, :func:`genepanel.tl.select` works on an AnnData like scanpy's tools.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("genepanel")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "SelectConfig",
    "__version__",
    "compare_landmarks",
    "impute",
    "load_model",
    "map_landmarks",
    "select_panel",
    "tl",
]


def __getattr__(name: str):  # lazy: keep `import genepanel` (and the CLI's --help) fast
    if name == "select_panel":
        from genepanel.api import select_panel

        return select_panel
    if name == "load_model":
        from genepanel.saved import load_model

        return load_model
    if name == "impute":
        from genepanel.imputation import impute

        return impute
    if name == "compare_landmarks":
        from genepanel.compare import compare_landmarks

        return compare_landmarks
    if name == "map_landmarks":
        from genepanel.landmarks import map_landmarks

        return map_landmarks
    if name == "tl":
        import genepanel.tl as tl

        return tl
    if name == "SelectConfig":
        from genepanel.config import SelectConfig

        return SelectConfig
    msg = f"module 'genepanel' has no attribute {name!r}"
    raise AttributeError(msg)
