"""``genepanel benchmark``: the concrete autoencoder against the usual baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from genepanel.cli.common import (
    EpochReporter,
    dataset_option,
    deprecated_alias,
    gene_column_option,
    genes_option,
    layer_option,
    log,
    print_result,
    run_command,
    setup_logging,
    stream_option,
)


def benchmark(
    data: Path = typer.Argument(
        ..., help="Expression matrix: .h5ad, plain HDF5 (with --dataset) or .npz (X, y, "
        "feature_names)."
    ),
    k: int | None = typer.Option(
        None, "--k", help="Panel size (number of genes). (default: 50)"
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (must not exist)."),
    accuracy_labels: str | None = typer.Option(
        None, "--accuracy-labels", help="obs column with class labels: adds each panel's "
        "ExtraTrees accuracy (for .npz input: y); the panels stay unsupervised."
    ),
    labels_alias: str | None = typer.Option(None, "--labels", hidden=True),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML config; flags override it."
    ),
    seed: int | None = typer.Option(
        None, help="Random seed of the split, the selector and the baselines."
    ),
    methods: str = typer.Option(
        "cae,greedy,topvar,random,hvg,laplacian,pfa,pca",
        help="Comma-separated methods to run."
    ),
    n_random: int = typer.Option(5, help="Number of random panels (mean ± sd reported)."),
    seeds: int = typer.Option(
        1, help="Train the autoencoder from this many seeds on the same split and report "
        "seed-to-seed stability."
    ),
    refine: bool | None = typer.Option(
        None, "--refine/--no-refine", metavar="",
        help="Swap refinement of the autoencoder's panel. (default: refine)"
    ),
    layer: str | None = layer_option(),
    gene_column: str | None = gene_column_option(),
    dataset: str | None = dataset_option(),
    genes: str | None = genes_option(),
    stream: bool | None = stream_option(),
    preprocess: str | None = typer.Option(
        None, help="none | log1p | standardize | log1p+standardize. (default: none)"
    ),
    split_column: str | None = typer.Option(
        None, help="obs column with train/val/test per sample."
    ),
    epochs: int | None = typer.Option(None, help="Selector epoch cap and annealing length E."),
    batch_size: int | None = typer.Option(None, help="Selector minibatch size."),
    lr: float | None = typer.Option(None, help="Selector Adam learning rate."),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="Replace an existing --out folder that genepanel wrote."),
    quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help="No progress output."),
    verbose: bool = typer.Option(False, "--verbose", "-v", metavar="", help="Debug logs and tracebacks."),
) -> None:
    """Compare the concrete autoencoder with greedy, top-variance, random, HVG, Laplacian and PFA panels."""
    setup_logging(verbose)
    flags: dict[str, Any] = {
        "k": k, "seed": seed, "preprocess": preprocess, "refine": refine,
        "input.layer": layer, "input.gene_column": gene_column, "input.dataset": dataset,
        "input.genes": genes, "split.column": split_column,
        "input.stream": None if stream is None else ("yes" if stream else "no"),
        "train.max_epochs": epochs, "train.batch_size": batch_size, "train.learning_rate": lr,
    }

    def work() -> None:
        from genepanel import config as cfgmod

        base = cfgmod.load_yaml(config) if config is not None else {}
        changes = {key: v for key, v in flags.items() if v is not None}
        cfg = cfgmod.from_dict(base).replace(**changes)

        from genepanel.benchmark import markdown_table, run_benchmark

        labels = deprecated_alias(accuracy_labels, labels_alias, "--accuracy-labels",
                                  "--labels")
        reporter = EpochReporter(cfg.train.max_epochs, enabled=not quiet)
        try:
            res = run_benchmark(data, cfg, out, labels=labels, methods=methods.split(","),
                                n_random=n_random, overwrite=overwrite, on_epoch=reporter,
                                seeds=seeds)
        finally:
            reporter.close()
        print_result(res.out)
        if not quiet:
            typer.echo(markdown_table(res.table), nl=False, err=True)
            log.info("benchmark of k = %d written to %s", cfg.k, res.out)

    run_command(work, verbose)
