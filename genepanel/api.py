"""Library entry points used by the CLI and by notebooks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd

from genepanel.config import SelectConfig
from genepanel.data import Preprocessor, Split, make_split
from genepanel.errors import UsageError
from genepanel.evaluate import fit_linear, hvg_panel, linear_test_mse, pca_bound, random_panels
from genepanel.io import (
    ExpressionData,
    OutputDir,
    matrix_bytes,
    read_matrix,
    write_json,
    write_tsv,
)
from genepanel.panel import Panel, extract_panel, panel_table, related_groups
from genepanel.plots import plot_history
from genepanel.runtime import data_mesh, is_main_process
from genepanel.saved import FittedModel, save_model, versions
from genepanel.train import FitResult, RowSource, Trainer, fit

log = logging.getLogger("genepanel")

N_RANDOM_PANELS = 5


@dataclass
class SelectResult:
    """What :func:`select_panel` returns (everything also written to ``out``)."""

    genes: list[str]
    panel: Panel
    panel_table: pd.DataFrame
    groups: pd.DataFrame
    fit: FitResult
    metrics: dict[str, Any]
    run: dict[str, Any]
    split: Split
    model: FittedModel
    out: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)


def load_input(path: str | Path, cfg: SelectConfig) -> ExpressionData:
    """Read the matrix named by ``path`` with the input options of ``cfg``."""
    i = cfg.input
    stream = i.stream == "yes" or (
        i.stream == "auto"
        and matrix_bytes(path, i.layer, i.dataset) > i.host_memory_budget_gb * 2**30
    )
    return read_matrix(
        path, layer=i.layer, gene_column=i.gene_column, dataset=i.dataset, genes=i.genes,
        genes_by_samples=i.genes_by_samples, stream=stream,
    )


def select_panel(
    data: ExpressionData | str | Path,
    cfg: SelectConfig,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    evaluate_baselines: bool = True,
    stop_after_epochs: int | None = None,
) -> SelectResult:
    """Train a concrete autoencoder and return (and, with ``out``, write) the panel.

    Parameters
    ----------
    data
        An :class:`~genepanel.io.ExpressionData` or a path to ``.h5ad``/HDF5.
    cfg
        The validated configuration.
    out
        Output folder; written atomically (through ``<out>.partial``).
    overwrite
        Replace an existing ``out`` (otherwise it is refused).
    resume
        Continue an interrupted run from the checkpoint in ``<out>.partial``.
    on_epoch
        Called with each epoch's history record (for progress display).
    evaluate_baselines
        Also score random and highly-variable-gene panels and the PCA bound.
    stop_after_epochs
        Testing aid: interrupt (with a checkpoint) after that many epochs.
    """
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    outdir = OutputDir(out, overwrite=overwrite, resume=resume) if out is not None else None
    if outdir is not None:
        outdir.check()
    if not isinstance(data, ExpressionData):
        data = load_input(data, cfg)
    timings["load"] = time.perf_counter() - t0
    n, d = data.shape
    if cfg.k >= d:
        msg = f"--k {cfg.k} must be smaller than the number of genes ({d}); choose k < {d}"
        raise UsageError(msg)
    split = make_split(n, cfg.split, cfg.seed, data.obs)

    main = is_main_process()
    staging = None
    if outdir is not None:
        # Only process 0 writes; the others train alongside it and write nothing.
        staging = outdir.prepare() if main else outdir.staging
    ckpt = staging / "checkpoints" / "state.msgpack" if staging is not None else None
    if staging is not None and main:
        _check_resume_config(staging, cfg, resume)

    t = time.perf_counter()
    pre = Preprocessor(kind=cfg.preprocess, target_sum=cfg.target_sum).fit(data, split.train)
    budget = cfg.train.device_memory_budget_gb * 2**30
    # Fast path: the training matrix lives on the device. Several processes stream
    # instead, each reading only its own rows of every minibatch.
    materialize = (
        len(split.train) * d * 4 <= budget and jax.process_count() == 1 and not data.is_backed
    )
    train_src = RowSource(data, pre, split.train, materialize=materialize)
    val_src = RowSource(data, pre, split.val, materialize=materialize) if len(split.val) else None
    test_src = RowSource(data, pre, split.test, materialize=False)
    timings["preprocess"] = time.perf_counter() - t

    t = time.perf_counter()
    mesh = data_mesh()
    trainer = Trainer(cfg.k, d, cfg.model.hidden, cfg.train, cfg.seed, mesh)
    result = fit(trainer, train_src, val_src, on_epoch=on_epoch, checkpoint=ckpt, resume=resume,
                 stop_after_epochs=stop_after_epochs)
    timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    logits = np.asarray(result.params["selector"]["logits"])
    panel = extract_panel(logits)
    table = panel_table(panel, data.genes)
    groups = related_groups(logits, data.genes, panel, cfg.n_related)

    from genepanel.train import _eval_chunk

    chunk = _eval_chunk(test_src.n, trainer.n_devices)
    metrics: dict[str, Any] = {
        "trained_decoder_test_mse": trainer.sse(result.params, test_src, panel.indices, chunk)
    }
    panels = {"cae": panel.indices}
    hvg_method = None
    if evaluate_baselines:
        for i, p in enumerate(random_panels(d, cfg.k, cfg.seed, N_RANDOM_PANELS)):
            panels[f"random_{i}"] = p
        panels["hvg"], hvg_method = hvg_panel(data, pre, split.train, cfg.k)
    fits = fit_linear(data, pre, split.train, panels)
    mse = linear_test_mse(data, pre, split.test, fits)
    metrics["linear_refit_test_mse"] = mse["cae"]
    if evaluate_baselines:
        rand = np.array([mse[f"random_{i}"] for i in range(N_RANDOM_PANELS)])
        metrics["random_panel_test_mse"] = {
            "mean": float(rand.mean()), "sd": float(rand.std(ddof=1)),
            "min": float(rand.min()), "n_panels": N_RANDOM_PANELS,
        }
        metrics["hvg_panel_test_mse"] = mse["hvg"]
        metrics["hvg_method"] = hvg_method
        pca = pca_bound(data, pre, split.train, split.test, cfg.k, cfg.seed)
        metrics["pca_bound_test_mse"] = pca["mse"]
        metrics["pca_components"] = pca["components"]
    metrics["test_variance"] = _test_variance(test_src)
    timings["evaluate"] = time.perf_counter() - t

    model = FittedModel(
        panel_genes=[data.genes[i] for i in panel.indices],
        genes=list(data.genes),
        panel_index=panel.indices,
        hidden=tuple(cfg.model.hidden),
        params=result.params["decoder"],
        linear=fits["cae"],
        pre=pre,
        meta={"config": cfg.to_dict(), "seed": cfg.seed, "versions": versions(),
              "source": data.source, "metrics": metrics},
    )
    timings["total"] = time.perf_counter() - t0
    run = _run_record(cfg, data, split, result, panel, metrics, timings)
    sel = SelectResult(genes=list(data.genes), panel=panel, panel_table=table, groups=groups,
                       fit=result, metrics=metrics, run=run, split=split, model=model,
                       timings=timings)
    if outdir is not None and main:
        write_tsv(staging / "panel.tsv", table)
        write_tsv(staging / "groups.tsv", groups)
        epochs = [h for h in result.history if "epoch" in h]
        write_tsv(staging / "history.tsv", pd.DataFrame(epochs))
        plot_history(result.history, staging / "history.png")
        save_model(staging, model)
        write_json(staging / "run.json", run)
        sel.out = outdir.commit()
    return sel


def _test_variance(src: RowSource) -> float:
    """Mean per-gene variance of the preprocessed test rows (MSE of predicting the mean)."""
    s1 = s2 = None
    for start in range(0, src.n, 4096):
        xb = src.batch(np.arange(start, min(start + 4096, src.n))).astype(np.float64)
        s1 = xb.sum(0) if s1 is None else s1 + xb.sum(0)
        s2 = (xb * xb).sum(0) if s2 is None else s2 + (xb * xb).sum(0)
    mean = s1 / src.n
    return float(np.mean(s2 / src.n - mean * mean))


def _check_resume_config(staging: Path, cfg: SelectConfig, resume: bool) -> None:  # noqa: FBT001
    import json

    path = staging / "checkpoints" / "config.json"
    if resume and path.exists():
        saved = json.loads(path.read_text())
        if saved != cfg.to_dict():
            changed = sorted(k for k in set(saved) | set(cfg.to_dict())
                             if saved.get(k) != cfg.to_dict().get(k))
            msg = (
                f"--resume: the options differ from the interrupted run ({', '.join(changed)}); "
                "resume with the same options or start again with --overwrite"
            )
            raise UsageError(msg)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, cfg.to_dict())


def _run_record(
    cfg: SelectConfig,
    data: ExpressionData,
    split: Split,
    result: FitResult,
    panel: Panel,
    metrics: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    return {
        "config": cfg.to_dict(),
        "data": {
            "source": data.source, "n_samples": data.shape[0], "n_genes": data.shape[1],
            "sparse": data.is_sparse, "split": split.sizes(),
        },
        "training": {
            "epochs_run": result.epochs_run,
            "converged": result.converged,
            "stop_epoch": result.stop_epoch,
            "stopping_rule": f"mean row-max probability > {cfg.train.stop_threshold}",
            "final_mean_max_prob": result.history[-1]["mean_max_prob"] if result.history else None,
            "collisions_resolved": result.collisions,
            "reassigned_at_extraction": panel.reassigned,
            "attempts": result.attempts,
            "data_path": result.path,
            "batch_size": result.batch_size,
            "steps_per_epoch": result.steps_per_epoch,
            "devices": result.n_devices,
            "platform": jax.default_backend(),
            "compilations": result.compilations,
        },
        "metrics": metrics,
        "timings_seconds": timings,
        "seed": cfg.seed,
        "versions": versions(),
    }
