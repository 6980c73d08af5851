"""``genepanel impute``: measured panel genes in, every gene the decoder knows out."""

from __future__ import annotations

from pathlib import Path

import typer

from genepanel.cli.common import (
    dataset_option,
    deprecated_alias,
    gene_column_option,
    genes_option,
    layer_option,
    log,
    print_result,
    run_command,
    run_folder_option,
    setup_logging,
)


def impute(
    data: Path = typer.Argument(
        ..., help="Measured matrix (.h5ad, plain HDF5 with --dataset/--genes, or .npz with X and "
        "feature_names): panel genes or all genes, matched by name."
    ),
    run: Path | None = run_folder_option("Run folder written by genepanel select (its decoder)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .h5ad (written atomically)."),
    fitted_decoder: str | None = typer.Option(
        None, "--fitted-decoder",
        help="Which fitted decoder imputes: trained (with the selector) | linear (the refit "
        "regression). [default: trained]",
    ),
    model_alias: Path | None = typer.Option(None, "--model", "-m", hidden=True),
    decoder_alias: str | None = typer.Option(None, "--decoder", hidden=True),
    reconstruct_measured: bool = typer.Option(
        False, "--reconstruct-measured",
        metavar="", help="Output the decoder's reconstruction of the panel genes, not the measured values.",
    ),
    original_scale: bool = typer.Option(
        False, "--original-scale",
        metavar="", help="Undo the per-gene z-score (default: the model's preprocessed scale).",
    ),
    totals_column: str | None = typer.Option(
        None, help="log1p models, panel-only input: obs column of per-sample totals over all genes."
    ),
    layer: str | None = layer_option(),
    gene_column: str | None = gene_column_option(),
    dataset: str | None = dataset_option(),
    genes: str | None = genes_option(),
    genes_by_samples: bool = typer.Option(
        False, "--genes-by-samples", metavar="", help="Plain HDF5 matrix is stored genes × samples."
    ),
    batch_size: int | None = typer.Option(None, help="Rows per batch (default: automatic)."),
    evaluate: bool = typer.Option(
        False, "--evaluate",
        metavar="", help="Score against the true values of non-panel genes in the input (MSE, Pearson); "
        "writes <out>.evaluation.json/.tsv.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="Replace an existing --out file that genepanel impute wrote."),
    quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help="No summary output."),
    verbose: bool = typer.Option(False, "--verbose", "-v", metavar="", help="Debug logs and tracebacks."),
) -> None:
    """Impute every gene from measurements of the panel genes."""
    setup_logging(verbose)

    def work() -> None:
        from genepanel.imputation import impute_file

        model = deprecated_alias(run, model_alias, "--run", "--model", required=True)
        decoder = deprecated_alias(fitted_decoder, decoder_alias, "--fitted-decoder",
                                   "--decoder") or "trained"
        res = impute_file(
            data, model, out, keep_measured=not reconstruct_measured, decoder=decoder,
            batch_size=batch_size, original_scale=original_scale, totals_column=totals_column,
            layer=layer, gene_column=gene_column, dataset=dataset, genes=genes,
            genes_by_samples=genes_by_samples, evaluate=evaluate, overwrite=overwrite,
        )
        print_result(res.out)
        if quiet:
            return
        log.info("imputed %d genes for %d samples → %s (%s scale)", res.n_genes, res.n_samples,
                 res.out, res.provenance["scale"])
        if res.evaluation is not None:
            s = res.evaluation.summary
            line = (f"evaluation on {s['n_genes_evaluated']} non-panel genes: MSE "
                    f"{s['mse_non_panel']:.4g}")
            if s.get("pearson_mean") is not None:
                line += (f", Pearson r mean {s['pearson_mean']:.3f} "
                         f"(median {s['pearson_median']:.3f})")
            if "mse_all_genes" in s:
                line += f", MSE over all genes {s['mse_all_genes']:.4g}"
            log.info(line)
            log.info("evaluation written to %s", ", ".join(map(str, res.evaluation_files)))

    run_command(work, verbose)
