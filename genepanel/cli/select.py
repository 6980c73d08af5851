"""``genepanel select``: train a concrete autoencoder and write the panel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from genepanel.cli.common import (
    EpochReporter,
    dataset_option,
    gene_column_option,
    genes_option,
    layer_option,
    log,
    print_result,
    run_command,
    setup_logging,
    stream_option,
)
from genepanel.config import SelectConfig

_D = SelectConfig()  # the defaults shown in --help


def select(
    data: Path = typer.Argument(..., help="Expression matrix: .h5ad, plain HDF5 (with --dataset/--genes) or .npz (X, feature_names)."),
    k: str | None = typer.Option(
        None, "--k", help=f"Panel size; several sizes as 50,100,200 (one folder each). (default: {_D.k})"
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (must not exist)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config; flags override it."),
    layer: str | None = layer_option(),
    gene_column: str | None = gene_column_option(),
    dataset: str | None = dataset_option(),
    genes: str | None = genes_option(),
    genes_by_samples: bool | None = typer.Option(
        None, "--genes-by-samples", metavar="", help="Plain HDF5 matrix is stored genes × samples."
    ),
    stream: bool | None = stream_option(),
    preprocess: str | None = typer.Option(
        None, help=f"none | log1p | standardize | log1p+standardize. (default: {_D.preprocess})"
    ),
    target_sum: float | None = typer.Option(None, help="log1p: total per sample (default: median)."),
    split_column: str | None = typer.Option(None, help="obs column with train/val/test per sample."),
    seed: int | None = typer.Option(None, help=f"Random seed; same data+config+seed, same panel. (default: {_D.seed})"),
    decoder: str | None = typer.Option(None, help=f"linear | mlp. (default: {_D.model.decoder})"),
    hidden: str | None = typer.Option(None, help="MLP hidden sizes, e.g. 256,128."),
    epochs: int | None = typer.Option(None, help="Epoch cap and annealing length E. (default: as many epochs as --anneal-steps optimiser steps take)"),
    anneal_steps: int | None = typer.Option(None, help=f"Annealing length in optimiser steps when --epochs is not given. (default: {_D.train.anneal_steps})"),
    batch_size: int | None = typer.Option(None, help="Global minibatch size. (default: min(256, max(16, n_train/16)); at most 128 above 10,000 varying genes)"),
    lr: float | None = typer.Option(None, help=f"Adam learning rate. (default: {_D.train.learning_rate:g})"),
    t0: float | None = typer.Option(None, help=f"Initial temperature. (default: {_D.train.t0:g})"),
    tb: float | None = typer.Option(None, help=f"Final temperature. (default: {_D.train.tb:g})"),
    n_related: int | None = typer.Option(None, help=f"Related genes per node in groups.tsv. (default: {_D.n_related})"),
    include: str | None = typer.Option(None, help="Genes that must be in the panel: A,B,C or @file."),
    exclude: str | None = typer.Option(None, help="Genes or patterns to leave out: 'MT-*,RP[SL]*' or @file."),
    candidates: str | None = typer.Option(None, help="Choose the panel from these genes only: A,B or @file."),
    labels: str | None = typer.Option(None, help="Supervised: obs column with a cell type or condition."),
    label_weight: float | None = typer.Option(None, help=f"Supervised: weight of the label loss, (0, 1]. (default: {_D.label_weight:g})"),
    restarts: int | None = typer.Option(None, help=f"Train from N seeds, keep the best, report agreement. (default: {_D.train.restarts})"),
    checkpoint_every: int | None = typer.Option(None, help=f"Checkpoint every N epochs (0: never). (default: {_D.train.checkpoint_every})"),
    prefilter: int | None = typer.Option(None, help=f"The selector chooses among the max(N, 10 k) genes of highest training variance (0: all genes; the decoder always reconstructs all). (default: {_D.train.prefilter})"),
    sharpen: float | None = typer.Option(None, help=f"Entropy penalty on each node's selection from T <= 10 TB on, so nodes split among near-identical genes settle (0: off). (default: {_D.train.sharpen:g})"),
    retry: bool | None = typer.Option(
        None, "--retry/--no-retry", metavar="", help=f"Restart with doubled epochs when not converged. (default: {'retry' if _D.train.retry_unconverged else 'no-retry'})"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="Replace an existing --out folder that genepanel wrote."),
    resume: bool = typer.Option(False, "--resume", metavar="", help="Continue an interrupted run in --out."),
    baselines: bool = typer.Option(
        True, "--baselines/--no-baselines", metavar="",
        help="Score greedy, top-variance, HVG and random panels and the PCA bound.",
    ),
    refine: bool | None = typer.Option(
        None, "--refine/--no-refine", metavar="",
        help="Swap search on the training refit error after the autoencoder (linear "
        "decoder, no labels). (default: refine)",
    ),
    coordinator: str | None = typer.Option(
        None, help="Multi-process: HOST:PORT of process 0 (SLURM is detected without flags)."
    ),
    num_processes: int | None = typer.Option(None, help="Multi-process: number of processes."),
    process_id: int | None = typer.Option(None, help="Multi-process: index of this process."),
    quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help="No progress output."),
    verbose: bool = typer.Option(False, "--verbose", "-v", metavar="", help="Debug logs and tracebacks."),
) -> None:
    """Select a panel of k genes that best reconstructs all the others."""
    setup_logging(verbose)
    flags: dict[str, Any] = {
        "seed": seed, "include": include, "exclude": exclude, "candidates": candidates,
        "train.restarts": restarts, "labels": labels, "label_weight": label_weight, "preprocess": preprocess, "target_sum": target_sum,
        "n_related": n_related, "refine": refine,
        "input.layer": layer, "input.gene_column": gene_column, "input.dataset": dataset,
        "input.genes": genes, "input.genes_by_samples": genes_by_samples,
        "input.stream": None if stream is None else ("yes" if stream else "no"),
        "split.column": split_column,
        "model.decoder": decoder, "model.hidden": hidden,
        "train.max_epochs": epochs, "train.anneal_steps": anneal_steps,
        "train.batch_size": batch_size, "train.learning_rate": lr,
        "train.t0": t0, "train.tb": tb, "train.checkpoint_every": checkpoint_every,
        "train.retry_unconverged": retry, "train.prefilter": prefilter,
        "train.sharpen": sharpen,
    }

    def work() -> None:
        from genepanel.api import select_panels
        from genepanel.runtime import is_main_process, maybe_initialize_distributed

        maybe_initialize_distributed(coordinator, num_processes, process_id)
        cfg, ks = _config(config, flags, k, hidden=hidden, decoder=decoder)
        reporter = EpochReporter(cfg.train.max_epochs, enabled=not quiet and is_main_process())
        try:
            results = select_panels(data, cfg, ks, out, overwrite=overwrite, resume=resume,
                                    on_epoch=reporter, evaluate_baselines=baselines)
        finally:
            reporter.close()
        if not is_main_process():
            return
        for res in results:
            print_result(res.out)
        for res in results:
            _report(res)

    run_command(work, verbose)


def _config(
    config: Path | None, flags: dict[str, Any], k: str | None, *, hidden: str | None,
    decoder: str | None,
) -> tuple[SelectConfig, list[int]]:
    """The configuration (YAML file, then flags) and the panel sizes to select."""
    from genepanel import config as cfgmod

    base = cfgmod.load_yaml(config) if config is not None else {}
    if hidden is not None and decoder is None and "model" not in base:
        flags["model.decoder"] = "mlp"
    changes = {key: v for key, v in flags.items() if v is not None}
    if "model.hidden" in changes:
        changes["model.hidden"] = cfgmod.parse_hidden(changes["model.hidden"])
    ks = cfgmod.parse_sizes(k) if k is not None else None
    if ks is not None:
        changes["k"] = ks[0]
    cfg = cfgmod.from_dict(base).replace(**changes)
    return cfg, ks or [cfg.k]


def _report(res: Any) -> None:
    """Log what a finished panel run wants the user to know (stderr)."""
    unmatched = res.run.get("constraints", {}).get("exclude_patterns_matching_nothing")
    if unmatched:
        log.warning("warning: --exclude %s matched no gene", ", ".join(unmatched))
    tr = res.run["training"]
    log.info("panel of %d genes written to %s: %s", len(res.panel.indices), res.out,
             tr["status"] if tr["converged"] else "NOT CONVERGED, see below")
    if tr.get("prefilter"):
        log.info("the selector chose among the %d genes of highest variance of %d "
                 "(--prefilter 0: all)", tr["candidate_genes"],
                 tr["prefilter"]["of_allowed_genes"])
    if not tr["converged"]:
        log.warning("warning: %s", tr["status"])
    for line in summary_lines(res.run):
        (log.warning if line.startswith("warning:") else log.info)(line)
    if res.stability is not None:
        st = res.stability["summary"]
        log.info("%d restarts: mean Jaccard %.2f, %d genes in every panel, kept seed %d",
                 st["n"], st["jaccard_mean"], st["n_genes_in_every_panel"], st["kept_seed"])


_NAMES = {"greedy": "greedy", "topvar": "top-variance", "hvg": "HVG", "random": "random"}


def summary_lines(run: dict[str, Any]) -> list[str]:
    """The held-out summary of a run: panel, what refinement added, baselines, who won."""
    m, ref = run["metrics"], run.get("refinement", {})
    line = f"test MSE (linear refit): panel {m['linear_refit_test_mse']:.4g}"
    if ref.get("enabled"):
        line += (f" (autoencoder {m['cae_linear_refit_test_mse']:.4g} before swap refinement, "
                 f"{ref['genes_replaced']} of {len(run['panels']['cae']['genes'])} genes "
                 "replaced)")
    line += f"; trained decoder {m['trained_decoder_test_mse']:.4g}"
    lines = [line]
    if "random_panel_test_mse" in m:
        parts = [f"{_NAMES[b]} {m[f'{b}_panel_test_mse']:.4g}"
                 for b in ("greedy", "topvar", "hvg") if f"{b}_panel_test_mse" in m]
        parts.append(f"random {m['random_panel_test_mse']['mean']:.4g}")
        text = "baselines: " + ", ".join(parts)
        if "pca_bound_test_mse" in m:
            text += f"; PCA bound {m['pca_bound_test_mse']:.4g} (not a panel)"
        lines.append(text)
        beaten = m.get("baselines_better_than_panel", [])
        if beaten:
            lines.append("warning: " + "; ".join(
                f"the {_NAMES.get(b['method'], b['method'])} panel beat this panel: "
                f"{b['test_mse']:.4g} vs {b['panel_test_mse']:.4g} "
                f"(the panel's error is {100 * b['panel_higher_by']:.1f}% higher)"
                for b in beaten))
        elif not run["panels"]["cae"]["determined"]:
            lines.append("note: k is not below the number of training rows − 1, so the "
                         "linear refit is not determined and no baseline comparison is made")
        else:
            lines.append("the panel beats every baseline on the held-out rows")
    return lines
