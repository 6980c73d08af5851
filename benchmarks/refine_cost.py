"""What the swap refinement costs on a large input: its pieces, timed one by one.

The refinement (``refine``, on by default) works on a dense float64 copy of a sample of
the training rows (as many as half the host memory budget holds, see
``Dataset.max_train_rows``) times every gene. On a large input a whole search can take
long, so this script times its pieces instead of running it: building the centred
training copy, one exact residual with its swap scores (recomputed every 20 swaps),
one scoring round (one per swap), and a search stopped after ``--swaps`` swaps, each
with the process's peak RSS so far. The start panel is the ``k`` genes of highest
training variance (the cost does not depend on which genes start).

    python benchmarks/make_synthetic.py /tmp/syn100k.h5ad            # 100,000 × 30,000
    PYTHONPATH=$PWD python benchmarks/refine_cost.py /tmp/syn100k.h5ad --k 200
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--preprocess", default="log1p")
    ap.add_argument("--swaps", type=int, default=3, help="swaps of the stopped search")
    args = ap.parse_args()

    from scale_synthetic import cpu_s, peak_gib

    from genepanel import selectors
    from genepanel.api import load_input
    from genepanel.config import SelectConfig
    from genepanel.dataset import Dataset

    cfg = SelectConfig(k=args.k, preprocess=args.preprocess).replace(**{"input.stream": "yes"})
    data = load_input(args.data, cfg)
    rows: list[tuple[str, float, float]] = []

    def timed(name: str, fn):
        t, c = time.perf_counter(), cpu_s()
        out = fn()
        rows.append((name, time.perf_counter() - t, cpu_s() - c, peak_gib()))
        return out

    ds = timed("split, preprocessing fit", lambda: Dataset.build(data, cfg))
    xc = timed("centred training copy", ds.train_centred)
    panel = list(np.argsort(-xc.var(axis=0), kind="stable")[: args.k])
    exact = timed("exact residual and scores", lambda: selectors._residual(xc, panel))
    ok = np.ones(xc.shape[1], bool)
    tol = selectors.COLLINEAR_TOL * float(np.einsum("ij,ij->j", xc, xc).max())
    timed("one scoring round",
          lambda: selectors._swap_scores(xc, panel, *exact, ok, tol))
    exact = None  # free the residual before the search builds its own
    res = timed(f"search stopped after {args.swaps} swaps (exact start included)",
                lambda: selectors.swap_refine(xc, panel, max_swaps=args.swaps))
    print(f"{data.shape[0]} × {data.shape[1]}, k = {args.k}: refinement sample "
          f"{xc.shape[0]} training rows × {xc.shape[1]} genes ({xc.nbytes / 2**30:.2f} GiB "
          f"float64); {res.swaps} swaps made")
    print("| step | wall s | CPU s | peak RSS so far (GiB) |")
    print("|---|---:|---:|---:|")
    for name, wall, cpu, peak in rows:
        print(f"| {name} | {wall:.0f} | {cpu:.0f} | {peak:.2f} |")


if __name__ == "__main__":
    main()
