"""Typed, validated configuration for ``genepanel select``.

A YAML file (see ``configs/``) may set any field of :class:`SelectConfig`; command-line
flags override it. Unknown keys are an error, so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from genepanel.errors import UsageError

Preprocess = Literal["none", "log1p", "standardize", "log1p+standardize"]
PREPROCESS_CHOICES = ("none", "log1p", "standardize", "log1p+standardize")
DECODER_CHOICES = ("linear", "mlp")


@dataclass(frozen=True)
class InputConfig:
    """Where the expression matrix comes from.

    ``layer`` selects an AnnData layer instead of ``X``; ``gene_column`` a ``var``
    column instead of ``var_names``. For plain HDF5, ``dataset`` is the path of the
    2-D matrix inside the file, ``genes`` either a dataset path in the same file or a
    text file with one name per line, and ``genes_by_samples`` says the matrix is
    stored genes × samples. ``stream`` (``auto``, ``yes``, ``no``) leaves the matrix on
    disk and reads minibatches from it; ``auto`` streams when loading it would take more
    than ``host_memory_budget_gb``.
    """

    layer: str | None = None
    gene_column: str | None = None
    dataset: str | None = None
    genes: str | None = None
    genes_by_samples: bool = False
    stream: str = "auto"
    host_memory_budget_gb: float = 8.0


@dataclass(frozen=True)
class SplitConfig:
    """Train/validation/test split: fractions by seed, or a user column of ``obs``.

    With ``column`` set, its values must be ``train``, ``val``/``validation`` and ``test``.
    """

    train: float = 0.72
    val: float = 0.08
    test: float = 0.20
    column: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    """The decoder behind the concrete selector: ``linear`` or ``mlp`` with ``hidden`` sizes."""

    decoder: str = "linear"
    hidden: tuple[int, ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and annealing.

    The temperature follows the paper's schedule ``T(e) = T0 (TB/T0)^(e/E)`` per epoch
    (T0 10, TB 0.01), with Adam. ``E`` is both the annealing length and the epoch cap:
    ``max_epochs`` when given (the paper's setting is 300), otherwise the number of
    epochs that makes ``anneal_steps`` optimiser steps. ``batch_size`` defaults to
    ``min(256, max(16, n_train // 16))``, with 128 for 256 above 10,000 reconstructed
    genes. These defaults (learning rate 1e-2, 20,000
    steps) replace the paper's 1e-3 and 300 epochs, under which no run of
    ``benchmarks/convergence.md`` converged. Training stops early once the mean over
    nodes of the per-node maximum selection probability exceeds ``stop_threshold``. With
    ``retry_unconverged`` (the reference code's behaviour) a run that reaches the cap
    without converging starts again with twice the epochs, at most ``max_retries`` times.
    ``restarts`` trains that many times from different seeds (``seed``, ``seed + 1``, …,
    on the same split) and keeps the panel with the lowest validation error.
    ``prefilter`` (default 2000; 0: off): when more genes are allowed, the selector
    chooses among the ``max(prefilter, 10 k)`` of highest training variance (see
    :mod:`genepanel.prefilter`); the decoder still reconstructs every gene.
    """

    max_epochs: int | None = None
    anneal_steps: int = 20000
    batch_size: int | None = None
    learning_rate: float = 1e-2
    t0: float = 10.0
    tb: float = 0.01
    stop_threshold: float = 0.99
    collision_threshold: float = 0.2
    retry_unconverged: bool = False
    max_retries: int = 2
    device_memory_budget_gb: float = 2.0
    checkpoint_every: int = 25
    restarts: int = 1
    prefilter: int = 2000
    sharpen: float = 0.01


@dataclass(frozen=True)
class SelectConfig:
    """Everything ``genepanel select`` needs besides the input path and output folder.

    ``include`` genes must be in the panel (they count towards ``k``), ``exclude`` names
    or shell patterns (``MT-*``) must not be, and with ``candidates`` the panel comes from
    that list only. Each accepts a list, ``"A,B,C"`` or ``"@file"``. ``labels`` (an
    ``obs`` column) makes the panel supervised: the decoder also predicts the label with
    cross-entropy, and the loss is ``(1 - label_weight) · MSE + label_weight · CE``
    (``label_weight`` 1: labels only; default 0.5). ``refine`` runs an exact swap search
    on the training rows' linear refit error after the concrete autoencoder (linear
    decoder only; see :func:`genepanel.selectors.swap_refine`); a supervised run's
    search also counts the labels (:func:`genepanel.selectors.supervised_target`) and
    needs ``label_weight`` below 1.
    """

    k: int = 50
    seed: int = 0
    preprocess: str = "none"
    target_sum: float | None = None
    n_related: int = 3
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    candidates: tuple[str, ...] = ()
    labels: str | None = None
    label_weight: float = 0.5
    refine: bool = True
    input: InputConfig = field(default_factory=InputConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for name in _SECTIONS:  # SelectConfig(train={"learning_rate": 1e-3}) builds the section
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, getattr(from_dict({name: value}), name))
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (for JSON and YAML)."""
        d = dataclasses.asdict(self)
        d["model"]["hidden"] = list(self.model.hidden)
        for key in ("include", "exclude", "candidates"):
            d[key] = list(d[key])
        return d

    def replace(self, **changes: Any) -> SelectConfig:
        """Copy with top-level or dotted (``train.max_epochs``) fields changed."""
        return from_dict(_merge(self.to_dict(), _undot(changes)))


_SECTIONS = {"input": InputConfig, "split": SplitConfig, "model": ModelConfig, "train": TrainConfig}


def _undot(changes: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if "." in key:
            section, name = key.split(".", 1)
            out.setdefault(section, {})[name] = value
        else:
            out[key] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        msg = (
            f"unknown config key(s) {', '.join(where + u for u in unknown)}; "
            f"valid keys here: {', '.join(sorted(names))}"
        )
        raise UsageError(msg)
    return cls(**data)


def from_dict(data: dict[str, Any]) -> SelectConfig:
    """Build a validated :class:`SelectConfig` from a nested dict (as in the YAML files)."""
    data = dict(data or {})
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                msg = f"config section '{key}' must be a mapping, got {value!r}"
                raise UsageError(msg)
            section = dict(value)
            if key == "model" and "hidden" in section:
                section["hidden"] = parse_hidden(section["hidden"])
            kwargs[key] = _build(_SECTIONS[key], section, f"{key}.")
        elif key in ("include", "exclude", "candidates"):
            from genepanel.constraints import parse_gene_list

            kwargs[key] = parse_gene_list(value, f"--{key}")
        else:
            kwargs[key] = value
    try:
        return _build(SelectConfig, kwargs, "")
    except TypeError as exc:  # pragma: no cover - defensive
        raise UsageError(str(exc)) from exc


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict, with a clear error when it is unusable."""
    path = Path(path)
    if not path.is_file():
        msg = f"config file {path} not found; pass an existing YAML file (see configs/)"
        raise UsageError(msg)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except UnicodeDecodeError:
        msg = f"config file {path} is not UTF-8 text; save it as UTF-8"
        raise UsageError(msg) from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        msg = f"config file {path} is not valid YAML ({first})"
        raise UsageError(msg) from exc
    if not isinstance(data, dict):
        msg = f"config file {path} must hold a mapping of options, got {type(data).__name__}"
        raise UsageError(msg)
    return data


def parse_sizes(value: str) -> list[int]:
    """Panel sizes from ``"50"`` or ``"50,100,200"``."""
    try:
        sizes = [int(v) for v in str(value).replace(" ", "").split(",") if v]
    except ValueError as exc:
        msg = f"--k must be an integer or a list like 50,100,200; got {value!r}"
        raise UsageError(msg) from exc
    if not sizes:
        msg = f"--k must be an integer or a list like 50,100,200; got {value!r}"
        raise UsageError(msg)
    return sizes


def parse_hidden(value: Any) -> tuple[int, ...]:
    """Parse MLP hidden sizes from ``"256,128"``, a list, or an int."""
    if value is None or value == "":
        return ()
    if isinstance(value, int):
        value = [value]
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    try:
        sizes = tuple(int(v) for v in value)
    except (TypeError, ValueError) as exc:
        msg = f"hidden sizes must be positive integers like 256,128; got {value!r}"
        raise UsageError(msg) from exc
    if any(s < 1 for s in sizes):
        msg = f"hidden sizes must be positive integers like 256,128; got {value!r}"
        raise UsageError(msg)
    return sizes


def _check(cond: bool, msg: str) -> None:  # noqa: FBT001
    if not cond:
        raise UsageError(msg)


def validate(cfg: SelectConfig) -> None:
    """Raise :class:`UsageError` for any value outside its valid range."""
    _check(isinstance(cfg.k, int) and cfg.k >= 1, f"--k must be an integer ≥ 1, got {cfg.k!r}")
    _check(isinstance(cfg.seed, int) and cfg.seed >= 0, f"--seed must be ≥ 0, got {cfg.seed!r}")
    _check(
        cfg.preprocess in PREPROCESS_CHOICES,
        f"--preprocess must be one of {', '.join(PREPROCESS_CHOICES)}; got {cfg.preprocess!r}",
    )
    _check(
        cfg.target_sum is None or cfg.target_sum > 0,
        f"--target-sum must be positive, got {cfg.target_sum!r}",
    )
    _check(
        0.0 < cfg.label_weight <= 1.0,
        f"--label-weight must be in (0, 1], got {cfg.label_weight!r}",
    )
    _check(isinstance(cfg.refine, bool), f"refine must be true or false, got {cfg.refine!r}")
    _check(cfg.n_related >= 1, f"--n-related must be ≥ 1, got {cfg.n_related!r}")
    s = cfg.split
    _check(
        min(s.train, s.val, s.test) >= 0 and s.train > 0 and s.test > 0
        and abs(s.train + s.val + s.test - 1.0) < 1e-6,
        f"split fractions must be ≥ 0 and sum to 1 (train and test > 0); got "
        f"{s.train}/{s.val}/{s.test}",
    )
    m = cfg.model
    _check(
        m.decoder in DECODER_CHOICES,
        f"--decoder must be one of {', '.join(DECODER_CHOICES)}; got {m.decoder!r}",
    )
    _check(
        m.decoder == "mlp" or not m.hidden,
        "--hidden only applies to --decoder mlp; drop it or add --decoder mlp",
    )
    _check(
        m.decoder != "mlp" or len(m.hidden) > 0,
        "--decoder mlp needs hidden layer sizes, e.g. --hidden 256 or --hidden 512,256",
    )
    _check(
        cfg.input.stream in ("auto", "yes", "no"),
        f"input.stream must be auto, yes or no; got {cfg.input.stream!r}",
    )
    t = cfg.train
    _check(t.max_epochs is None or t.max_epochs >= 1, f"--epochs must be ≥ 1, got {t.max_epochs}")
    _check(t.anneal_steps >= 1, f"--anneal-steps must be ≥ 1, got {t.anneal_steps}")
    _check(t.batch_size is None or t.batch_size >= 1,
           f"--batch-size must be ≥ 1, got {t.batch_size}")
    _check(t.learning_rate > 0, f"--lr must be positive, got {t.learning_rate}")
    _check(
        t.t0 > 0 and t.tb > 0 and t.tb <= t.t0,
        f"temperatures need 0 < TB ≤ T0; got T0={t.t0}, TB={t.tb}",
    )
    _check(
        0 < t.stop_threshold <= 1,
        f"stop_threshold must be in (0, 1], got {t.stop_threshold}",
    )
    _check(
        0 <= t.collision_threshold <= 1,
        f"collision_threshold must be in [0, 1], got {t.collision_threshold}",
    )
    _check(t.checkpoint_every >= 0, f"--checkpoint-every must be ≥ 0, got {t.checkpoint_every}")
    _check(t.restarts >= 1, f"--restarts must be ≥ 1, got {t.restarts}")
    _check(isinstance(t.prefilter, int) and t.prefilter >= 0,
           f"--prefilter must be an integer ≥ 0 (0: off), got {t.prefilter!r}")
    _check(t.sharpen >= 0, f"--sharpen must be ≥ 0 (0: off), got {t.sharpen}")


# One line of help per option, rendered into configs/default.yaml by default_yaml();
# tests/test_options.py fails when a field has no entry here or the file drifts.
OPTION_HELP: dict[str, str] = {
    "k": "panel size (number of genes)",
    "seed": "split, initialisation, noise and row order",
    "preprocess": "none | log1p | standardize | log1p+standardize",
    "target_sum": "log1p: total per sample after scaling (null: median of training totals)",
    "n_related": "related genes per node in groups.tsv",
    "include": "genes the panel must hold (names, \"A,B\" or \"@file\")",
    "exclude": "names or shell patterns (MT-*) the panel must not hold",
    "candidates": "choose the panel from these genes only",
    "labels": "obs column: train a supervised panel on these labels",
    "label_weight": "with labels: loss = (1 - w) MSE + w cross-entropy",
    "refine": "exact swap search on the training refit error after the autoencoder",
    "input.layer": ".h5ad: use this layer instead of X",
    "input.gene_column": ".h5ad: var column with gene names (null: var_names)",
    "input.dataset": "plain HDF5: path of the 2-D matrix",
    "input.genes": "plain HDF5: gene names (dataset path in the file, or a text file)",
    "input.genes_by_samples": "plain HDF5: matrix stored genes × samples",
    "input.stream": "auto | yes | no: leave the matrix on disk, read minibatches from it",
    "input.host_memory_budget_gb": "auto streams when the matrix would take more memory than this",
    "split.train": "fraction of samples for training",
    "split.val": "fraction for validation (history, choice among restarts)",
    "split.test": "fraction held out for every reported error",
    "split.column": "obs column with train/val/test per sample (overrides fractions)",
    "model.decoder": "linear | mlp",
    "model.hidden": "mlp: hidden layer sizes, e.g. [256, 128]",
    "train.max_epochs": "epoch cap and E in T(e) = T0 (TB/T0)^(e/E); null: anneal_steps worth",
    "train.anneal_steps": "annealing length in optimiser steps when max_epochs is null",
    "train.batch_size": "null: min(256, max(16, n_train // 16)); 128 for 256 over 10k genes",
    "train.learning_rate": "Adam step size",
    "train.t0": "starting temperature",
    "train.tb": "final temperature",
    "train.stop_threshold": "stop when the mean over nodes of max softmax(alpha) exceeds this",
    "train.collision_threshold": "a node past this probability sharing its gene is pushed away",
    "train.retry_unconverged": "restart with doubled epochs when not converged",
    "train.max_retries": "at most this many retries",
    "train.device_memory_budget_gb": "keep the training matrix on the device when it fits this",
    "train.checkpoint_every": "epochs between checkpoints (0: only on interruption)",
    "train.restarts": "train from seeds seed, seed+1, ...; keep the lowest validation error",
    "train.prefilter": "choose among the max(N, 10 k) highest-variance genes (0: all genes)",
    "train.sharpen": "entropy penalty per node once T <= 10 TB (0: off)",
}


def default_yaml() -> str:
    """``configs/default.yaml``: every option of :class:`SelectConfig` at its default."""
    lines = [
        "# Every option of `genepanel select`, at its default. Generated from",
        "# genepanel/config.py by `make configs`; configs/paper.yaml has the paper's settings.",
        "# Copy this file, change what you need and pass it with --config; flags override it.",
    ]
    defaults = SelectConfig().to_dict()

    def render(value: Any) -> str:
        return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix(
            "\n...").removesuffix(" ...")

    def emit(key: str, value: Any, indent: str, dotted: str) -> None:
        text = f"{indent}{key}: {render(value)}"
        lines.append(f"{text:<34}# {OPTION_HELP[dotted]}")

    for key, value in defaults.items():
        if key in _SECTIONS:
            lines.append(f"{key}:")
            for sub, subval in value.items():
                emit(sub, subval, "  ", f"{key}.{sub}")
        else:
            emit(key, value, "", key)
    return "\n".join(lines) + "\n"
