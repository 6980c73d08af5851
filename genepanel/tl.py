"""scanpy-style tools: panels selected from, and written into, an in-memory AnnData.

    >>> import scanpy as sc, genepanel as gp
    >>> adata = sc.datasets.pbmc68k_reduced().raw.to_adata()
    >>> model = gp.tl.select(adata, 30)
    >>> adata.var_names[adata.var["genepanel"]]          # the panel
    >>> adata.uns["genepanel"]["metrics"]                # held-out errors, baselines

Nothing is written to disk; :func:`genepanel.select_panel` with ``out=`` writes a run folder.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from genepanel.errors import DataError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import anndata as ad

    from genepanel.config import SelectConfig
    from genepanel.io import ExpressionData
    from genepanel.saved import FittedModel

__all__ = ["groups_frame", "select"]

log = logging.getLogger("genepanel")


class _NotebookProgress:
    """One tqdm.auto bar over the epochs (a widget in Jupyter, text elsewhere)."""

    def __init__(self) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=None, unit="epoch", desc="genepanel", leave=False)

    def __call__(self, rec: dict[str, float]) -> None:
        if "epoch" not in rec:  # a restart or retry notice
            log.info("genepanel: %s", ", ".join(f"{k} {v}" for k, v in rec.items()))
            self.bar.reset()
            return
        total = int(rec.get("epochs") or 0) or None
        if total != self.bar.total:
            self.bar.total = total
        self.bar.n = int(rec["epoch"]) + 1
        self.bar.set_postfix(T=f"{rec['temperature']:.3g}", maxprob=f"{rec['mean_max_prob']:.3f}",
                             refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def expression_from_anndata(adata: ad.AnnData, layer: str | None = None) -> ExpressionData:
    """An :class:`~genepanel.io.ExpressionData` view of ``adata`` (``X`` or ``layers[layer]``).

    The matrix is converted to float32 (CSR when sparse) only where it is not already;
    ``adata`` itself is never modified.
    """
    import anndata as ad

    from genepanel.io import ExpressionData, validate_matrix

    if not isinstance(adata, ad.AnnData):
        msg = f"expected an AnnData object, got {type(adata).__name__}"
        raise UsageError(msg)
    if adata.isbacked:
        msg = ("this AnnData is opened in backed mode; pass its file path to "
               "genepanel.select_panel (which streams it) or load it with ad.read_h5ad(path)")
        raise UsageError(msg)
    if layer is None:
        x = adata.X
        where = "X"
    else:
        if layer not in adata.layers:
            have = ", ".join(adata.layers.keys()) or "none"
            msg = f"layer '{layer}' not found in the AnnData (layers: {have})"
            raise UsageError(msg)
        x = adata.layers[layer]
        where = f"layers['{layer}']"
    if x is None:
        msg = "the AnnData has no X; pass layer= to choose a layer"
        raise DataError(msg)
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float32)  # copies only when format or dtype differ
    else:
        x = np.asarray(x, dtype=np.float32)
    data = ExpressionData(X=x, genes=[str(g) for g in adata.var_names], obs=adata.obs.copy(),
                          source=f"AnnData {adata.n_obs} × {adata.n_vars} ({where})")
    validate_matrix(data)
    return data


def _config(n_genes: int, config: SelectConfig | None, options: dict[str, Any]) -> SelectConfig:
    """``config`` (or the defaults) with ``k`` and ``options`` applied.

    An option is a top-level field (``preprocess``), a dotted one (``train.learning_rate``)
    or the bare name of a field in one section (``learning_rate``, ``anneal_steps``).
    """
    from genepanel.config import _SECTIONS, SelectConfig

    cfg = config if config is not None else SelectConfig()
    top = {f.name for f in dataclasses.fields(SelectConfig)}
    changes: dict[str, Any] = {"k": int(n_genes)}
    for name, value in options.items():
        if name in top or "." in name:
            changes[name] = value
            continue
        owners = [s for s, cls in _SECTIONS.items()
                  if name in {f.name for f in dataclasses.fields(cls)}]
        if len(owners) != 1:
            valid = sorted(top - set(_SECTIONS)) + sorted(
                f.name for cls in _SECTIONS.values() for f in dataclasses.fields(cls))
            msg = f"unknown option {name!r}; valid options: {', '.join(valid)}"
            raise UsageError(msg)
        changes[f"{owners[0]}.{name}"] = value
    return cfg.replace(**changes)


def select(
    adata: ad.AnnData,
    n_genes: int,
    *,
    layer: str | None = None,
    key_added: str = "genepanel",
    copy: bool = False,
    config: SelectConfig | None = None,
    progress: bool = True,
    **options: Any,
) -> FittedModel | tuple[ad.AnnData, FittedModel]:
    """Select a panel of ``n_genes`` genes from ``adata`` and annotate it, like scanpy's tools.

    Parameters
    ----------
    adata
        Cells × genes; ``X`` (or ``layers[layer]``) holds the expression to choose from.
    n_genes
        Panel size k.
    layer
        Use this layer instead of ``X``.
    key_added
        Prefix of the columns and the ``uns`` entry written.
    copy
        Annotate a copy and return ``(copy, model)``; otherwise annotate ``adata`` in place.
    config
        A :class:`~genepanel.config.SelectConfig` to start from (defaults otherwise).
    progress
        Show a progress bar over the epochs (``tqdm.auto``: a widget in a notebook).
    **options
        Any select option by name: ``preprocess="log1p"``, ``seed=1``,
        ``anneal_steps=40000``, ``train.learning_rate=1e-3`` (as a dict key).

    Returns
    -------
    The fitted model (:class:`~genepanel.saved.FittedModel`, usable with
    :func:`genepanel.impute`), or ``(adata_copy, model)`` with ``copy=True``.

    Writes
    ------
    ``adata.var[key_added]``
        bool, True for the panel's genes.
    ``adata.var[f"{key_added}_node"]``
        int, the selector node that chose the gene (-1 for genes outside the panel).
    ``adata.var[f"{key_added}_probability"]``
        float, the node's selection probability on its gene (NaN outside the panel, and
        for genes the swap refinement put in place of the node's own).
    ``adata.uns[key_added]``
        ``config``, ``panel``, ``refined`` (panel genes the swap refinement chose),
        ``metrics`` (held-out errors and baselines), ``groups`` (alternatives per node),
        ``training`` and ``provenance`` (versions, seed, time).
    """
    from genepanel import __version__
    from genepanel.api import select_panel
    from genepanel.io import uns_safe

    cfg = _config(n_genes, config, options)
    data = expression_from_anndata(adata, layer)
    log.info("genepanel: selecting %d of %d genes from %d cells", cfg.k, adata.n_vars,
             adata.n_obs)
    bar = _NotebookProgress() if progress else None
    try:
        res = select_panel(data, cfg, on_epoch=bar)
    finally:
        if bar is not None:
            bar.close()
    log.info("genepanel: panel of %d genes, held-out linear refit MSE %.4g", cfg.k,
             res.metrics["linear_refit_test_mse"])
    target = adata.copy() if copy else adata
    table = res.panel_table
    idx = table["gene_index"].to_numpy()
    chosen = np.zeros(target.n_vars, bool)
    chosen[idx] = True
    node = np.full(target.n_vars, -1, np.int64)
    node[idx] = table["node"].to_numpy()
    prob = np.full(target.n_vars, np.nan, np.float64)
    prob[idx] = table["probability"].to_numpy()
    target.var[key_added] = chosen
    target.var[f"{key_added}_node"] = node
    target.var[f"{key_added}_probability"] = prob
    groups = res.groups.copy()
    groups["selected"] = groups["selected"].astype(bool)
    target.uns[key_added] = uns_safe({
        "config": cfg.to_dict(),
        "layer": layer,
        "panel": list(table["gene"]),
        "refined": list(table.loc[table["refined"], "gene"]) if "refined" in table else [],
        "metrics": res.metrics,
        "training": res.run.get("training", {}),
        "groups": {c: groups[c].to_numpy() if groups[c].dtype != object
                   else groups[c].astype(str).to_numpy(dtype=object) for c in groups.columns},
        "provenance": {
            "genepanel": __version__,
            "versions": res.run.get("versions", {}),
            "seed": res.run.get("seed", cfg.seed),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    })
    return (target, res.model) if copy else res.model


def groups_frame(adata: ad.AnnData, key_added: str = "genepanel") -> pd.DataFrame:
    """The related-gene groups stored by :func:`select` as a DataFrame."""
    try:
        return pd.DataFrame(dict(adata.uns[key_added]["groups"]))
    except KeyError as exc:
        msg = f"adata.uns[{key_added!r}] holds no groups; run genepanel.tl.select first"
        raise UsageError(msg) from exc
