"""The fitted model folder: decoder weights, gene lists, preprocessing and provenance.

A run folder written by ``genepanel select`` is a model folder: ``model.json`` (format
version, genes, architecture, preprocessing description, config, seed, versions),
``decoder.npz`` (trained decoder weights), ``linear.npz`` (the refit linear decoder)
and ``preprocess.npz`` (fitted per-gene statistics). Everything is checked on load.
"""

from __future__ import annotations

import json
import platform
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util

from genepanel.data import Preprocessor
from genepanel.errors import ModelError
from genepanel.evaluate import LinearFit
from genepanel.io import atomic_write, write_json

FORMAT = "genepanel-model"
FORMAT_VERSION = 1
DECODERS = ("trained", "linear")


def versions() -> dict[str, str]:
    """Versions of genepanel, Python and the numerical stack."""
    out = {"python": platform.python_version()}
    for pkg in ("genepanel", "jax", "jaxlib", "flax", "optax", "numpy", "anndata", "scanpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@dataclass
class FittedModel:
    """A decoder that reconstructs every gene from the panel.

    Attributes
    ----------
    panel_genes
        ``[k]`` input genes in node order.
    genes
        ``[d]`` output genes (all genes seen at training).
    panel_index
        ``[k]`` position of each panel gene in ``genes``.
    hidden
        Hidden layer sizes of the trained decoder (empty: linear).
    params
        Trained decoder parameters (Flax ``params`` of the decoder).
    linear
        The refit linear regression from the panel (ridge, GCV penalty; 0 = least
        squares).
    pre
        The fitted preprocessing, applied before the decoder.
    meta
        Everything else from ``model.json`` (config, seed, versions, metrics).
    """

    panel_genes: list[str]
    genes: list[str]
    panel_index: np.ndarray
    hidden: tuple[int, ...]
    params: dict
    linear: LinearFit
    pre: Preprocessor
    meta: dict[str, Any]

    def __repr__(self) -> str:
        shown = ", ".join(self.panel_genes[:5]) + (", …" if len(self.panel_genes) > 5 else "")
        decoder = "linear" if not self.hidden else "mlp " + "-".join(map(str, self.hidden))
        labels = f", {len(self.label_classes)} label classes" if self.label_classes else ""
        return (f"FittedModel({len(self.panel_genes)} panel genes [{shown}] → "
                f"{len(self.genes)} genes, decoder {decoder}, preprocess {self.pre.kind}{labels})")

    def predict(self, panel_values: np.ndarray, decoder: str = "trained") -> np.ndarray:
        """Reconstruct preprocessed ``[b, d]`` from preprocessed panel values ``[b, k]``."""
        if decoder == "linear":
            return self.linear.predict(np.asarray(panel_values, np.float32))
        out = self._decode(panel_values)
        return out[:, : len(self.genes)]

    @property
    def label_classes(self) -> list[str]:
        """Class names the decoder also predicts (supervised runs; empty otherwise)."""
        return list(self.meta.get("label_classes") or [])

    def predict_labels(self, panel_values: np.ndarray) -> np.ndarray:
        """Class probabilities ``[b, n_classes]`` from preprocessed panel values (supervised)."""
        if not self.label_classes:
            msg = "this model was trained without --labels: it predicts no labels"
            raise ModelError(msg)
        logits = self._decode(panel_values)[:, len(self.genes) :]
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def _decode(self, panel_values: np.ndarray) -> np.ndarray:
        import jax.numpy as jnp

        from genepanel.model import decoder_apply

        d_out = int(np.shape(self.params["out"]["kernel"])[-1])
        out = decoder_apply(self.params, jnp.asarray(panel_values, jnp.float32), d_out,
                            self.hidden)
        return np.asarray(out)


def save_model(folder: Path, model: FittedModel) -> None:
    """Write ``model`` into ``folder`` (each file atomically)."""
    flat = traverse_util.flatten_dict(model.params, sep="/")
    with atomic_write(folder / "decoder.npz", "wb") as fh:
        np.savez(fh, **{k: np.asarray(v) for k, v in flat.items()})
    with atomic_write(folder / "linear.npz", "wb") as fh:
        np.savez(fh, coef=model.linear.coef, intercept=model.linear.intercept)
    with atomic_write(folder / "preprocess.npz", "wb") as fh:
        np.savez(fh, **model.pre.arrays())
    write_json(
        folder / "model.json",
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "panel_genes": model.panel_genes,
            "genes": model.genes,
            "panel_index": [int(i) for i in model.panel_index],
            "decoder": {"hidden": list(model.hidden), "activation": "leaky_relu(0.2)"},
            "preprocess": model.pre.to_dict(),
            **model.meta,
        },
    )


def load_model(folder: str | Path) -> FittedModel:
    """Read and check a model folder written by ``genepanel select``.

    Raises
    ------
    ModelError
        Missing folder or files, another format, or a newer format version.
    """
    folder = Path(folder)
    spec = _read_spec(folder)
    try:
        genes = [str(g) for g in spec["genes"]]
        panel_genes = [str(g) for g in spec["panel_genes"]]
        panel_index = np.asarray(spec["panel_index"], np.int64)
        hidden = tuple(int(h) for h in spec["decoder"]["hidden"])
        if panel_index.ndim != 1 or [genes[i] for i in panel_index] != panel_genes:
            raise ValueError
    except (KeyError, TypeError, ValueError, IndexError):
        msg = f"{folder}/model.json is inconsistent or incomplete; rerun genepanel select"
        raise ModelError(msg) from None
    params = traverse_util.unflatten_dict(_load_npz(folder, "decoder.npz"), sep="/")
    lin = _load_npz(folder, "linear.npz", ("coef", "intercept"))
    coef, intercept = lin["coef"], lin["intercept"]
    arrays = _load_npz(folder, "preprocess.npz")
    k, d = len(panel_index), len(genes)
    if coef.shape != (k, d) or intercept.shape != (d,):
        msg = (f"{folder}/linear.npz holds coef {coef.shape} and intercept {intercept.shape}, "
               f"expected {(k, d)} and {(d,)}; rerun genepanel select")
        raise ModelError(msg)
    _check_decoder(folder, params, k, d, hidden)
    meta = {k: v for k, v in spec.items()
            if k not in {"panel_genes", "genes", "panel_index", "decoder", "preprocess"}}
    try:
        pre = Preprocessor.from_saved(spec["preprocess"], arrays)
    except (KeyError, TypeError, ValueError) as exc:
        msg = (f"{folder}/preprocess.npz or the preprocessing in model.json is damaged "
               f"({exc.__class__.__name__}); rerun genepanel select")
        raise ModelError(msg) from exc
    return FittedModel(
        panel_genes=panel_genes,
        genes=genes,
        panel_index=panel_index,
        hidden=hidden,
        params=params,
        linear=LinearFit(panel_index, coef, intercept),
        pre=pre,
        meta=meta,
    )


def _read_spec(folder: Path) -> dict[str, Any]:
    """``model.json`` of a complete model folder of this format version, or ModelError."""
    if not folder.is_dir():
        msg = f"model folder {folder} not found; pass the --out folder of a genepanel select run"
        raise ModelError(msg)
    missing = [f for f in ("model.json", "decoder.npz", "linear.npz", "preprocess.npz")
               if not (folder / f).is_file()]
    if missing:
        msg = (
            f"{folder} is not a complete genepanel model folder (missing {', '.join(missing)}); "
            "rerun genepanel select"
        )
        raise ModelError(msg)
    try:
        spec = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        msg = f"{folder}/model.json is not valid JSON ({exc.msg}); rerun genepanel select"
        raise ModelError(msg) from exc
    except (UnicodeDecodeError, OSError) as exc:
        msg = (f"cannot read {folder}/model.json ({exc.__class__.__name__}); rerun "
               "genepanel select")
        raise ModelError(msg) from exc
    if not isinstance(spec, dict):
        msg = f"{folder}/model.json is not a genepanel model (a JSON {type(spec).__name__})"
        raise ModelError(msg)
    if spec.get("format") != FORMAT:
        msg = f"{folder}/model.json is not a genepanel model (format {spec.get('format')!r})"
        raise ModelError(msg)
    if spec.get("format_version") != FORMAT_VERSION:
        msg = (
            f"{folder} was written in model format {spec.get('format_version')} by genepanel "
            f"{spec.get('versions', {}).get('genepanel', '?')}; this genepanel reads format "
            f"{FORMAT_VERSION}: use a matching genepanel version or rerun select"
        )
        raise ModelError(msg)
    return spec


def _load_npz(folder: Path, name: str, need: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every array of ``folder/name`` (numeric arrays only, never pickled objects)."""
    path = folder / name
    try:
        # an open file handle of our own: np.load leaks its own on a damaged zip
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        msg = (f"{path} is damaged or not written by genepanel ({exc.__class__.__name__}); "
               "rerun genepanel select")
        raise ModelError(msg) from None
    missing = [k for k in need if k not in arrays]
    bad = [k for k, v in arrays.items() if not np.issubdtype(v.dtype, np.number)]
    if missing or bad:
        what = f"lacks {', '.join(missing)}" if missing else f"holds non-numeric {bad[0]}"
        msg = f"{path} {what}; it is not a genepanel model file: rerun genepanel select"
        raise ModelError(msg)
    return arrays


def _check_decoder(folder: Path, params: dict, k: int, d: int, hidden: tuple[int, ...]) -> None:
    """Refuse decoder weights whose shapes do not fit ``k`` panel genes → ``d`` genes."""
    widths = [k, *hidden]
    names = [f"hidden_{i}" for i in range(len(hidden))] + ["out"]
    for i, name in enumerate(names):
        layer = params.get(name) if isinstance(params, dict) else None
        kern = layer.get("kernel") if isinstance(layer, dict) else None
        bias = layer.get("bias") if isinstance(layer, dict) else None
        n_out = hidden[i] if name != "out" else None
        ok = (
            kern is not None and bias is not None and kern.ndim == 2 and bias.ndim == 1
            and kern.shape[0] == widths[i] and kern.shape[1] == bias.shape[0]
            and (n_out is None or kern.shape[1] == n_out)
            and (n_out is not None or kern.shape[1] >= d)
        )
        if not ok:
            shape = None if kern is None else tuple(kern.shape)
            msg = (f"{folder}/decoder.npz does not fit the model ({name} kernel {shape}; the "
                   f"panel has {k} genes, the model {d}); rerun genepanel select")
            raise ModelError(msg)
