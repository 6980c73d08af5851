"""Reading expression matrices (``.h5ad`` and plain HDF5) and writing outputs atomically.

Rows are samples (cells), columns are genes, always: a genes × samples HDF5 matrix is
transposed on read. Sparse matrices stay sparse (CSR); nothing here makes a dense copy
of a sparse matrix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from genepanel.errors import DataError, UsageError


@dataclass
class ExpressionData:
    """An expression matrix with its gene names.

    Attributes
    ----------
    X
        ``[n_samples, n_genes]`` float32, a NumPy array or a SciPy CSR matrix.
    genes
        ``n_genes`` unique, non-empty names.
    obs
        Per-sample annotations (may be empty), indexed by sample name.
    source
        Human-readable description of where the matrix came from.
    """

    X: np.ndarray | sp.csr_matrix
    genes: list[str]
    obs: pd.DataFrame
    source: str

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_samples, n_genes)``."""
        return self.X.shape  # type: ignore[return-value]

    @property
    def is_sparse(self) -> bool:
        """Whether ``X`` is a sparse CSR matrix (in memory or on disk)."""
        return sp.issparse(self.X) or getattr(self.X, "is_sparse", False)

    @property
    def is_backed(self) -> bool:
        """Whether rows are read from disk on demand (``--stream``)."""
        return isinstance(self.X, BackedMatrix)

    def rows(self, idx: np.ndarray) -> np.ndarray | sp.csr_matrix:
        """Rows ``idx`` as stored (dense array or CSR), in the order given."""
        return self.X[idx]


class BackedMatrix:
    """Rows of a matrix that stays on disk: a dense HDF5 dataset or an AnnData CSR group.

    ``m[idx]`` reads rows ``idx`` (any order) as a dense array or CSR matrix, grouping
    consecutive rows into contiguous reads. Memory is one request's rows plus the HDF5
    chunk cache (``cache_bytes``).
    """

    def __init__(self, path: Path, node: str, *, cache_bytes: int = 64 * 2**20):
        self.path, self.node = Path(path), node
        self._file = h5py.File(self.path, "r", rdcc_nbytes=cache_bytes, rdcc_nslots=100_003)
        obj = self._file[node]
        if isinstance(obj, h5py.Dataset):
            self._ds: Any = obj
            self.is_sparse = False
        else:
            enc = obj.attrs.get("encoding-type", "")
            enc = enc.decode() if isinstance(enc, bytes) else enc
            if enc != "csr_matrix":
                self._file.close()
                msg = (
                    f"{self.path}:{node} is stored as {enc or 'an unknown encoding'}; reading "
                    "it row by row needs a dense or CSR matrix: write it again after "
                    "adata.X = adata.X.tocsr() (select and benchmark can also read it whole "
                    "with --no-stream)"
                )
                raise DataError(msg)
            from anndata.io import sparse_dataset

            self._ds = sparse_dataset(obj)
            self.is_sparse = True
            # Row ranges are read straight from the three arrays: through anndata, each
            # read of a few rows cost ~5 ms of overhead (a 128-row minibatch of the
            # 100k x 30k benchmark file in 16-row blocks: 41 ms, against 5.9 ms this
            # way). indptr is 8 bytes a row in memory.
            self._indptr = np.asarray(obj["indptr"][:], dtype=np.int64)
            self._data, self._indices = obj["data"], obj["indices"]
        self.shape: tuple[int, int] = tuple(int(v) for v in self._ds.shape)  # type: ignore[assignment]
        self.dtype = np.dtype(self._ds.dtype)

    def _range(self, lo: int, hi: int) -> np.ndarray | sp.csr_matrix:
        """Rows ``lo:hi`` as stored."""
        if not self.is_sparse:
            return self._ds[lo:hi]
        a, b = int(self._indptr[lo]), int(self._indptr[hi])
        return sp.csr_matrix(
            (self._data[a:b], self._indices[a:b], self._indptr[lo : hi + 1] - a),
            shape=(hi - lo, self.shape[1]),
        )

    def __getitem__(self, idx: Any) -> np.ndarray | sp.csr_matrix:
        """Rows ``idx`` (an integer array or a slice of step 1) as float32."""
        if isinstance(idx, slice):
            lo, hi, step = idx.indices(self.shape[0])
            if step != 1:
                msg = "BackedMatrix reads slices of step 1 only"
                raise ValueError(msg)
            return self._cast(self._range(lo, max(lo, hi)))
        idx = np.asarray(idx, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        srt = idx[order]
        # Rows closer than `gap` are read as one contiguous range and picked in memory.
        gap = 16
        cuts = np.flatnonzero(np.diff(srt) > gap) + 1
        blocks = []
        for run in np.split(srt, cuts):
            if len(run):
                lo, hi = int(run[0]), int(run[-1]) + 1
                block = self._range(lo, hi)
                blocks.append(block if hi - lo == len(run) else block[run - lo])
        if self.is_sparse:
            empty = sp.csr_matrix((0, self.shape[1]))
            out: Any = sp.vstack(blocks, format="csr") if blocks else empty
        else:
            out = np.concatenate(blocks) if blocks else np.empty((0, self.shape[1]))
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return self._cast(out[inverse])

    def _cast(self, x: Any) -> np.ndarray | sp.csr_matrix:
        if sp.issparse(x):
            return sp.csr_matrix(x, dtype=np.float32)
        return np.asarray(x, dtype=np.float32)

    def iter_chunks(self, rows: int = 4096):
        """Yield ``(start, block)`` over all rows in order."""
        for start in range(0, self.shape[0], rows):
            yield start, self[slice(start, min(start + rows, self.shape[0]))]

    def close(self) -> None:
        """Close the file."""
        self._file.close()


# --------------------------------------------------------------------------- reading


def _open_h5(path: Path) -> h5py.File:
    if not path.exists():
        msg = f"input file {path} not found; check the path"
        raise DataError(msg)
    if path.is_dir():
        msg = f"input {path} is a folder; pass an .h5ad or HDF5 file"
        raise DataError(msg)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        msg = (
            f"cannot read {path} as HDF5/.h5ad ({exc.__class__.__name__}); "
            "genepanel reads .h5ad (AnnData) and HDF5 files"
        )
        raise DataError(msg) from exc


def _is_anndata(f: h5py.File) -> bool:
    enc = f.attrs.get("encoding-type", b"")
    if isinstance(enc, bytes):
        enc = enc.decode()
    return enc == "anndata" or ("X" in f and "var" in f and "obs" in f)


def read_matrix(
    path: str | Path,
    *,
    layer: str | None = None,
    gene_column: str | None = None,
    dataset: str | None = None,
    genes: str | None = None,
    genes_by_samples: bool = False,
    stream: bool = False,
) -> ExpressionData:
    """Read an expression matrix from ``.h5ad``, plain HDF5 or ``.npz`` and validate it.

    Parameters
    ----------
    path
        The input file.
    layer, gene_column
        AnnData only: a layer instead of ``X``; a ``var`` column with the gene names.
    dataset, genes, genes_by_samples
        Plain HDF5 only: the 2-D dataset; the gene names (a dataset in the file or a
        text file with one name per line); whether the matrix is stored genes × samples.
    stream
        Leave the matrix on disk (:class:`BackedMatrix`) and read rows on demand.

    Returns
    -------
    ExpressionData
        ``X`` is float32 ``[n_samples, n_genes]``, dense or CSR.

    Raises
    ------
    DataError
        Missing or unreadable file, missing layer or dataset, non-finite values,
        duplicate or empty gene names.
    """
    path = Path(path)
    if path.suffix.lower() == ".npz":
        return read_npz(path)
    with _open_h5(path) as f:
        if _is_anndata(f):
            if dataset is not None or genes_by_samples:
                msg = (
                    f"{path} is an .h5ad file: --dataset/--genes-by-samples apply to plain "
                    "HDF5 only; use --layer and --gene-column instead"
                )
                raise UsageError(msg)
            data = _read_anndata(f, path, layer=layer, gene_column=gene_column, stream=stream)
        else:
            if layer is not None or gene_column is not None:
                msg = (
                    f"{path} is a plain HDF5 file, not .h5ad: --layer/--gene-column do not "
                    "apply; use --dataset and --genes"
                )
                raise UsageError(msg)
            data = _read_hdf5(
                f, path, dataset=dataset, genes=genes, transpose=genes_by_samples, stream=stream
            )
    validate_matrix(data)
    return data


def matrix_bytes(path: str | Path, layer: str | None = None, dataset: str | None = None) -> int:
    """Bytes the matrix would take in memory as float32 (0 when it cannot be told)."""
    try:
        with h5py.File(path, "r") as f:
            if _is_anndata(f):
                node = f["X"] if layer is None else f.get(f"layers/{layer}")
            else:
                node = f.get(dataset) if dataset else None
            if isinstance(node, h5py.Dataset):
                return int(np.prod(node.shape)) * 4
            if isinstance(node, h5py.Group) and "data" in node:
                return int(node["data"].shape[0]) * 8 + int(node["indptr"].shape[0]) * 8
    except (OSError, KeyError, TypeError):
        return 0
    return 0


def read_npz(path: str | Path) -> ExpressionData:
    """Read a benchmark ``.npz``: ``X`` ``[n, d]``, ``feature_names`` ``[d]``, per-sample keys.

    ``y`` and every other 1-D array with one entry per sample (e.g. ``mouse_id``) go
    into ``obs`` under their own names, so ``--labels y`` picks the class labels.
    Non-finite values are refused like in any other input.

    Raises
    ------
    DataError
        Missing file or ``X``, a non-2-D ``X``, or ``feature_names`` of the wrong length.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"input file {path} not found; check the path"
        raise DataError(msg)
    try:
        # an open file handle of our own: np.load leaks its own on a damaged zip
        with open(path, "rb") as fh:
            try:
                z = np.load(fh, allow_pickle=False)
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                msg = f"cannot read {path} as a NumPy .npz file ({exc.__class__.__name__})"
                raise DataError(msg) from exc
            if not isinstance(z, np.lib.npyio.NpzFile):
                msg = f"{path} holds a single array, not an .npz archive with X"
                raise DataError(msg)
            return _read_npz_arrays(z, path)
    except ValueError as exc:
        if "pickle" not in str(exc):
            raise
        msg = (
            f"{path} holds an object array (e.g. feature_names saved from a pandas Index); "
            "genepanel never unpickles input files: save names as strings, "
            "np.savez(..., feature_names=np.asarray(names, dtype=str))"
        )
        raise DataError(msg) from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        msg = f"cannot read {path} as a NumPy .npz file ({exc.__class__.__name__})"
        raise DataError(msg) from exc


def _read_npz_arrays(z: Any, path: Path) -> ExpressionData:
    with z:
        if "X" not in z.files:
            msg = f"{path} has no array 'X' (arrays: {', '.join(z.files) or 'none'})"
            raise DataError(msg)
        x = np.asarray(z["X"])
        if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
            msg = f"{path}: X must be a 2-D numeric samples × features matrix, got {x.shape}"
            raise DataError(msg)
        n, d = x.shape
        if "feature_names" in z.files:
            genes = [str(g) for g in z["feature_names"]]
        else:
            genes = [f"f{i}" for i in range(d)]
        obs = pd.DataFrame(index=[f"s{i}" for i in range(n)])
        for key in z.files:
            if key in ("X", "feature_names"):
                continue
            arr = z[key]
            if arr.ndim == 1 and len(arr) == n:
                obs[key] = arr
    data = ExpressionData(X=x.astype(np.float32), genes=genes, obs=obs, source=str(path))
    validate_matrix(data)
    return data


def read_text_file(path: str | Path, what: str) -> str:
    """The text of a small input file (gene lists, names): UTF-8, a leading BOM dropped.

    Raises
    ------
    DataError
        When the file cannot be read or is not UTF-8 text (``what`` names it).
    """
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        msg = (f"{what} {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 "
               "(one gene per line)")
        raise DataError(msg) from None
    except OSError as exc:
        msg = f"cannot read {what} {path}: {os.strerror(exc.errno) if exc.errno else exc}"
        raise DataError(msg) from None


def _read_elem(node: Any) -> Any:
    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem
    return read_elem(node)


def _read_anndata(
    f: h5py.File, path: Path, *, layer: str | None, gene_column: str | None, stream: bool
) -> ExpressionData:
    var = _read_elem(f["var"])
    obs = _read_elem(f["obs"]) if "obs" in f else pd.DataFrame()
    if layer is None:
        node = f["X"] if "X" in f else None
        if node is None:
            msg = f"{path} has no X matrix; choose a layer with --layer"
            raise DataError(msg)
        where = "X"
    else:
        layers = list(f["layers"].keys()) if "layers" in f else []
        if layer not in layers:
            avail = ", ".join(layers) if layers else "none"
            msg = f"{path} has no layer '{layer}' (layers: {avail}); pick one or omit --layer"
            raise DataError(msg)
        node = f["layers"][layer]
        where = f"layers/{layer}"
    if stream:
        X: Any = BackedMatrix(path, node.name)
        names = _anndata_names(var, path, gene_column)
        return ExpressionData(X=X, genes=names, obs=obs, source=f"{path} ({where}, streamed)")
    X = _read_elem(node)
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        if X.dtype != np.float32:
            X = X.astype(np.float32)
    else:
        X = np.asarray(X)
        if X.ndim != 2:
            msg = f"{path}:{where} is not a 2-D matrix (shape {X.shape})"
            raise DataError(msg)
        if X.dtype != np.float32:
            if not np.issubdtype(X.dtype, np.number):
                msg = f"{path}:{where} holds {X.dtype} values, not numbers"
                raise DataError(msg)
            X = X.astype(np.float32)
    names = _anndata_names(var, path, gene_column)
    return ExpressionData(X=X, genes=names, obs=obs, source=f"{path} ({where})")


def _anndata_names(var: pd.DataFrame, path: Path, gene_column: str | None) -> list[str]:
    if gene_column is None:
        return [str(g) for g in var.index]
    if gene_column not in var.columns:
        cols = ", ".join(map(str, var.columns)) or "none"
        msg = f"{path} has no var column '{gene_column}' (columns: {cols})"
        raise DataError(msg)
    return ["" if pd.isna(g) else str(g) for g in var[gene_column]]


def _datasets(f: h5py.File) -> list[tuple[str, tuple[int, ...]]]:
    found: list[tuple[str, tuple[int, ...]]] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append(("/" + name, obj.shape))

    f.visititems(visit)
    return found


def _read_hdf5(
    f: h5py.File,
    path: Path,
    *,
    dataset: str | None,
    genes: str | None,
    transpose: bool,
    stream: bool,
) -> ExpressionData:
    dataset = _matrix_dataset(f, path, dataset)
    if stream and transpose:
        msg = (
            f"{path}:{dataset} is stored genes × samples; streaming reads sample rows, so "
            "store it samples × genes or run without --stream"
        )
        raise UsageError(msg)
    if stream:
        X: Any = BackedMatrix(path, dataset)
    else:
        X = np.asarray(f[dataset][()], dtype=np.float32)
        if transpose:
            X = np.ascontiguousarray(X.T)
    names = _hdf5_gene_names(f, path, genes)
    if len(names) != X.shape[1]:
        hint = " (try --genes-by-samples)" if len(names) == X.shape[0] and not transpose else ""
        msg = (
            f"{len(names)} gene names for a matrix with {X.shape[1]} genes "
            f"(shape {X.shape}, samples × genes){hint}"
        )
        raise DataError(msg)
    obs = pd.DataFrame(index=[f"s{i}" for i in range(X.shape[0])])
    where = f"{path}:{dataset}" + (" (streamed)" if stream else "")
    return ExpressionData(X=X, genes=names, obs=obs, source=where)


def _matrix_dataset(f: h5py.File, path: Path, dataset: str | None) -> str:
    """The path of the 2-D numeric matrix in plain HDF5 (the only 2-D one if not named)."""
    all_ds = _datasets(f)
    if dataset is None:
        two_d = [name for name, shape in all_ds if len(shape) == 2]
        if len(two_d) != 1:
            listing = ", ".join(f"{n} {s}" for n, s in all_ds) or "none"
            msg = (
                f"{path} is plain HDF5; name the matrix with --dataset "
                f"(datasets in the file: {listing})"
            )
            raise UsageError(msg)
        dataset = two_d[0]
    if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
        listing = ", ".join(n for n, _ in all_ds) or "none"
        msg = f"{path} has no dataset '{dataset}' (datasets: {listing})"
        raise DataError(msg)
    ds = f[dataset]
    if ds.ndim != 2:
        msg = f"{path}:{dataset} is not a 2-D matrix (shape {ds.shape}); pass a 2-D dataset"
        raise DataError(msg)
    if not np.issubdtype(ds.dtype, np.number):
        msg = f"{path}:{dataset} holds {ds.dtype} values, not numbers"
        raise DataError(msg)
    return dataset


def _hdf5_gene_names(f: h5py.File, path: Path, genes: str | None) -> list[str]:
    """Gene names from ``--genes``: a dataset in the file or a text file, one per line."""
    if genes is None:
        msg = (
            f"{path} is plain HDF5: give the gene names with --genes (a dataset path in the "
            "file, or a text file with one name per line)"
        )
        raise UsageError(msg)
    if genes in f:
        raw = np.asarray(f[genes][()]).ravel()
        return [g.decode() if isinstance(g, bytes) else str(g) for g in raw]
    if Path(genes).is_file():
        text = read_text_file(genes, "--genes file")
        return [line.strip() for line in text.splitlines() if line.strip()]
    msg = f"--genes {genes!r} is neither a dataset in {path} nor a readable text file"
    raise DataError(msg)


def counts_hint(data: ExpressionData, preprocess: str) -> str | None:
    """A warning line when the matrix looks like raw counts and ``preprocess`` has no log1p.

    Raw counts (non-negative integers with a long tail) make a few highly expressed genes
    dominate the squared error; ``log1p`` is the usual choice. Looks at up to 500 rows.
    """
    if "log1p" in preprocess:
        return None
    block = data.rows(np.arange(min(500, data.shape[0])))
    values = np.asarray(block.data if sp.issparse(block) else block, np.float64).ravel()
    if not len(values) or values.min() < 0 or values.max() <= 20:
        return None
    if not np.all(values == np.round(values)):
        return None
    return (
        f"warning: {data.source} looks like raw counts (non-negative integers up to "
        f"{values.max():.0f}) and --preprocess is {preprocess!r}; --preprocess log1p "
        "(or log1p+standardize) usually gives a better panel"
    )


def validate_matrix(data: ExpressionData) -> None:
    """Check gene names and values; raise :class:`DataError` on the first problem."""
    n, d = data.shape
    if n == 0 or d == 0:
        msg = f"{data.source} is empty (shape {n} × {d})"
        raise DataError(msg)
    if len(data.genes) != d:
        msg = f"{len(data.genes)} gene names for {d} genes in {data.source}"
        raise DataError(msg)
    empty = [i for i, g in enumerate(data.genes) if not g.strip() or g.lower() == "nan"]
    if empty:
        msg = (
            f"{len(empty)} empty gene name(s) in {data.source} (first at column {empty[0]}); "
            "choose another name column with --gene-column or fill them in"
        )
        raise DataError(msg)
    counts = pd.Index(data.genes).value_counts()
    dups = counts[counts > 1]
    if len(dups):
        shown = ", ".join(f"{g} ×{c}" for g, c in dups.head(5).items())
        msg = (
            f"{len(dups)} duplicate gene name(s) in {data.source} ({shown}); make them unique "
            "(anndata's var_names_make_unique) or use another column with --gene-column"
        )
        raise DataError(msg)
    if data.is_backed:
        for start, block in data.X.iter_chunks():
            _check_finite(block, data, offset=start)
    else:
        _check_finite(data.X, data, offset=0)


def _check_finite(x: Any, data: ExpressionData, offset: int) -> None:
    values = x.data if sp.issparse(x) else x
    bad = ~np.isfinite(values)
    if bad.any():
        n_bad = int(bad.sum())
        if sp.issparse(x):
            pos = int(np.flatnonzero(bad)[0])
            row = int(np.searchsorted(x.indptr, pos, side="right") - 1)
            col = int(x.indices[pos])
        else:
            row, col = (int(v) for v in np.argwhere(bad)[0])
        row += offset
        msg = (
            f"{data.source} holds {n_bad} NaN or infinite value(s) (first at sample {row}, "
            f"gene {data.genes[col]}); impute or remove them before selecting a panel"
        )
        raise DataError(msg)


# --------------------------------------------------------------------------- writing


def _umask() -> int:
    """The process umask (read without changing it where ``/proc`` allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def default_file_mode() -> int:
    """``0o666`` less the umask: the mode ``open()`` would give a new file."""
    return 0o666 & ~_umask()


def write_error(path: str | Path, exc: OSError) -> DataError:
    """One line for a failed write: the path, the reason and what to do."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc).split(" (")[0]
    hint = {
        28: "free some space or choose another --out",
        13: "choose a writable --out",
        30: "choose a writable --out",
        1: "choose a writable --out",
    }.get(exc.errno or 0, "check the --out path")
    return DataError(f"cannot write {path}: {reason}; {hint}")


def temp_file_beside(path: Path) -> tuple[int, str]:
    """A new temporary file beside ``path`` with the umask's permissions (not 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_file_mode())
    except OSError:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``path`` and move it into place only on success.

    The file gets the permissions a plain ``open()`` would give (``0o666`` less the
    umask). A failed write (full disk, read-only folder) raises :class:`DataError`
    and leaves neither ``path`` changed nor the temporary file behind.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file_beside(path)
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if exc.errno is None:
            raise
        raise write_error(path, exc) from exc
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=2, default=_json_default)
        fh.write("\n")


def write_tsv(path: str | Path, frame: pd.DataFrame) -> None:
    """Write a DataFrame as TSV without its index, atomically."""
    with atomic_write(path) as fh:
        frame.to_csv(fh, sep="\t", index=False, float_format="%.6g")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    msg = f"cannot serialise {type(obj).__name__} to JSON"
    raise TypeError(msg)


def input_identity(data: ExpressionData, path: str | Path | None = None) -> dict[str, Any]:
    """What identifies an input for ``--resume``.

    Shape, gene names and, for a file, its path, size and a SHA-256 of its first and last
    MiB (compared without the path: the same file moved or touched still matches).
    """
    import hashlib

    genes = hashlib.sha256("\n".join(data.genes).encode()).hexdigest()
    ident: dict[str, Any] = {"shape": list(data.shape), "genes_sha256": genes}
    if path is not None and Path(path).is_file():
        h = hashlib.sha256()
        size = Path(path).stat().st_size
        with open(path, "rb") as fh:
            h.update(fh.read(2**20))
            if size > 2**20:
                fh.seek(max(2**20, size - 2**20))
                h.update(fh.read(2**20))
        ident.update(path=os.path.abspath(path), size=size, head_tail_sha256=h.hexdigest())
    return ident


#: Every run folder genepanel writes holds this file; ``--overwrite`` replaces nothing else.
MARKER = ".genepanel-run"


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` is a folder that genepanel wrote (it holds :data:`MARKER`)."""
    return path.is_dir() and not path.is_symlink() and (path / MARKER).is_file()


def input_paths(*items: Any) -> list[Path]:
    """The file or folder paths among ``items`` (``@file`` gene lists included)."""
    out = []
    for item in items:
        if isinstance(item, str) and item.startswith("@"):
            item = item[1:]
        if isinstance(item, str | os.PathLike) and str(item):
            out.append(Path(item))
    return out


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


class OutputDir:
    """An output folder that appears complete or not at all, and never replaces a stranger's.

    Everything is written into ``<out>.partial/``; :meth:`commit` renames it to
    ``<out>``. The staging folder survives an interruption so that a run can resume
    from its checkpoints there. While a run works in it, the staging folder is locked
    (``fcntl.flock``): a second run to the same ``--out`` is refused, with
    ``--resume`` and ``--overwrite`` too. ``overwrite`` replaces only a folder holding
    the :data:`MARKER` file (one genepanel wrote), and never an input or a folder
    holding one (``inputs``).
    """

    def __init__(
        self,
        out: str | Path,
        *,
        overwrite: bool = False,
        resume: bool = False,
        inputs: list[Path] | tuple[Path, ...] = (),
        command: str = "genepanel",
    ):
        self.shown = Path(out)
        self.final = Path(os.path.abspath(out))
        if not self.final.name:
            msg = f"--out {out} is the file system root; choose a new folder for the results"
            raise UsageError(msg)
        self.staging = self.final.with_name(self.final.name + ".partial")
        self.overwrite = overwrite
        self.resume = resume
        self.inputs = [Path(p) for p in inputs]
        self.command = command
        self._lock_fd: int | None = None

    def _check_inputs(self) -> None:
        for given in self.inputs:
            if not given.exists():
                continue
            real = _real(given)
            for target in (self.final, self.staging):
                t = _real(target)
                if real == t:
                    msg = (f"--out {self.shown} is the input {given}; inputs are never "
                           "modified: choose another --out")
                    raise UsageError(msg)
                if t in real.parents:
                    msg = (f"--out {self.shown} holds the input {given}; inputs are never "
                           "modified: choose a new folder for --out")
                    raise UsageError(msg)

    def check(self, *, staging: bool = True) -> None:
        """Refuse unsafe or busy destinations before any work (one line, exit code 2).

        ``staging=False`` skips the checks of ``<out>.partial`` (for the processes of a
        multi-process run other than the one that writes: it may already be working there).
        """
        self._check_inputs()
        if self.final.exists() or self.final.is_symlink():
            if not self.overwrite:
                msg = (
                    f"output folder {self.shown} already exists; pass --overwrite to replace "
                    "it or choose another --out"
                )
                raise UsageError(msg)
            if not is_run_folder(self.final):
                what = "folder" if self.final.is_dir() else "file"
                msg = (
                    f"--overwrite: {self.shown} is a {what} genepanel did not write (no "
                    f"{MARKER} marker); genepanel replaces only its own run folders: move it "
                    "away or choose another --out"
                )
                raise UsageError(msg)
        if not staging:
            return
        if self.staging.exists():
            busy = self._holder()
            if busy is not None:
                msg = (
                    f"{self.staging} is in use by a running genepanel ({busy}); wait for it to "
                    "finish or choose another --out"
                )
                raise UsageError(msg)
            if not self.resume and not self.overwrite:
                msg = (
                    f"an interrupted run left {self.staging}; pass --resume to continue it "
                    "or --overwrite to start again"
                )
                raise UsageError(msg)
            if not is_run_folder(self.staging):
                msg = (
                    f"{self.staging} exists but genepanel did not write it (no {MARKER} "
                    "marker); move it away or choose another --out"
                )
                raise UsageError(msg)
        elif self.resume:
            msg = f"--resume: no interrupted run found at {self.staging}; run without --resume"
            raise UsageError(msg)

    def _holder(self) -> str | None:
        """``"pid N"`` when a live run holds the staging lock, else ``None``."""
        import fcntl

        try:
            fd = os.open(self.staging, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                pid = json.loads((self.staging / MARKER).read_text()).get("pid", "?")
            except (OSError, ValueError, AttributeError):
                pid = "?"
            return f"pid {pid}"
        finally:
            os.close(fd)
        return None

    def prepare(self) -> Path:
        """Check the destination, create and lock the staging folder; return it."""
        import fcntl

        self.check()
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.staging, os.O_RDONLY)
        except OSError as exc:
            raise write_error(self.staging, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            msg = (f"{self.staging} is in use by another running genepanel; wait for it to "
                   "finish or choose another --out")
            raise UsageError(msg) from None
        self._lock_fd = fd
        try:
            if not self.resume:
                for child in self.staging.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            from genepanel import __version__

            write_json(self.staging / MARKER, {
                "written_by": f"genepanel {__version__}", "command": self.command,
                "pid": os.getpid(),
            })
        except OSError as exc:
            self.release()
            raise write_error(self.staging, exc) from exc
        except BaseException:
            self.release()
            raise
        return self.staging

    def commit(self) -> Path:
        """Move the staging folder into place (replacing ``out`` with ``--overwrite``).

        SIGTERM and SIGINT wait until the folder is in place, so that an old ``out`` is
        never left moved aside.
        """
        import signal

        held = {signal.SIGTERM, signal.SIGINT}
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            ckpt = self.staging / "checkpoints"
            if ckpt.exists():
                shutil.rmtree(ckpt)
            if self.final.exists() or self.final.is_symlink():
                if not (self.overwrite and is_run_folder(self.final)):
                    msg = (f"{self.shown} appeared while the run worked and genepanel did not "
                           f"write it; the results stay in {self.staging}")
                    raise UsageError(msg)
                trash = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
                os.replace(self.final, trash)
                os.replace(self.staging, self.final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(self.staging, self.final)
        except OSError as exc:
            raise write_error(self.final, exc) from exc
        finally:
            self.release()
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return self.shown

    def release(self) -> None:
        """Drop the staging lock (also done by :meth:`commit` and at exit)."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def __del__(self) -> None:
        self.release()


def uns_safe(obj: Any) -> Any:
    """A copy of ``obj`` that ``AnnData.write_h5ad`` accepts in ``uns``.

    ``None`` values are dropped, lists of strings or numbers become arrays, other lists
    dicts keyed by position, NumPy scalars Python scalars.
    """
    if isinstance(obj, dict):
        return {str(k): uns_safe(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        items = [v for v in obj if v is not None]
        if all(isinstance(v, str) for v in items):
            return np.array(items, dtype=object) if items else np.array([], dtype=float)
        if all(isinstance(v, bool | int | float | np.number) for v in items):
            return np.asarray(items)
        return {str(i): uns_safe(v) for i, v in enumerate(items)}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
