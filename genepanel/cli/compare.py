"""``genepanel compare-landmarks``: a panel against the L1000 landmarks (or any reference)."""

from __future__ import annotations

from pathlib import Path

import typer

from genepanel.cli.common import (
    deprecated_alias,
    log,
    print_result,
    run_command,
    run_folder_option,
    setup_logging,
)


def compare_landmarks(
    data: Path = typer.Argument(
        ..., help="Expression matrix holding every gene of the panel's run."
    ),
    run: Path | None = run_folder_option("Run folder written by genepanel select (its panel)."),
    panel_alias: Path | None = typer.Option(None, "--panel", "-p", hidden=True),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (must not exist)."),
    reference: Path | None = typer.Option(
        None, "--reference", "-r",
        help="Text file with one gene per line (default: the 978 L1000 landmark genes).",
    ),
    dgex_only: bool = typer.Option(
        False, "--dgex-only", metavar="", help="Use only the 943 landmarks of the D-GEX GEO data."
    ),
    min_found: float = typer.Option(
        0.5, help="Refuse unless at least this fraction of the reference is found in the data."
    ),
    trials: int = typer.Option(3, help="Trials (seeds) per MLP decoder; mean ± sd reported."),
    mlp: list[str] = typer.Option(
        ["256", "256,256"], "--mlp",
        help="Hidden sizes of one MLP decoder (repeat for several), e.g. --mlp 512 --mlp 512,256.",
    ),
    epochs: int = typer.Option(300, help="Epoch cap of each MLP decoder (early stopping on val)."),
    patience: int = typer.Option(30, help="Stop an MLP after this many epochs without val gain."),
    batch_size: int = typer.Option(64, help="MLP minibatch size."),
    lr: float = typer.Option(1e-3, help="MLP Adam learning rate."),
    sweep: bool = typer.Option(
        False, "--sweep", metavar="", help="Train CAE panels of several sizes below the reference size."
    ),
    sweep_sizes: str | None = typer.Option(
        None, help="Panel sizes for --sweep, e.g. 100,200,400 (default: ¼…1× reference size)."
    ),
    sweep_epochs: int | None = typer.Option(
        None, help="Epoch cap for the --sweep panels (default: the panel run's)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="Replace an existing --out folder that genepanel wrote."),
    quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help="No progress output."),
    verbose: bool = typer.Option(False, "--verbose", "-v", metavar="", help="Debug logs and tracebacks."),
) -> None:
    """Compare a panel with the L1000 landmarks (or another reference) on the same data."""
    setup_logging(verbose)

    def work() -> None:
        from genepanel.compare import CompareConfig, compare_landmarks, parse_sizes
        from genepanel.config import parse_hidden

        panel = deprecated_alias(run, panel_alias, "--run", "--panel", required=True)
        cfg = CompareConfig(
            mlp_hidden=tuple(parse_hidden(h) for h in mlp), trials=trials, epochs=epochs,
            patience=patience, batch_size=batch_size, learning_rate=lr, min_found=min_found,
            dgex_only=dgex_only, sweep=sweep,
            sweep_sizes=parse_sizes(sweep_sizes) if sweep_sizes else None,
            sweep_epochs=sweep_epochs,
        )
        res = compare_landmarks(data, panel, out, reference=reference, config=cfg,
                                overwrite=overwrite, progress=not quiet)
        print_result(res.out)
        if quiet:
            return
        for line in res.headline():
            log.info(line)
        log.info("results written to %s (start with report.md)", res.out)

    run_command(work, verbose)
