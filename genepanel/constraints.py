"""Panel constraints: genes that must be in the panel, genes it must avoid, a candidate list.

The constraints become a boolean mask over the selector logits ``[k, d]``: the first
``len(include)`` nodes are pinned to the included genes, every other node may choose
only allowed genes (not excluded, in the candidate list when there is one, and not
already included). Masked logits are set to a large negative value at
initialisation; their softmax weight and hence their gradient is exactly zero, so
they stay masked through training without any change to the step function.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genepanel.errors import UsageError

MASKED_LOGIT = -1.0e4


def parse_gene_list(
    value: str | list[str] | tuple[str, ...] | None, option: str
) -> tuple[str, ...]:
    """Names from ``"A,B,C"``, ``"@file"`` (one per line or comma-separated) or a list."""
    if value is None or value == "" or value == ():
        return ()
    if isinstance(value, (list, tuple)):
        items: list[str] = []
        for v in value:
            items.extend(parse_gene_list(str(v), option))
        return tuple(items)
    value = str(value)
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            msg = f"{option} {value}: file {path} not found"
            raise UsageError(msg)
        from genepanel.io import read_text_file

        text = read_text_file(path, f"{option} gene list").replace(",", "\n")
        return tuple(line.strip() for line in text.splitlines() if line.strip()
                     and not line.lstrip().startswith("#"))
    return tuple(v.strip() for v in value.split(",") if v.strip())


@dataclass(frozen=True)
class Constraints:
    """Resolved constraints for one gene list.

    Attributes
    ----------
    include
        Gene indices pinned to nodes ``0 .. len(include) - 1``.
    allowed
        ``[d]`` whether a free node may choose the gene.
    report
        What was asked and what matched (for ``run.json``).
    """

    include: tuple[int, ...]
    allowed: np.ndarray
    report: dict

    @property
    def active(self) -> bool:
        """Whether anything is constrained."""
        return bool(self.include) or not bool(self.allowed.all())

    def selectable(self) -> np.ndarray | None:
        """``[d]`` genes a baseline selector may choose (allowed or included; ``None``: all)."""
        if not self.active:
            return None
        allowed = self.allowed.copy()
        allowed[list(self.include)] = True
        return allowed

    def mask(self, k: int) -> np.ndarray:
        """``[k, d]`` boolean mask of the logits each node may use."""
        d = len(self.allowed)
        m = np.broadcast_to(self.allowed, (k, d)).copy()
        for node, g in enumerate(self.include):
            m[node] = False
            m[node, g] = True
        return m


def resolve(
    genes: list[str],
    k: int,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    candidates: tuple[str, ...] = (),
) -> Constraints:
    """Check the constraints against ``genes`` and build :class:`Constraints`.

    ``exclude`` entries are names or shell-style patterns (``MT-*``, ``RP[SL]*``), matched
    case-sensitively. Raises :class:`UsageError` when the constraints cannot be met.
    """
    index = {g: i for i, g in enumerate(genes)}
    d = len(genes)
    missing = [g for g in include if g not in index]
    if missing:
        shown = ", ".join(missing[:10]) + (" …" if len(missing) > 10 else "")
        msg = f"--include: {len(missing)} gene(s) not in the data ({shown}); check the names"
        raise UsageError(msg)
    inc = tuple(dict.fromkeys(index[g] for g in include))
    if len(inc) > k:
        msg = f"--include lists {len(inc)} genes but the panel has k = {k}; raise --k"
        raise UsageError(msg)
    excluded = np.zeros(d, bool)
    unmatched = []
    for pat in exclude:
        hits = [i for i, g in enumerate(genes) if fnmatch.fnmatchcase(g, pat)]
        if not hits:
            unmatched.append(pat)
        excluded[hits] = True
    clash = [genes[i] for i in inc if excluded[i]]
    if clash:
        msg = f"--include and --exclude both name {', '.join(clash[:5])}; drop one of them"
        raise UsageError(msg)
    allowed = ~excluded
    cand_found = None
    if candidates:
        cand = np.zeros(d, bool)
        hits = [index[g] for g in candidates if g in index]
        if not hits:
            msg = "--candidates: none of the listed genes is in the data; check the names"
            raise UsageError(msg)
        cand[hits] = True
        cand_found = len(set(hits))
        allowed &= cand
    allowed[list(inc)] = False  # free nodes never take an included gene
    free = k - len(inc)
    if int(allowed.sum()) < free:
        msg = (
            f"only {int(allowed.sum())} genes are allowed for the {free} free panel node(s) "
            "after --exclude/--candidates; loosen them or lower --k"
        )
        raise UsageError(msg)
    report = {
        "include": [genes[i] for i in inc],
        "exclude_patterns": list(exclude),
        "exclude_patterns_matching_nothing": unmatched,
        "excluded_genes": int(excluded.sum()),
        "candidates_listed": len(candidates),
        "candidates_found": cand_found,
        "allowed_genes": int(allowed.sum()),
    }
    return Constraints(include=inc, allowed=allowed, report=report)
