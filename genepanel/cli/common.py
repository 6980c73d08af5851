"""What every command shares: error handling, logging and progress display."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer

T = TypeVar("T")


# Input options shared by every command that reads an expression matrix.
def layer_option() -> Any:
    """``--layer``: an AnnData layer instead of ``X``."""
    return typer.Option(None, help="AnnData layer to use instead of X.")


def gene_column_option() -> Any:
    """``--gene-column``: a ``var`` column with the gene names."""
    return typer.Option(None, help="var column with gene names (default var_names).")


def dataset_option() -> Any:
    """``--dataset``: the matrix inside a plain HDF5 file."""
    return typer.Option(None, help="Plain HDF5: path of the 2-D matrix in the file.")


def genes_option() -> Any:
    """``--genes``: gene names of a plain HDF5 matrix."""
    return typer.Option(None, help="Plain HDF5: gene names (dataset path or text file).")


def stream_option() -> Any:
    """``--stream/--no-stream``: read minibatches from disk."""
    return typer.Option(
        None, "--stream/--no-stream", metavar="",
        help="Leave the matrix on disk and read minibatches from it. (default: when larger "
        "than input.host_memory_budget_gb)",
    )
log = logging.getLogger("genepanel")


def run_folder_option(help_text: str = "Run folder written by genepanel select.") -> Any:
    """``--run``: the run folder of a ``genepanel select`` run, named alike in every command."""
    return typer.Option(None, "--run", help=help_text, show_default=False)


def deprecated_alias(new: Any, old: Any, new_flag: str, old_flag: str, *,
                     required: bool = False) -> Any:
    """The value of ``new_flag``, or of its deprecated alias ``old_flag`` (with a warning).

    The old flags stay as hidden aliases for one release (removed in 0.3.0).
    """
    from genepanel.errors import UsageError

    if old is not None:
        if new is not None:
            msg = f"{old_flag} is the old name of {new_flag}; give only {new_flag}"
            raise UsageError(msg)
        log.warning("warning: %s is deprecated and will be removed in 0.3.0; use %s",
                    old_flag, new_flag)
        new = old
    if new is None and required:
        msg = f"missing option {new_flag}"
        raise UsageError(msg)
    return new


def setup_logging(verbose: bool) -> None:
    """Log to stderr: INFO by default, DEBUG with ``-v``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("jax", "absl", "matplotlib", "h5py", "numba", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Terminated(BaseException):
    """SIGTERM outside the training loop (which checkpoints and stops by itself)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    del signum, frame
    raise Terminated


def run_command(fn: Callable[[], T], verbose: bool) -> T:
    """Run ``fn``; map errors to one line on stderr and the documented exit codes.

    2: bad usage or configuration; 1: bad data or I/O; 130: interrupted (Ctrl-C);
    143: terminated (SIGTERM). With ``verbose`` the traceback is printed too.
    """
    from genepanel.errors import GenepanelError

    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return fn()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    # OSError: a file-system failure no module turned into a GenepanelError
    except (GenepanelError, Terminated, MemoryError, OSError) as exc:
        if verbose:
            traceback.print_exc()
        message, code = _failure(exc)
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(code) from None
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _failure(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit code of a failure :func:`run_command` caught."""
    from genepanel.errors import GenepanelError

    if isinstance(exc, GenepanelError):
        return str(exc), exc.exit_code
    if isinstance(exc, Terminated):
        return ("terminated (SIGTERM) before the results were complete; nothing was "
                "written to --out; run the command again (with --resume where a checkpoint "
                "was left in <out>.partial)", 143)
    if isinstance(exc, MemoryError):
        return ("out of memory; use a smaller --batch-size or lower "
                "train.device_memory_budget_gb", 1)
    assert isinstance(exc, OSError)
    reason = exc.strerror or str(exc).splitlines()[0]
    where = f": {exc.filename}" if exc.filename else ""
    return f"{reason}{where}", 1


def print_result(path: Any) -> None:
    """Write a result path to stdout (the only stdout output; summaries go to stderr)."""
    typer.echo(str(path))


class EpochReporter:
    """A progress bar on a terminal, one log line per epoch otherwise."""

    def __init__(self, max_epochs: int | None, *, enabled: bool = True):
        self.max_epochs = max_epochs
        self.enabled = enabled
        self.bar: Any = None
        self.task: Any = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("epoch {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                transient=True,
            )
            self.task = self.bar.add_task("train", total=max_epochs, info="")
            self.bar.start()

    def __call__(self, rec: dict[str, float]) -> None:
        """Report one epoch record (or a restart notice)."""
        if not self.enabled:
            return
        if "run" in rec:
            if self.bar is not None:
                self.bar.update(self.task, completed=0)
            log.info("training run %d of %d (seed %d)", rec["run"], rec["runs"], rec["seed"])
            return
        if "restart" in rec:
            self.max_epochs = int(rec["max_epochs"])
            if self.bar is not None:
                self.bar.update(self.task, total=self.max_epochs, completed=0)
            log.info("not converged: restart %d with %d epochs", rec["restart"], self.max_epochs)
            return
        info = (
            f"T={rec['temperature']:.3g} maxprob={rec['mean_max_prob']:.3f} "
            f"train={rec['train_loss']:.4g} val={rec['val_loss']:.4g}"
        )
        self.max_epochs = int(rec.get("epochs", self.max_epochs or 0))
        if self.bar is not None:
            self.bar.update(self.task, completed=rec["epoch"], total=self.max_epochs, info=info)
        else:
            log.info("epoch %d/%d %s (%.2fs)", rec["epoch"], self.max_epochs, info, rec["seconds"])

    def close(self) -> None:
        """Remove the progress bar."""
        if self.bar is not None:
            self.bar.stop()
