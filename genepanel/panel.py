"""Panel extraction (k distinct genes) and related-gene groups from the selector's α."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import softmax


@dataclass(frozen=True)
class Panel:
    """The chosen genes, one per node.

    Attributes
    ----------
    indices
        ``[k]`` gene (column) index chosen by each node, all distinct.
    probability
        ``[k]`` the node's softmax(α) mass on its chosen gene.
    reassigned
        Number of nodes whose argmax was taken by a more confident node and that got
        their best free gene instead (0 when training resolved every collision).
    """

    indices: np.ndarray
    probability: np.ndarray
    reassigned: int


def extract_panel(logits: np.ndarray) -> Panel:
    """Pick k distinct genes from selector logits ``[k, d]``.

    Nodes are served in order of confidence (highest maximum probability first);
    each takes its most probable gene that no earlier node holds. With no collisions
    this is exactly the per-node argmax.
    """
    probs = softmax(np.asarray(logits, np.float64), axis=-1)
    k = probs.shape[0]
    order = np.argsort(-probs.max(axis=1), kind="stable")
    taken: set[int] = set()
    chosen = np.empty(k, np.int64)
    reassigned = 0
    for node in order:
        ranked = np.argsort(-probs[node], kind="stable")
        for rank, g in enumerate(ranked):
            if int(g) not in taken:
                chosen[node] = g
                taken.add(int(g))
                reassigned += rank > 0
                break
    return Panel(
        indices=chosen,
        probability=probs[np.arange(k), chosen].astype(np.float32),
        reassigned=int(reassigned),
    )


def panel_table(panel: Panel, genes: list[str], fixed: int = 0) -> pd.DataFrame:
    """``panel.tsv``: one row per node.

    Columns ``gene``, ``node``, ``probability``, ``gene_index`` and ``fixed`` (the first
    ``fixed`` nodes hold genes the user required with ``--include``).
    """
    k = len(panel.indices)
    return pd.DataFrame(
        {
            "gene": [genes[i] for i in panel.indices],
            "node": np.arange(k),
            "probability": panel.probability,
            "gene_index": panel.indices,
            "fixed": np.arange(k) < fixed,
        }
    )


def related_groups(logits: np.ndarray, genes: list[str], panel: Panel, n: int = 3) -> pd.DataFrame:
    """``groups.tsv``: for every node its top-``n`` genes by softmax(α) (the paper's Fig. 5).

    The chosen gene is always listed (flagged ``selected``) even where a reassignment put
    it outside the node's top ``n``; the others are alternatives for it.
    """
    probs = softmax(np.asarray(logits, np.float64), axis=-1)
    rows = []
    n = min(n, probs.shape[1])
    for node in range(probs.shape[0]):
        # genes a node cannot choose (constraints) have probability 0: never alternatives
        top = [g for g in np.argsort(-probs[node], kind="stable")[:n] if probs[node, g] > 0]
        chosen = int(panel.indices[node])
        if chosen not in top:
            top = [chosen, *top[: n - 1]]
        for rank, g in enumerate(top, start=1):
            rows.append(
                {
                    "node": node,
                    "panel_gene": genes[chosen],
                    "rank": rank,
                    "gene": genes[int(g)],
                    "probability": float(probs[node, g]),
                    "selected": int(g) == chosen,
                }
            )
    return pd.DataFrame(rows)


def swap_groups(
    panel: Panel, alternatives: np.ndarray, increase: np.ndarray, genes: list[str],
    fixed: int = 0,
) -> pd.DataFrame:
    """``groups.tsv`` for a panel refined by swap search: alternatives by refit cost.

    For node ``i`` the panel gene comes first (``selected``, with the node's
    ``probability`` where the refinement kept the node's own gene), then the genes
    ``alternatives[i]`` that could replace it at the least cost, each with
    ``refit_error_increase``: the relative rise of the training refit error if it
    replaced the panel gene (see :func:`genepanel.selectors.swap_alternatives`). The
    selector's probabilities describe the autoencoder's genes, not these, so their
    ``probability`` is empty. The first ``fixed`` nodes (``--include``) list none.
    """
    rows = []
    for node, chosen in enumerate(np.asarray(panel.indices)):
        ranked = [(int(chosen), float(panel.probability[node]), 0.0)]
        if node >= fixed:
            ranked += [(int(g), np.nan, float(c))
                       for g, c in zip(alternatives[node], increase[node], strict=True)]
        for rank, (g, prob, cost) in enumerate(ranked, start=1):
            rows.append({"node": node, "panel_gene": genes[int(chosen)], "rank": rank,
                         "gene": genes[g], "probability": prob, "selected": rank == 1,
                         "refit_error_increase": cost})
    return pd.DataFrame(rows)
