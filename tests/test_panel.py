"""Panel extraction: k distinct genes, served by confidence; and the batch-size rule."""

from __future__ import annotations

import numpy as np
import pytest

from genepanel.errors import UsageError
from genepanel.panel import extract_panel, panel_table, related_groups
from genepanel.runtime import check_batch_size
from genepanel.train import effective_batch_size

GENES = [f"g{i}" for i in range(6)]


def _logits(probs: list[list[float]]) -> np.ndarray:
    return np.log(np.asarray(probs, np.float64))


def test_argmax_when_no_two_nodes_share_a_gene():
    p = extract_panel(_logits([[0.7, 0.1, 0.1, 0.05, 0.03, 0.02],
                               [0.1, 0.1, 0.6, 0.1, 0.05, 0.05]]))
    assert list(p.indices) == [0, 2] and p.reassigned == 0
    np.testing.assert_allclose(p.probability, [0.7, 0.6], rtol=1e-6)


def test_duplicate_gene_goes_to_the_more_confident_node():
    # both nodes want gene 1; node 1 is more confident, so node 0 takes its second choice
    p = extract_panel(_logits([[0.05, 0.5, 0.3, 0.05, 0.05, 0.05],
                               [0.02, 0.9, 0.02, 0.02, 0.02, 0.02]]))
    assert list(p.indices) == [2, 1] and p.reassigned == 1
    assert len(set(p.indices)) == 2
    np.testing.assert_allclose(p.probability, [0.3, 0.9], rtol=1e-6)


def test_identical_nodes_still_give_distinct_genes():
    row = [0.4, 0.3, 0.2, 0.05, 0.03, 0.02]
    p = extract_panel(_logits([row, row, row]))
    assert sorted(p.indices) == [0, 1, 2] and p.reassigned == 2


def test_table_and_groups_list_the_chosen_gene_even_outside_the_top_n():
    logits = _logits([[0.05, 0.5, 0.3, 0.05, 0.05, 0.05],
                      [0.02, 0.9, 0.02, 0.02, 0.02, 0.02]])
    p = extract_panel(logits)
    table = panel_table(p, GENES, fixed=1)
    assert list(table["gene"]) == ["g2", "g1"] and list(table["fixed"]) == [True, False]
    groups = related_groups(logits, GENES, p, n=1)
    node0 = groups[groups["node"] == 0]
    assert list(node0["gene"]) == ["g2"] and node0["selected"].all()  # g1 went to node 1


@pytest.mark.parametrize(("requested", "n_train", "devices", "want"),
                         [(None, 1000, 1, 62), (None, 1000, 4, 60), (64, 40, 4, 40),
                          (32, 1000, 4, 32)])
def test_effective_batch_size(requested, n_train, devices, want):
    assert effective_batch_size(requested, n_train, devices) == want


def test_default_batch_is_halved_when_the_decoder_is_wide():
    # Above 10,000 reconstructed genes the decoder dominates a step: the cap is 128.
    assert effective_batch_size(None, 72_000, 1, 10_000) == 256
    assert effective_batch_size(None, 72_000, 1, 10_001) == 128
    assert effective_batch_size(None, 72_000, 4, 30_000) == 128
    assert effective_batch_size(None, 1_000, 1, 30_000) == 62  # small data: unchanged
    assert effective_batch_size(200, 72_000, 1, 30_000) == 200  # an explicit size wins


def test_batch_size_not_splitting_over_devices_is_refused():
    with pytest.raises(UsageError, match=r"--batch-size 30 does not split evenly over 4 devices"):
        check_batch_size(30, 4)
    with pytest.raises(UsageError, match="multiple of 4"):
        effective_batch_size(30, 1000, 4)
