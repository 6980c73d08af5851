"""The bundled L1000 landmark genes and mapping a reference panel onto a data set's genes.

The 978 LINCS L1000 landmark genes ship as package data (``resources/l1000_landmarks.tsv``;
provenance in ``resources/L1000_PROVENANCE.md``). A data set names its genes by symbol (old
or current), Entrez ID, Ensembl ID (often versioned) or microarray probe ID, in its
gene names or in a ``var`` column; :func:`map_reference` tries every identifier of the
reference against every such column and keeps, for each reference gene, the match
supported best, so no user has to say which naming the data use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from genepanel.errors import DataError, UsageError

#: Identifier columns of the landmark table, tried in this order on ties.
LANDMARK_ID_COLUMNS = (
    "affy_probe_id",
    "entrez_id",
    "dgex_ensembl_id",
    "ensembl_ids_2022",
    "symbol_2022",
    "symbol",
)
N_LANDMARKS = 978
#: A var column counts as an identifier column when at least this fraction of its
#: non-empty values are distinct (probe-level symbols pass; counts and categories do not).
MIN_DISTINCT_FRACTION = 0.3
_VERSIONED = re.compile(r"^(ENS[A-Z]*\d+)\.\d+$", re.IGNORECASE)
_INTEGER = re.compile(r"^-?\d+\.0+$")


def load_landmarks() -> pd.DataFrame:
    """Load the 978 L1000 landmark genes (one row per gene, all columns as strings).

    Returns
    -------
    pandas.DataFrame
        Columns ``entrez_id``, ``symbol``, ``symbol_2022``, ``affy_probe_id``,
        ``l1000_analyte_id``, ``in_dgex_943`` (``"1"``/``"0"``), ``dgex_ensembl_id``,
        ``ensembl_ids_2022`` (``;``-joined) and ``gene_title``; blanks are ``""``.
    """
    path = resources.files("genepanel").joinpath("resources/l1000_landmarks.tsv")
    with path.open("r") as fh:
        table = pd.read_csv(fh, sep="\t", dtype=str, keep_default_na=False)
    if len(table) != N_LANDMARKS:  # pragma: no cover - guards a damaged installation
        msg = f"the bundled landmark table has {len(table)} rows, expected {N_LANDMARKS}; reinstall"
        raise DataError(msg)
    return table


def read_gene_list(path: str | Path) -> list[str]:
    """Read a reference panel: one identifier per line (``#`` comments, blank lines skipped).

    Only the first field of a line (split at tabs, commas or spaces) is used, so a
    TSV/CSV whose first column holds the identifiers also works; a header line that
    matches no gene is harmless.

    Raises
    ------
    UsageError
        When the file is missing or holds no identifiers.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"reference file {path} not found; pass a text file with one gene per line"
        raise UsageError(msg)
    names: list[str] = []
    from genepanel.io import read_text_file

    for line in read_text_file(path, "reference file").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        first = re.split(r"[\t, ]+", line)[0].strip().strip('"')
        if first and first not in names:
            names.append(first)
    if not names:
        msg = f"reference file {path} holds no gene identifiers; put one gene per line"
        raise UsageError(msg)
    return names


def normalize_id(value: object) -> str:
    """Canonical form of a gene identifier for matching.

    Upper-case, surrounding space removed, the version dropped from Ensembl IDs
    (``ENSG00000000003.10`` → ``ENSG00000000003``), ``"7105.0"`` → ``"7105"``;
    missing values, ``""``, ``"0"``, ``"-666"`` and ``"nan"`` become ``""`` (no match).
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    s = str(value).strip().upper()
    if s in ("", "NAN", "NONE", "0", "-666", "---"):
        return ""
    m = _VERSIONED.match(s)
    if m:
        return m.group(1)
    if _INTEGER.match(s):
        return s.split(".", 1)[0]
    return s


@dataclass
class ReferenceMatch:
    """A reference panel mapped onto a data set's genes.

    Attributes
    ----------
    name
        Human-readable name of the reference (e.g. ``"L1000 landmarks"``).
    table
        One row per reference gene: ``reference`` (its display name), ``found``,
        ``gene`` (the data gene it maps to, ``""`` if none), ``gene_index`` (column in
        the data, -1 if none) and ``matched_by`` (``data column = reference column``).
    indices
        ``[n_found]`` distinct data column indices of the found genes, in reference order.
    by_source
        Number of reference genes matched through each ``data column = reference column`` pair.
    """

    name: str
    table: pd.DataFrame
    indices: np.ndarray
    by_source: dict[str, int]

    @property
    def n_reference(self) -> int:
        """Number of genes in the reference."""
        return len(self.table)

    @property
    def n_found(self) -> int:
        """Number of reference genes found in the data."""
        return len(self.indices)

    @property
    def not_found(self) -> list[str]:
        """Display names of the reference genes that were not found."""
        return self.table.loc[~self.table["found"], "reference"].tolist()

    def summary(self) -> str:
        """One line: how many were found and through which identifiers."""
        how = ", ".join(f"{k}: {v}" for k, v in self.by_source.items()) or "no identifier matched"
        return f"{self.n_found} of {self.n_reference} {self.name} found in the data ({how})"

    def check(self, min_fraction: float, source: str) -> None:
        """Raise :class:`DataError` when fewer than ``min_fraction`` of the reference matched."""
        need = int(np.ceil(min_fraction * self.n_reference))
        if self.n_found == 0 or self.n_found < need:
            frac = self.n_found / max(self.n_reference, 1)
            shown = ", ".join(self.not_found[:5])
            msg = (
                f"only {self.n_found} of {self.n_reference} {self.name} ({frac:.0%}) match genes "
                f"of {source} (not found e.g. {shown}); at least {min_fraction:.0%} are needed: "
                "check the gene names (--gene-column) or lower --min-found"
            )
            raise DataError(msg)


def _data_columns(genes: list[str], var: pd.DataFrame | None) -> dict[str, list[str]]:
    """Candidate identifier columns of the data: the gene names and every text/int var column."""
    cols: dict[str, list[str]] = {"var_names": [normalize_id(g) for g in genes]}
    if var is None:
        return cols
    if len(var) != len(genes):
        msg = f"var has {len(var)} rows for {len(genes)} genes"
        raise DataError(msg)
    index_norm = [normalize_id(g) for g in var.index]
    if index_norm != cols["var_names"]:
        cols["var.index"] = index_norm
    for name in var.columns:
        col = var[name]
        if pd.api.types.is_bool_dtype(col) or pd.api.types.is_float_dtype(col):
            continue
        if not (
            pd.api.types.is_object_dtype(col)
            or isinstance(col.dtype, pd.CategoricalDtype)
            or pd.api.types.is_string_dtype(col)
            or pd.api.types.is_integer_dtype(col)
        ):
            continue
        values = [normalize_id(v) for v in col.astype(object)]
        present = [v for v in values if v]
        # identifiers are (nearly) unique per gene; skip counts, categories and flags
        if present and len(set(present)) >= MIN_DISTINCT_FRACTION * len(present):
            cols[f"var.{name}"] = values
    return cols


def _lookup(values: list[str]) -> dict[str, list[int]]:
    table: dict[str, list[int]] = {}
    for i, v in enumerate(values):
        if v:
            table.setdefault(v, []).append(i)
    return table


def _pair_hits(
    lookups: dict[str, dict[str, list[int]]], ref_ids: dict[str, list[list[str]]]
) -> tuple[dict[tuple[str, str], list[list[int]]], dict[tuple[str, str], tuple[int, int]]]:
    """Per (data column, reference column) pair: the data positions of each reference gene.

    Returns ``hits[pair][i]`` (positions matching reference gene ``i`` through that
    pair) and ``score[pair]`` = (genes matched, genes matched to exactly one position),
    for the pairs that match anything.
    """
    hits: dict[tuple[str, str], list[list[int]]] = {}
    score: dict[tuple[str, str], tuple[int, int]] = {}
    for dcol, lk in lookups.items():
        for rcol, ids in ref_ids.items():
            per_gene = []
            for cell in ids:
                pos: list[int] = []
                for v in cell:
                    for p in lk.get(v, ()):
                        if p not in pos:
                            pos.append(p)
                per_gene.append(pos)
            n_hit = sum(1 for p in per_gene if p)
            if n_hit:
                hits[(dcol, rcol)] = per_gene
                score[(dcol, rcol)] = (n_hit, sum(1 for p in per_gene if len(p) == 1))
    return hits, score


def map_reference(
    reference: pd.DataFrame,
    genes: list[str],
    var: pd.DataFrame | None = None,
    *,
    id_columns: tuple[str, ...] | None = None,
    display_column: str | None = None,
    name: str = "reference genes",
) -> ReferenceMatch:
    """Map the genes of ``reference`` onto the data's ``genes`` by any identifier.

    Every pair (data column, reference identifier column) is scored by how many
    reference genes it matches; each reference gene then takes its match from the
    best-scoring pair that finds it (a pair that maps the gene to exactly one data
    column preferred), and a data column already taken by another reference gene is
    not given twice.

    Parameters
    ----------
    reference
        One row per reference gene; ``id_columns`` hold identifiers (a cell may hold
        several, ``;``-joined).
    genes
        ``[d]`` the data's gene names.
    var
        Optional ``[d]`` gene annotations; its text and integer columns are tried too.
    id_columns
        Columns of ``reference`` to try (default: all of them).
    display_column
        Column shown as the gene's name in reports (default: the first id column).
    name
        What the reference is called in messages.

    Returns
    -------
    ReferenceMatch
    """
    id_columns = tuple(id_columns or reference.columns)
    display_column = display_column or id_columns[0]
    data_cols = _data_columns(genes, var)
    lookups = {c: _lookup(v) for c, v in data_cols.items()}
    ref_ids = {
        col: [
            [normalize_id(p) for p in str(cell).split(";") if normalize_id(p)]
            for cell in reference[col].fillna("").astype(str)
        ]
        for col in id_columns
    }
    n_ref = len(reference)
    hits, score = _pair_hits(lookups, ref_ids)
    ranked = sorted(
        hits,
        key=lambda pr: (-score[pr][1], -score[pr][0], list(lookups).index(pr[0]),
                        id_columns.index(pr[1])),
    )
    taken: set[int] = set()
    gene_index = np.full(n_ref, -1, np.int64)
    matched_by = [""] * n_ref
    for i in range(n_ref):
        for pair in ranked:
            free = [p for p in hits[pair][i] if p not in taken]
            if free:
                gene_index[i] = free[0]
                taken.add(free[0])
                matched_by[i] = f"{pair[0]} = {pair[1]}"
                break
    found = gene_index >= 0
    table = pd.DataFrame(
        {
            "reference": reference[display_column].astype(str).to_numpy(),
            "found": found,
            "gene": [genes[j] if j >= 0 else "" for j in gene_index],
            "gene_index": gene_index,
            "matched_by": matched_by,
        }
    )
    by_source = pd.Series([m for m in matched_by if m]).value_counts()
    return ReferenceMatch(
        name=name,
        table=table,
        indices=gene_index[found],
        by_source={str(k): int(v) for k, v in by_source.items()},
    )


def map_landmarks(
    genes: list[str], var: pd.DataFrame | None = None, *, dgex_only: bool = False
) -> ReferenceMatch:
    """Map the 978 L1000 landmarks (or the D-GEX 943) onto the data's genes.

    Parameters
    ----------
    genes
        ``[d]`` the data's gene names.
    var
        Optional ``[d]`` gene annotations (e.g. symbols beside probe or Ensembl IDs).
    dgex_only
        Use only the 943 landmarks present in the D-GEX GEO data.
    """
    table = load_landmarks()
    name = "L1000 landmarks"
    if dgex_only:
        table = table[table["in_dgex_943"] == "1"].reset_index(drop=True)
        name = "D-GEX landmarks"
    return map_reference(
        table, genes, var, id_columns=LANDMARK_ID_COLUMNS, display_column="symbol", name=name
    )


def map_gene_list(
    names: list[str], genes: list[str], var: pd.DataFrame | None = None, *, name: str
) -> ReferenceMatch:
    """Map a user's list of identifiers (any naming) onto the data's genes."""
    return map_reference(
        pd.DataFrame({"id": names}), genes, var, id_columns=("id",), display_column="id", name=name
    )
